"""SCOOP's ``shared`` module: constants set once and read by tasks on any worker.

``setConst`` stores them in the default pool, which pushes them to each worker once, before that
worker's next chunk (a worker that joins later gets them with its first). Inside a task, that pool
is the one the worker's tasks share: the constant is seen at once by tasks on that worker, and by
the other workers from the next task sent there from it; the client does not see it. Values travel like task
arguments and functions: plain data (numbers, strings, lists, dicts, numpy arrays) as it is, a
function by reference (by value in by-value pools, where a worker needs it), and other objects
(of classes defined in the script) by value, to workers that accept it.
"""
from __future__ import annotations

import time
from typing import Any

from . import futures, taskctx
from .pool import Pool
from .wire import foreign

__all__ = ["setConst", "getConst"]

POLL = 0.01


def setConst(**constants: Any) -> None:  # noqa: N802
    """Make each keyword a constant that tasks read with ``getConst(name)``.

    Raises:
        TypeError: a constant of that name was set before (constants are set once).
    """
    pool = futures.default_pool()
    sched = pool._scheduler
    with sched.lock:
        again = sorted(set(constants) & set(sched.shared))
    if again:
        raise TypeError(f"the constant(s) {', '.join(again)} were set already; a constant is set "
                        "once: give the new value another name")
    wire = {name: _wire_form(pool, name, value) for name, value in constants.items()}
    if not taskctx.in_task():  # in a task the pool's constants are the worker's own table
        with sched.lock:
            _originals.setdefault(sched.run_id, {}).update(constants)
    sched.set_shared(wire)


_originals: dict[str, dict[str, Any]] = {}  # per pool run: the constants as the client set them


def _wire_form(pool: Pool, name: str, value: Any) -> Any:
    """How constant ``name`` travels: plain data as it is, a function as a task does, else by value.

    Raises:
        TypeError: the value is no plain data and this pool does not send objects by value.
    """
    if not foreign(value):
        return value
    if callable(value) and not isinstance(value, type):
        ref, code = pool._task_of(value)  # as a task's function goes; TypeError if it cannot
        return {taskctx.FUNCTION: ref, "code": code}
    if not pool.by_value:
        raise TypeError(f"the constant {name} is a {type(value).__module__}.{type(value).__qualname__}, "
                        "which is no plain data (numbers, strings, lists, tuples, dicts, sets, numpy "
                        "arrays); make it plain data, or send it by value: 'python -m pyro_compute "
                        "script.py' does on its own cluster; on a shared cluster use "
                        "Pool(by_value=True) and workers started with --allow-by-value")
    import cloudpickle  # only by-value pools need it
    return {taskctx.OBJECT: cloudpickle.dumps(value), "code": None}


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
        table = _originals.get(sched.run_id, {})
        return (name in table), table.get(name)
