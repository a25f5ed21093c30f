"""``python -m pyro_compute.naming``: Pyro4's name server on the guarded transport; a secret is required.

``nameserver/run-ns`` runs this. It takes pyro4-ns's ``-n HOST -p PORT -x`` and reads the secret
from ``PYRO_HMAC_KEY`` as pyro4-ns does, so it can stand in for ``python -m Pyro4.naming``. Unlike
pyro4-ns it never starts a broadcast server, keeps strangers in one select loop
(``server.GuardedDaemon``'s limits), accepts serpent only, and refuses to start without a secret
unless ``--insecure`` is given on a loopback address.

It also prunes dead workers: every PRUNE_INTERVAL seconds it probes each
``pyro_compute.evaluator.*`` registration and removes one whose address refused (or did not
answer a connect, or no longer hosts the object) in PRUNE_STRIKES rounds in a row, and only
if the name still maps to that same URI. A stopped or busy worker still accepts connections,
so it is never pruned; a live worker that was pruned anyway registers itself again.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from typing import Any

import Pyro4

from . import lifeline
from .config import NAME_PREFIX, Settings, require_secret
from .diagnose import explain_bind, peer_alive
from .errors import ConfigError, register_errors
from .serializers import harden
from .server import GuardedNameServerDaemon

log = logging.getLogger("pyro_compute.naming")
PRUNE_INTERVAL = 3.0  # seconds between probes of every registered worker
PRUNE_STRIKES = 2     # rounds in a row a worker must be found dead before its name is removed


class Pruner:
    """Remove the names of workers that are gone (kill -9, a lost host), never a live one's."""

    def __init__(self, nameserver: Any, hmac_key: bytes | None, interval: float = PRUNE_INTERVAL) -> None:
        self.nameserver = nameserver
        self.hmac_key = hmac_key
        self.interval = interval
        self.strikes: dict[tuple[str, str], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ns-pruner", daemon=True)

    def _run(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="ns-probe") as probes:
            while not self.stop.wait(self.interval):
                self.prune_once(probes)

    def prune_once(self, probes: concurrent.futures.Executor) -> list[str]:
        """Probe every worker registration once; return the names removed this round."""
        entries = list(self.nameserver.list(prefix=NAME_PREFIX).items())
        alive = probes.map(lambda e: peer_alive(e[1], self.hmac_key, tries=1), entries)
        self.strikes = {e: self.strikes.get(e, 0) + 1 for e, ok in zip(entries, alive) if not ok}
        removed = [name for (name, uri), n in self.strikes.items()
                   if n >= PRUNE_STRIKES and self._remove_if(name, uri)]
        return removed

    def _remove_if(self, name: str, uri: str) -> bool:
        """Remove ``name`` only if it still maps to ``uri`` (a restarted worker may hold it now)."""
        with self.nameserver.lock:
            entry = self.nameserver.storage.get(name)
            if not entry or entry[0] != uri:
                return False
            del self.nameserver.storage[name]
        log.warning("removed %s: its worker at %s did not answer in %d probes %.0f s apart (gone)",
                    name, uri, PRUNE_STRIKES, self.interval)
        return True


def build_parser() -> argparse.ArgumentParser:
    """The name server's command line (pyro4-ns's options that pyro_compute uses)."""
    p = argparse.ArgumentParser(prog="python -m pyro_compute.naming",
                                description="Run Pyro4's name server for pyro_compute; the secret "
                                            "comes from PYRO_HMAC_KEY (nameserver/run-ns sets it).")
    p.add_argument("-n", "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=9090, help="port to bind (default 9090)")
    p.add_argument("-x", "--nobc", action="store_true", help="no broadcast server (always the case)")
    p.add_argument("--insecure", action="store_true",
                   help="serve without a secret (anyone who can connect may register names); loopback only")
    lifeline.add_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; return the exit status."""
    args = build_parser().parse_args(argv)
    key = os.environ.get("PYRO_HMAC_KEY", "")
    try:
        secret = require_secret(Settings(hmac_key=key), args.insecure, "the name server", args.host)
    except ConfigError as e:
        print(f"run-ns: error: {e}", file=sys.stderr)
        return 2
    Pyro4.config.SERIALIZERS_ACCEPTED = {"serpent"}
    Pyro4.config.SERIALIZER = "serpent"
    # No NumPy hooks (pyro_compute.wire): names and metadata are plain text, so arrays are refused.
    register_errors()
    harden()
    try:
        daemon = GuardedNameServerDaemon(args.host, args.port)
    except OSError as e:
        print(f"run-ns: error: {explain_bind(e, args.host, args.port, 'the name server')}", file=sys.stderr)
        return 2
    daemon._pyroHmacKey = secret
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pruner = Pruner(daemon.nameserver, secret)
    pruner.thread.start()
    stopping: list[bool] = []  # a plain flag: an Event set in nested signal handlers can deadlock

    def stop(*_: Any) -> None:
        stopping.append(True)
        server = daemon.transportServer  # None once closed
        if server is not None:
            server.wakeup()  # ends the loop now, not at its next 0.2 s tick; takes no lock
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    lifeline.watch(args.lifeline_fd, stop, "name server")
    print(f"NS running on {daemon.locationStr}", flush=True)
    print(f"URI = {daemon.uriFor(daemon.nameserver)}", flush=True)
    try:
        daemon.requestLoop(loopCondition=lambda: not stopping)
    finally:
        pruner.stop.set()
        pruner.thread.join(timeout=10)
        daemon.close()
    print("NS shut down.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
