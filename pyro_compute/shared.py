"""SCOOP's ``shared`` module: constants set once by the client and read by tasks on any worker.

``setConst`` stores them in the default pool, which pushes them to each worker once, before that
worker's next chunk (a worker that joins later gets them with its first). Values travel as plain
data (numbers, strings, lists, dicts, numpy arrays), like task arguments.
"""
from __future__ import annotations

import time
from typing import Any

from . import futures, taskctx

__all__ = ["setConst", "getConst"]

POLL = 0.01


def setConst(**constants: Any) -> None:  # noqa: N802
    """Make each keyword a constant that tasks read with ``getConst(name)``.

    Raises:
        TypeError: a constant of that name was set before (constants are set once), or this is
            called inside a task (only the client sets constants).
    """
    if taskctx.in_task():
        raise TypeError("setConst is called inside a task; set constants in the client, before "
                        "the tasks that read them are submitted")
    pool = futures.default_pool()
    sched = pool._scheduler
    with sched.lock:
        again = sorted(set(constants) & set(sched.shared))
    if again:
        raise TypeError(f"the constant(s) {', '.join(again)} were set already; a constant is set "
                        "once: give the new value another name")
    sched.set_shared(constants)


def getConst(name: str, timeout: float = 0.1) -> Any:  # noqa: N802
    """The constant ``name`` set with ``setConst``, waiting up to ``timeout`` seconds for it.

    Returns None if it is not set by then (as SCOOP does); ``timeout=None`` waits as long as it takes.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        found, value = _lookup(name)
        if found:
            return value
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(POLL)


def _lookup(name: str) -> tuple[bool, Any]:
    run = taskctx.current_run()
    if run is not None:
        return taskctx.get_shared(run, name)
    sched = futures.default_pool()._scheduler
    with sched.lock:
        return (name in sched.shared), sched.shared.get(name)
