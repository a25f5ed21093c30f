"""SCOOP's ``futures`` module API over a default pool: change one import and a SCOOP script runs here.

The default pool connects to ``PYRO_COMPUTE_NS`` (or the cluster the launcher
``python -m pyro_compute script.py`` started) on first use.
"""
from __future__ import annotations

import atexit
import threading
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from concurrent.futures import as_completed as _as_completed
from concurrent.futures import wait as _wait
from typing import Any, Callable, Iterable, Iterator

from .pool import Pool

__all__ = ["map", "map_as_completed", "mapReduce", "submit", "as_completed", "wait", "shutdown",
           "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]

_lock = threading.Lock()
_pool: Pool | None = None


def default_pool() -> Pool:
    """The pool this module's functions use, created from the environment on first call.

    Raises:
        WorkerUnavailableError: no name server answers at ``PYRO_COMPUTE_NS``.
    """
    global _pool
    with _lock:
        if _pool is None:
            _pool = Pool()
            atexit.register(_pool.shutdown, wait=False)
        return _pool


def set_default_pool(pool: Pool | None) -> None:
    """Make ``pool`` the one this module's functions use (None: create one on next use)."""
    global _pool
    with _lock:
        _pool = pool


def map(func: Callable[..., Any] | str, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[Any]:  # noqa: A001
    """Apply ``func`` to the zipped iterables on the workers; results in input order (lazy)."""
    return default_pool().map(func, *iterables, **kwargs)


def map_as_completed(func: Callable[..., Any] | str, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """Like ``map``, yielding each result as soon as it is ready."""
    return default_pool().map_as_completed(func, *iterables, **kwargs)


def mapReduce(mapFunc: Callable[..., Any] | str, reductionOp: Callable[[Any, Any], Any],  # noqa: N802,N803
              *iterables: Iterable[Any], **kwargs: Any) -> Any:
    """Map on the workers and fold the results with ``reductionOp`` as they arrive."""
    return default_pool().map_reduce(mapFunc, reductionOp, *iterables, **kwargs)


def submit(func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Future[Any]:
    """Schedule ``func(*args, **kwargs)`` on a worker and return its Future."""
    return default_pool().submit(func, *args, **kwargs)


def as_completed(fs: Iterable[Future[Any]], timeout: float | None = None) -> Iterator[Future[Any]]:
    """Yield the futures as they complete (``concurrent.futures.as_completed``)."""
    return _as_completed(fs, timeout)


def wait(fs: Iterable[Future[Any]], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> Any:
    """Wait for the futures (``concurrent.futures.wait``); returns ``(done, not_done)``."""
    return _wait(fs, timeout, return_when)


def shutdown(wait: bool = True) -> None:  # noqa: A002
    """Shut the default pool down; the next call creates a new one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait)
