"""A chunk: consecutive tasks that travel in one RMI call, and how its outcome is unpacked."""
from __future__ import annotations

import builtins
import concurrent.futures
import itertools
import sys
import time
from concurrent.futures import _base
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import taskctx
from .errors import RemoteError, RemoteTraceback


_FINISHED = _base.FINISHED
_DONE = frozenset({_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED})


class TaskFuture(concurrent.futures.Future[Any]):
    """A Future whose waits, inside a task on a worker, lend that worker to other tasks.

    Outside tasks, a submitted task still queued when its result is asked for may be sent by
    the waiting thread itself (``runner``, see ``inline``): no thread hand-off either way.
    ``callback`` lists the callables given to ``add_done_callback``, as SCOOP's ``Future.callback``.
    """

    runner: Callable[[TaskFuture, float | None], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.callback: list[Callable[[concurrent.futures.Future[Any]], object]] = []

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """Call ``fn(self)`` once done (now, if done already) and list it in ``callback``."""
        self.callback.append(fn)
        super().add_done_callback(fn)

    def result(self, timeout: float | None = None) -> Any:
        """The result (``concurrent.futures.Future.result``); see the class docstring."""
        if self._state not in _DONE:  # read without the lock: a future once done stays done
            timeout = self._help(timeout)
        if self._state is _FINISHED and self._exception is None:
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception (``concurrent.futures.Future.exception``); see the class docstring."""
        if self._state not in _DONE:
            timeout = self._help(timeout)
        return super().exception(timeout)

    def _help(self, timeout: float | None) -> float | None:
        """Lend a worker's slot while waiting in a task, or send the call here; the time left."""
        if taskctx.in_task():
            taskctx.wait([self], timeout)
            return timeout
        runner = self.runner
        if runner is None or timeout is None:
            if runner is not None:
                runner(self, None)
            return timeout
        started = time.monotonic()
        runner(self, timeout)
        return max(0.0, timeout - (time.monotonic() - started))


class Chunk:
    """Consecutive tasks that travel in one RMI call; ``future`` resolves once for all of them."""

    __slots__ = ("task", "code", "args", "kwargs", "seeds", "future", "single", "flat", "tried", "hangups",
                 "duplicated", "__weakref__")

    def __init__(self, task: tuple[str, bytes | None], args: list[Any],
                 kwargs: dict[str, Any] | None, seeds: list[int] | None, single: bool, flat: bool = False) -> None:
        (self.task, self.code), self.args, self.kwargs, self.seeds = task, args, kwargs, seeds
        self.flat = flat  # ``args`` holds each task's only argument (a map over one iterable), not tuples
        self.future: concurrent.futures.Future[Any] = TaskFuture()
        self.single = single
        self.tried: list[str] = []  # workers lost while running it
        self.hangups = 0  # times a worker that still answers closed the connection on it
        self.duplicated = False  # a copy was queued for another worker (the first result wins)

    def rows(self) -> list[tuple[Any, ...]]:
        """The tasks' argument tuples (built for a ``flat`` chunk)."""
        return list(zip(self.args)) if self.flat else self.args

    def resolve(self, results: list[Any], errors: list[list[Any]]) -> None:
        """Fill the future: a single task's value or exception, else ``(results, errors)``.

        A chunk may run on two workers (requeued from a hung one); the first outcome wins and
        a late duplicate is dropped.
        """
        if self.single and not errors:
            self._settle(self.future.set_result, results[0])  # a settled future refuses it
        elif self.future.done():
            return
        elif not self.single:
            self._settle(self.future.set_result, (results, errors))
        else:
            self._settle(self.future.set_exception, rebuild_error(errors[0]))

    def fail(self, exc: BaseException) -> None:
        """Fail the chunk's future unless another copy of the chunk settled it first."""
        if not self.future.done():
            self._settle(self.future.set_exception, exc)

    def _settle(self, setter: Any, value: Any) -> None:
        try:
            setter(value)
        except concurrent.futures.InvalidStateError:
            pass  # another copy of this chunk won the race by a hair: first result wins


def rebuild_error(entry: Sequence[Any]) -> BaseException:
    """Recreate a task's remote exception from ``[index, module, type, args, traceback]``.

    The type is looked up among builtins and modules already imported here, never imported;
    anything else becomes a RemoteError. ``__cause__`` carries the remote traceback.
    """
    _, module, qualname, args, tb = entry
    cls: Any = builtins if module == "builtins" else sys.modules.get(module)
    for part in str(qualname).split("."):
        cls = getattr(cls, part, None)
    exc: BaseException
    try:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError
        exc = cls(*args)
    except Exception:  # any constructor that cannot take its own args back
        exc = RemoteError(f"{module}.{qualname}: {', '.join(map(str, args))}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def with_remote_cause(exc: BaseException) -> BaseException:
    tb = getattr(exc, "_pyroTraceback", None)
    if tb:
        exc.__cause__ = RemoteTraceback("".join(tb))
    return exc


def items(results: list[Any], errors: list[list[Any]]) -> Iterator[Any]:
    """Yield a chunk's results in order, raising the first task error where it stands.

    Each result leaves the list as it is yielded, so that the caller holds the only reference
    to it (as with ``Executor.map``). Without errors, an iterator running at C speed.
    """
    results.reverse()
    if not errors:
        return map(results.pop, itertools.repeat(-1, len(results)))
    return _with_errors(results, errors)


def _with_errors(results: list[Any], errors: list[list[Any]]) -> Iterator[Any]:
    """``items`` of a chunk with failed tasks (``results`` reversed)."""
    failed = {e[0]: e for e in errors}
    for i in range(len(results)):
        if i in failed:
            raise rebuild_error(failed[i])
        yield results.pop()


def child_seeds(seed: int, key: tuple[int, ...], start: int, count: int) -> list[int]:
    """Seeds of tasks ``start .. start+count-1``: child ``i`` of ``SeedSequence(seed)``."""
    return [int(np.random.SeedSequence(seed, spawn_key=(*key, i)).generate_state(1, np.uint64)[0])
            for i in range(start, start + count)]
