"""``python -m pyro_compute.naming``: Pyro4's name server on the guarded transport; a secret is required.

``nameserver/run-ns`` runs this. It takes pyro4-ns's ``-n HOST -p PORT -x`` and reads the secret
from ``PYRO_HMAC_KEY`` as pyro4-ns does, so it can stand in for ``python -m Pyro4.naming``. Unlike
pyro4-ns it never starts a broadcast server, keeps strangers in one select loop
(``server.GuardedDaemon``'s limits), accepts serpent only, and refuses to start without a secret
unless ``--insecure`` is given on a loopback address.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import Pyro4

from .config import Settings, require_secret
from .errors import ConfigError
from .server import GuardedNameServerDaemon
from .wire import register_wire


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
    register_wire()
    try:
        daemon = GuardedNameServerDaemon(args.host, args.port)
    except OSError as e:
        print(f"run-ns: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    daemon._pyroHmacKey = secret
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"NS running on {daemon.locationStr}", flush=True)
    print(f"URI = {daemon.uriFor(daemon.nameserver)}", flush=True)
    try:
        daemon.requestLoop(loopCondition=lambda: not stop.is_set())
    finally:
        daemon.close()
    print("NS shut down.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
