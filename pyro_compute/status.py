"""What every registered worker is and has done, read from the name server and each worker."""
from __future__ import annotations

import concurrent.futures
from typing import Any

import Pyro4
import Pyro4.errors

from .config import NAME_PREFIX, Settings
from .errors import WorkerUnavailableError
from .wire import register_wire

PROBE_TIMEOUT = 3.0


def cluster_status(settings: Settings) -> list[dict[str, Any]]:
    """One row per registered worker: its ``info()`` and ``stats()`` plus derived rates.

    Unreachable registrations get ``{"name", "uri", "reachable": False, "error"}``.

    Raises:
        WorkerUnavailableError: the name server cannot be reached.
    """
    register_wire()
    host, port = settings.ns_address
    try:
        with Pyro4.locateNS(host, port, hmac_key=settings.hmac_bytes) as ns:
            names = dict(ns.list(prefix=NAME_PREFIX))
    except Pyro4.errors.PyroError as e:
        raise WorkerUnavailableError(f"cannot reach the name server at {settings.ns}: {e}") from e
    if not names:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(32, len(names))) as probes:
        rows = probes.map(lambda item: _probe(settings, *item), sorted(names.items()))
        return list(rows)


def _probe(settings: Settings, name: str, uri: str) -> dict[str, Any]:
    try:
        with Pyro4.Proxy(uri) as proxy:
            proxy._pyroHmacKey = settings.hmac_bytes
            proxy._pyroTimeout = PROBE_TIMEOUT
            info, stats = proxy.info(), proxy.stats()
    except Pyro4.errors.PyroError as e:
        return {"name": name, "uri": uri, "reachable": False, "error": str(e) or type(e).__name__}
    busy, uptime = stats["busy_seconds"], stats["uptime"]
    return {**info, **stats, "name": name, "uri": uri, "reachable": True,
            "samples_per_second": stats["samples"] / busy if busy > 0 else 0.0,
            "busy_percent": 100.0 * busy / uptime if uptime > 0 else 0.0}
