"""SCOOP's ``futures`` module API over a default pool: change one import and a SCOOP script runs here.

The default pool connects to ``PYRO_COMPUTE_NS`` (or the cluster the launcher
``python -m pyro_compute script.py`` started) on first use.
"""
from __future__ import annotations

import atexit
import functools
import itertools
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from concurrent.futures import as_completed as _as_completed
from concurrent.futures import wait as _wait
from typing import Any, Callable, Iterable, Iterator

from . import taskctx
from .pool import Pool

__all__ = ["map", "map_as_completed", "mapReduce", "mapScan", "submit", "size", "worker", "as_completed", "wait", "shutdown",
           "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]

_lock = threading.Lock()
_pool: Pool | None = None
_task_pools: dict[str, Pool] = {}  # inside a worker: per client run, the pool its tasks share


def default_pool() -> Pool:
    """The pool this module's functions use, created from the environment on first call.

    Raises:
        WorkerUnavailableError: no name server answers at ``PYRO_COMPUTE_NS``.
    """
    global _pool
    with _lock:
        if taskctx.host is not None and taskctx.in_task():
            return _pool_in_task(taskctx.host, taskctx.current_run() or "")
        if _pool is None:
            _pool = Pool(show_output=True)
            atexit.register(_pool.shutdown, wait=False)
        return _pool


def _pool_in_task(host: taskctx.Host, run: str) -> Pool:
    """The pool tasks of client run ``run`` share here, on the cluster this worker serves."""
    pool = _task_pools.get(run)
    if pool is None:
        pool = _task_pools[run] = Pool(settings=host.settings(), by_value=host.by_value)
        sched = pool._scheduler
        sched.pipeline = False  # a call may wait on its children for long: queue nothing behind it
        sched.run_id = run  # nested tasks read the client's constants
        with taskctx._shared_lock:
            sched.shared = host.shared.setdefault(run, {})
        sched.shared_version = 1
        atexit.register(pool.shutdown, wait=False)
        taskctx.add_scheduler(sched)
    if taskctx.relay_nested_output(run):  # the client shows what tasks print: nested ones' too
        pool._scheduler.show_output = True
    return pool


def set_default_pool(pool: Pool | None) -> None:
    """Make ``pool`` the one this module's functions use (None: create one on next use)."""
    global _pool
    with _lock:
        _pool = pool


MAP_OPTIONS = ("timeout", "chunksize", "seed", "progress")


def _seeded(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Inside a seeded task, derive a seed for a nested call that names none."""
    if kwargs.get("seed") is None:
        seed = taskctx.next_seed()
        if seed is not None:
            kwargs["seed"] = seed
    return kwargs


def _bound(func: Callable[..., Any] | str, kwargs: dict[str, Any], what: str) -> Callable[..., Any] | str:
    """``func`` with the keyword arguments that are no map options bound, as SCOOP passes them to every call.

    Raises:
        TypeError: such keywords are given with a kernel name, which takes none.
    """
    extra = {name: kwargs.pop(name) for name in list(kwargs) if name not in MAP_OPTIONS}
    if not extra:
        return func
    if isinstance(func, str):
        raise TypeError(f"futures.{what} got keyword argument(s) {', '.join(sorted(extra))}, which are "
                        f"not its options ({', '.join(MAP_OPTIONS)}); they would go to every call of "
                        f"{func!r}, but a kernel named by a string takes no extra keywords")
    return functools.partial(func, **extra)


def map(func: Callable[..., Any] | str, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[Any]:  # noqa: A001
    """Apply ``func`` to the zipped iterables on the workers; results in input order (lazy).

    Keyword arguments other than ``timeout``, ``chunksize``, ``seed`` and ``progress`` go to
    every call of ``func``, as in SCOOP.
    """
    func = _bound(func, kwargs, "map")
    return default_pool().map(func, *iterables, **_seeded(kwargs))


def map_as_completed(func: Callable[..., Any] | str, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """Like ``map``, yielding each result as soon as it is ready (inside a task too: waiting
    lends the task's worker to other tasks)."""
    func = _bound(func, kwargs, "map_as_completed")
    return default_pool().map_as_completed(func, *iterables, **_seeded(kwargs))


def mapReduce(mapFunc: Callable[..., Any] | str, reductionOp: Callable[[Any, Any], Any],  # noqa: N802,N803
              *iterables: Iterable[Any], **kwargs: Any) -> Any:
    """Map on the workers and fold the results with ``reductionOp`` as they arrive.

    Raises:
        TypeError: the input was empty.
    """
    mapFunc = _bound(mapFunc, kwargs, "mapReduce")
    return default_pool().map_reduce(mapFunc, reductionOp, *iterables, **_seeded(kwargs))


def mapScan(mapFunc: Callable[..., Any] | str, reductionOp: Callable[[Any, Any], Any],  # noqa: N802,N803
            *iterables: Iterable[Any], **kwargs: Any) -> list[Any]:
    """Map on the workers, then the running reduction in input order: ``[r0, op(r0, r1), ...]``.

    Unlike SCOOP's, the prefixes follow the input order, so a non-commutative ``reductionOp``
    gives the same list as ``itertools.accumulate(map(mapFunc, *iterables), reductionOp)``.
    """
    mapFunc = _bound(mapFunc, kwargs, "mapScan")
    results = default_pool().map(mapFunc, *iterables, **_seeded(kwargs))
    return list(itertools.accumulate(results, reductionOp))


def size() -> int:
    """How many workers take work now (SCOOP's ``scoop.SIZE``)."""
    return len(default_pool().workers)


def worker() -> str:
    """This process's worker name inside a task (SCOOP's ``scoop.worker``); "origin" in the client."""
    host = taskctx.host
    return host.name if host is not None and taskctx.in_task() else "origin"


def __getattr__(name: str) -> Any:
    """``futures.SIZE`` and ``futures.IS_ORIGIN``, computed when read, as SCOOP's module constants."""
    if name == "SIZE":
        return size()
    if name == "IS_ORIGIN":
        return not taskctx.in_task()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def submit(func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Future[Any]:
    """Schedule ``func(*args, **kwargs)`` on a worker and return its Future.

    Inside a task that got a seed, ``func`` gets keyword ``seed`` derived from it.
    """
    return default_pool().submit(func, *args, **_seeded(kwargs))


def as_completed(fs: Iterable[Future[Any]], timeout: float | None = None) -> Iterator[Future[Any]]:
    """Yield the futures as they complete (``concurrent.futures.as_completed``)."""
    if not taskctx.in_task():
        return _as_completed(fs, timeout)
    return _as_completed_in_task(set(fs), timeout)


def _as_completed_in_task(fs: set[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while fs:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"{len(fs)} of the futures did not complete within {timeout} s")
        taskctx.wait(fs, remaining, FIRST_COMPLETED)
        for f in [f for f in fs if f.done()]:
            fs.discard(f)
            yield f


def wait(fs: Iterable[Future[Any]], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> Any:
    """Wait for the futures (``concurrent.futures.wait``); returns ``(done, not_done)``.

    As in SCOOP, a negative ``timeout`` (SCOOP's default -1) means wait as long as it takes.
    """
    fs = list(fs)
    if timeout is not None and timeout < 0:
        timeout = None
    if taskctx.in_task():
        taskctx.wait(fs, timeout, return_when)
    return _wait(fs, 0 if taskctx.in_task() else timeout, return_when)


def shutdown(wait: bool = True) -> None:  # noqa: A002
    """Shut the default pool down; the next call creates a new one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait)
