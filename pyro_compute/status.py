"""What every registered worker is and has done, read from the name server and each worker."""
from __future__ import annotations

import concurrent.futures
from typing import Any

import Pyro4
import Pyro4.errors

from .config import NAME_PREFIX, Settings
from .diagnose import connect_ns, explain
from .errors import WorkerUnavailableError
from .wire import register_wire

PROBE_TIMEOUT = 3.0  # seconds one worker may take to answer


def registered_workers(settings: Settings) -> dict[str, str]:
    """Names and URIs of the workers registered in the name server.

    Raises:
        WorkerUnavailableError: the name server cannot be reached (the message says why).
    """
    register_wire()
    with connect_ns(settings) as ns:
        try:
            return dict(ns.list(prefix=NAME_PREFIX))
        except Pyro4.errors.PyroError as e:
            raise WorkerUnavailableError(explain(e, settings.ns, "the name server")) from e


def cluster_status(settings: Settings) -> list[dict[str, Any]]:
    """One row per registered worker: its ``info()`` and ``stats()`` plus derived rates.

    ``busy_percent`` is the lifetime share, ``recent_busy_percent`` the share of the last
    ``recent_window`` seconds (10). Unreachable registrations get ``{"name", "uri",
    "reachable": False, "error"}`` with the error explained in one sentence.

    Raises:
        WorkerUnavailableError: the name server cannot be reached.
    """
    names = registered_workers(settings)
    if not names:
        return []
    # Named pool-*: a Pool's own dashboard polls from the pool's process (the leak check looks for them).
    with concurrent.futures.ThreadPoolExecutor(min(32, len(names)),
                                               thread_name_prefix="pool-status-probe") as probes:
        rows = probes.map(lambda item: _probe(settings, *item), sorted(names.items()))
        return list(rows)


def _probe(settings: Settings, name: str, uri: str) -> dict[str, Any]:
    try:
        with Pyro4.Proxy(uri) as proxy:
            proxy._pyroHmacKey = settings.hmac_bytes
            proxy._pyroTimeout = PROBE_TIMEOUT
            info, stats = proxy.info(), proxy.stats()
    except Pyro4.errors.PyroError as e:
        where = uri.partition("@")[2] or uri
        return {"name": name, "uri": uri, "reachable": False,
                "error": explain(e, where, f"worker {name.removeprefix(NAME_PREFIX)}")}
    busy, uptime = stats["busy_seconds"], stats["uptime"]
    window = stats.get("recent_window", 0.0)
    recent = 100.0 * stats.get("recent_busy", 0.0) / window if window > 0 else 0.0
    return {**info, **stats, "name": name, "uri": uri, "reachable": True,
            "samples_per_second": stats["samples"] / busy if busy > 0 else 0.0,
            "busy_percent": 100.0 * busy / uptime if uptime > 0 else 0.0,
            "recent_busy_percent": min(100.0, recent), "in_flight": stats.get("in_flight", 0)}
