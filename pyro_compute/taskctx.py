"""What a task running on a worker knows about where it runs: its cluster, its seed, its worker.

A worker's Evaluator installs a ``Host`` here; ``futures`` then reaches the cluster the worker
serves without configuration. A task that waits on futures it started (``TaskFuture.result``,
``futures.wait``, ``as_completed``) runs queued tasks of this process's pools meanwhile, and
otherwise releases its worker's run lock, so no depth of nesting deadlocks a fixed set of workers.
No numba, no Pyro4: clients import this module too.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

MAX_OUTPUT = 1 << 20  # characters of output one batch sends back; the rest is dropped
MAX_RELAYED_RUNS = 64  # runs whose nested tasks' output a worker keeps until a reply carries it
POLL = 0.02  # seconds a waiting task sleeps with its worker released before looking for work again


@dataclasses.dataclass
class Host:
    """The worker process a task runs in: its name, settings, run lock and how to run a chunk."""

    name: str
    settings: Callable[[], Any]  # -> Settings of the cluster this worker serves
    run_lock: threading.Lock
    run_inline: Callable[[Any, str], None]  # runs a Chunk of a run here and resolves it
    by_value: bool
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)
    # (task reference, by-value code or None) -> the callable, as the worker resolves a task's function
    resolve: Callable[[str, Any], Callable[..., Any]] | None = None


@dataclasses.dataclass
class Frame:
    """One running task: its seed (None: unseeded), its pool's run id, nested calls made so far."""

    seed: int | None
    run: str = ""
    calls: int = 0


host: Host | None = None
_local = threading.local()
_shared_lock = threading.Lock()
_streams_installed = False
_schedulers: list[Any] = []  # Schedulers of this process's pools whose queued chunks tasks may run
_relay_lock = threading.Lock()
_relayed: dict[str, list[list[str]]] = {}  # per run: output of its nested tasks that ran on other workers


def install(new: Host) -> None:
    """Make ``new`` the host of tasks in this process (called by the worker's Evaluator)."""
    global host
    host = new


def frames() -> list[Frame]:
    """This thread's running tasks, innermost last."""
    stack: list[Frame] | None = getattr(_local, "frames", None)
    if stack is None:
        stack = _local.frames = []
    return stack


def in_task() -> bool:
    """True in a thread that runs a task on a worker."""
    return host is not None and bool(frames())


def next_seed() -> int | None:
    """A seed for the next nested call of the running task, derived from its own seed."""
    stack = frames()
    if not stack or stack[-1].seed is None:
        return None
    frame = stack[-1]
    frame.calls += 1
    seq = np.random.SeedSequence(frame.seed, spawn_key=(frame.calls,))
    return int(seq.generate_state(1, np.uint64)[0])


def current_run() -> str | None:
    """The run id of the task this thread runs, or None outside tasks."""
    stack = frames()
    return stack[-1].run if stack and host is not None else None


def set_shared(run: str, constants: dict[str, Any]) -> None:
    """Keep constants of pool ``run`` for its tasks in this process."""
    if host is None:
        raise RuntimeError("shared constants are kept only in a worker process")
    with _shared_lock:
        host.shared.setdefault(run, {}).update(constants)


FUNCTION = "__pyro_compute_function__"  # a constant that is a function: {FUNCTION: reference, "code": bytes|None}
OBJECT = "__pyro_compute_object__"  # a constant the wire cannot carry, by value: {OBJECT: cloudpickled bytes}


def get_shared(run: str, name: str) -> tuple[bool, Any]:
    """``(True, value)`` of constant ``name`` of pool ``run`` here, else ``(False, None)``.

    A function or a by-value object among the constants is rebuilt here on first read.

    Raises:
        KernelError: the constant names a function this worker may not call, or is an object
            sent by value to a worker without --allow-by-value.
    """
    if host is None:
        return False, None
    with _shared_lock:
        table = host.shared.get(run, {})
        found, value = (name in table), table.get(name)
    if not (isinstance(value, dict) and (FUNCTION in value or OBJECT in value)):
        return found, value
    key = (run, name)
    with _shared_lock:
        if key in _rebuilt:
            return True, _rebuilt[key]
    rebuilt = _rebuild(value)  # outside the lock: loading the script may read constants
    with _shared_lock:
        return True, _rebuilt.setdefault(key, rebuilt)


_rebuilt: dict[tuple[str, str], Any] = {}  # constants rebuilt from their wire form, per (run, name)


def _rebuild(value: dict[str, Any]) -> Any:
    """A constant's function or object from its wire form (see FUNCTION and OBJECT)."""
    assert host is not None
    code = value.get("code")
    if FUNCTION in value:
        assert host.resolve is not None, "the Evaluator installs its resolver with the host"
        return host.resolve(str(value[FUNCTION]), code)
    if not host.by_value:
        from .errors import KernelError
        raise KernelError("a shared constant was sent by value, but this worker does not accept "
                          "objects by value; start it with --allow-by-value and an HMAC secret, or "
                          "make the constant plain data")
    import cloudpickle  # only workers that opted in need it

    from .wire import sent_bytes
    return cloudpickle.loads(sent_bytes(value[OBJECT], "a by-value constant"))


def add_scheduler(scheduler: Any) -> None:
    """Let waiting tasks run queued chunks of ``scheduler`` (a pool made inside a worker)."""
    _schedulers.append(scheduler)


def wait(fs: Iterable[concurrent.futures.Future[Any]], timeout: float | None = None,
         return_when: str = concurrent.futures.ALL_COMPLETED) -> None:
    """Block like ``concurrent.futures.wait``; inside a task, lend the worker to other tasks."""
    fs = set(fs)
    if not in_task():
        concurrent.futures.wait(fs, timeout, return_when)
        return
    assert host is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    while not _satisfied(fs, return_when):
        if deadline is not None and time.monotonic() >= deadline:
            return
        stolen = _steal(fs)
        if stolen is not None:
            host.run_inline(*stolen)  # the run lock is ours: run it as part of this task
            continue
        slice_ = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
        host.run_lock.release()  # other calls to this worker run while this task waits
        try:
            concurrent.futures.wait([f for f in fs if not f.done()], slice_,
                                    concurrent.futures.FIRST_COMPLETED)
        finally:
            host.run_lock.acquire()


def _satisfied(fs: set[concurrent.futures.Future[Any]], return_when: str) -> bool:
    done = [f for f in fs if f.done()]
    if return_when == concurrent.futures.FIRST_COMPLETED:
        return bool(done) or not fs
    if return_when == concurrent.futures.FIRST_EXCEPTION:
        if any(not f.cancelled() and f.exception() is not None for f in done):
            return True
    return len(done) == len(fs)


def _steal(fs: set[concurrent.futures.Future[Any]]) -> Any:
    """A queued chunk whose future is awaited, taken before any dispatcher sends it, or None.

    Only awaited chunks: running one inline nests at most as deep as the tasks' own nesting.
    """
    for scheduler in list(_schedulers):
        with scheduler.lock:
            for chunk in scheduler.pending:
                if chunk.future in fs and not chunk.future.done():
                    scheduler.pending.remove(chunk)
                    if chunk.future.running() or chunk.future.set_running_or_notify_cancel():
                        return chunk, scheduler.run_id
                    break
    return None


class _Stream(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: text written by a task thread goes to its batch's output."""

    def __init__(self, label: str, original: Any) -> None:
        self.label, self.original = label, original

    def write(self, text: str) -> int:
        """Keep ``text`` for the client if a task of this thread writes it, else pass it on."""
        out: list[list[str]] | None = getattr(_local, "output", None)
        if out is not None:
            _keep(out, self.label, text)
            return len(text)
        run = _relay_run()
        if run is None:
            return int(self.original.write(text))
        with _relay_lock:  # nested tasks' output, already prefixed by the worker that ran them
            if run not in _relayed and len(_relayed) >= MAX_RELAYED_RUNS:
                del _relayed[next(iter(_relayed))]  # a run long gone left output nobody collected
            _keep(_relayed.setdefault(run, []), self.label, text)
        return len(text)

    def flush(self) -> None:
        """Flush the stream underneath."""
        self.original.flush()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.original, "encoding", "utf-8"))


def _keep(out: list[list[str]], label: str, text: str) -> None:
    if sum(len(t) for _, t in out) < MAX_OUTPUT:
        out.append([label, text])


def _relay_run() -> str | None:
    """The run of the in-task pool whose dispatcher thread this is (it prints its tasks' output), or None."""
    me = threading.current_thread()
    if not me.name.startswith("pool-"):
        return None
    for scheduler in list(_schedulers):
        for link in list(scheduler.links.values()):
            if any(d.thread is me for d in link.dispatchers):
                return str(scheduler.run_id)
    return None


def relay_nested_output(run: str) -> bool:
    """In a task whose batch sends its output back: let that reply also carry what tasks it
    starts in run ``run`` print on other workers. True if the batch sends its output back."""
    runs: set[str] | None = getattr(_local, "output_runs", None)
    if runs is None:
        return False
    runs.add(run)
    return True


def _install_streams() -> None:
    """Route task output through ``_Stream`` in this worker process (once); logging too."""
    global _streams_installed
    with _shared_lock:
        if _streams_installed:
            return
        _streams_installed = True
        old_err = sys.stderr
        sys.stdout = _Stream("stdout", sys.stdout)
        sys.stderr = err = _Stream("stderr", old_err)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old_err:
                handler.setStream(err)


@contextlib.contextmanager
def capture(enabled: bool) -> Iterator[list[list[str]]]:
    """Collect what this thread's tasks print (``[stream, text]`` pairs) while the block runs.

    Output of nested tasks that ran on other workers reaches this process's in-task pools
    (prefixed there by the worker that ran them); it leaves with the next reply of their run.
    """
    out: list[list[str]] = []
    if not enabled or getattr(_local, "output", None) is not None:  # nested: the outer batch keeps it
        yield out
        return
    _install_streams()
    _local.output, _local.output_runs = out, set()
    try:
        yield out
    finally:
        runs, _local.output, _local.output_runs = _local.output_runs, None, None
        with _relay_lock:  # what nested tasks of these runs printed on other workers, relayed
            for run in runs:
                for label, text in _relayed.pop(run, []):
                    _keep(out, label, text)

