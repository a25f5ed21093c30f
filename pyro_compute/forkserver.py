"""``python -m pyro_compute.forkserver``: LocalCluster's workers, forked from one warmed process.

::

    LocalCluster ── python -m pyro_compute.forkserver -n N --status-fd FD   (one process)
                      imports NumPy, Numba, Pyro4 and loads the kernels once, then
                      ├── fork → worker local.PID.0   (shares that memory copy-on-write)
                      └── fork → worker local.PID.1   ...
                      FD ← "fork NAME PID" / "exit PID CODE" as the workers come and go

The status lines let LocalCluster hand out one ``Popen``-like handle per worker (``ForkedWorker``
in cluster.py). A worker that dies stays dead, as a separately started one would: tests kill
workers on purpose and count on them staying gone.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .config import Settings, require_secret
from .errors import ComputeError
from .supervisor import serve_many, worker_count
from .worker import configure_pyro


class StatusPipe:
    """The write end of LocalCluster's status pipe; closed in every forked worker."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.register_at_fork(after_in_child=self.close)

    def write(self, line: str) -> None:
        """Send one status line; a cluster that stopped reading is no reason to fail."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):  # the LocalCluster has gone: nobody to tell
                os.write(self.fd, line.encode() + b"\n")

    def close(self) -> None:
        """Close the pipe (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def build_parser() -> argparse.ArgumentParser:
    """The fork server's command line (LocalCluster builds it; not meant for people)."""
    p = argparse.ArgumentParser(prog="python -m pyro_compute.forkserver",
                                description="Fork LocalCluster's workers from one warmed process.")
    p.add_argument("--ns", required=True, help="name server HOST:PORT")
    p.add_argument("--name", required=True, help="base name; worker i registers as NAME.i")
    p.add_argument("-n", "--workers", type=worker_count, default=1, metavar="N", help="how many workers")
    p.add_argument("--script", help="a script whose functions callers may run (as __main__)")
    p.add_argument("--allow-by-value", action="store_true", help="accept functions sent by value")
    p.add_argument("--status-fd", type=int, default=-1, help="pipe for 'fork NAME PID' / 'exit PID CODE'")
    return p


def main(argv: list[str] | None = None) -> int:
    """Warm up, fork the workers and serve until SIGTERM; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    status = StatusPipe(args.status_fd)
    try:
        settings = Settings.from_env(ns=args.ns)
        require_secret(settings, False, "LocalCluster's workers", settings.host)
        configure_pyro(settings)
        return serve_many(settings, args.workers, name=args.name, script=args.script,
                          by_value=args.allow_by_value, restart=False, report=status.write)
    except ComputeError as e:
        print(f"pyro_compute.forkserver: error: {e}", file=sys.stderr)
        return 2
    finally:
        status.close()


if __name__ == "__main__":
    sys.exit(main())
