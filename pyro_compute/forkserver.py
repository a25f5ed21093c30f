"""LocalCluster's workers, forked from one warmed process (``compute-worker -n N --status-fd FD``).

::

    LocalCluster ── python .../bootstrap.py pyro_compute.worker -n N --status-fd FD [--lazy-kernels]   (one process)
                      imports NumPy and Pyro4 (and Numba with the kernels, unless lazy) once, then
                      ├── fork → worker local.PID.0   (shares that memory copy-on-write)
                      └── fork → worker local.PID.1   ...
                      FD ← "fork NAME PID" / "exit PID CODE" as the workers come and go

The status lines let LocalCluster hand out one ``Popen``-like handle per worker (``ForkedWorker``
in cluster.py). A worker that dies stays dead, as a separately started one would: tests kill
workers on purpose and count on them staying gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

from .config import Settings
from .supervisor import serve_many


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


def serve_for_cluster(settings: Settings, count: int, name: str | None, script: str | None,
                      by_value: bool, status_fd: int, warm: bool = True, lifeline: int = -1) -> NoReturn:
    """Warm up, fork ``count`` workers that are not restarted, report them on ``status_fd``; serve until SIGTERM.

    Exits the process: once its workers have stopped, the fork server has nothing left to clean up,
    and tearing down an interpreter holding Numba and LLVM takes 0.15-0.4 s of every cluster's close.
    """
    status = StatusPipe(status_fd)
    code = 1
    try:
        code = serve_many(settings, count, name=name, script=script, by_value=by_value,
                          restart=False, report=status.write, warm=warm, lifeline=lifeline)
    finally:
        status.close()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed log: nothing more to say
                stream.flush()
        os._exit(code)
