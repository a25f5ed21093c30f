"""The lifeline: a LocalCluster's children stop once the process that started them is gone.

The cluster makes a pipe and keeps its only write end; each child gets the read end
(``--lifeline-fd``). Nothing is ever written, so the read end turns readable only at end of
file: when the owner has exited, however it died (SIGKILL, a test's timeout), and with it
every write end. ``PR_SET_PDEATHSIG`` is no substitute: it fires when the *thread* that
started the child exits, and a pool may start a cluster from any thread.
"""
from __future__ import annotations

import argparse
import logging
import select
import threading
from typing import Callable

log = logging.getLogger(__name__)


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--lifeline-fd``, hidden: only LocalCluster passes it."""
    parser.add_argument("--lifeline-fd", type=int, default=-1, help=argparse.SUPPRESS)


def gone(fd: int, wait: float | None) -> bool:
    """Whether the owner is gone, waiting up to ``wait`` seconds (None: until it is)."""
    poller = select.poll()  # not select.select: the descriptor may exceed FD_SETSIZE
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if wait is None else wait * 1000))


def watch(fd: int, stop: Callable[[], None], what: str) -> None:
    """Call ``stop()`` from a daemon thread once the owner is gone (nothing if ``fd`` < 0)."""
    if fd < 0:
        return

    def wait() -> None:
        gone(fd, None)
        log.warning("the process that started this %s exited; stopping", what)
        stop()

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
