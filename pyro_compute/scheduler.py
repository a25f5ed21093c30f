"""Scheduler: the pending queue, one link per worker, dispatchers, requeues and chunk sizing.

A chunk waits in the pool's pending deque until a dispatcher whose worker is free takes it; it
is never committed to a busy worker, so no task waits behind another while a worker idles.
A worker gets a second call (pipelining, to hide the round trip) only behind a call that was
measured short and has not overrun its estimate. ``health.Health`` probes workers whose
calls overrun, requeues their chunks elsewhere and revives workers that answer again.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from typing import Any

import Pyro4
import Pyro4.errors

from . import calling
from .chunk import Chunk
from .config import Settings
from .dashboard_state import RunReporter
from .errors import WorkerUnavailableError
from .inline import Inline
from .links import DOWN, OK, PIPELINE_SECONDS, RETIRED, Call, Dispatcher, Link, abort, new_proxy
from .sending import packing

log = logging.getLogger(__name__)

SLOTS = 2               # calls a worker may hold: one running, one queued behind a short one
TARGET_SECONDS = 0.2    # work carried by one RMI call once task times are known
MIN_SECONDS = 0.002     # guided scheduling shrinks calls down to this much work, no further
HALF_LIFE = 16          # tasks measured after which the per-item estimate's past weighs half
MAX_CHUNK = 4096


_exiting = False  # the main thread has ended: the interpreter is shutting down


def _mark_exiting() -> None:
    global _exiting
    _exiting = True


# Run by threading once the main thread has ended, as concurrent.futures.thread's own flag is.
threading._register_atexit(_mark_exiting)  # type: ignore[attr-defined]


class Scheduler:
    """Pending chunks, links and dispatcher threads of one pool; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # calls finished, chunks failed, shutdown
        self.pending: collections.deque[Chunk] = collections.deque()
        self.links: dict[str, Link] = {}
        self.idle: dict[Dispatcher, None] = {}  # waiting dispatchers, oldest first
        self.parked: set[Dispatcher] = set()  # waiting behind a call nothing may queue behind
        self.per_item: dict[str, float] = {}
        self.sums: dict[str, list[float]] = {}  # per task: decayed seconds and tasks measured
        self.ok = 0  # links in state OK (usable() without building the list)
        self.free = 0  # links in state OK holding no call: no call queues behind another while one is
        self.busy = 0
        # False in pools made inside tasks: a call there may wait on its own children for long,
        # so nothing is queued behind it (and duplicated when it overruns).
        self.pipeline = True
        self.run_id = uuid.uuid4().hex  # names this pool's shared constants on the workers
        self.shared: dict[str, Any] = {}  # constants set with shared.setConst, pushed once per worker
        self.shared_version = 0
        self.show_output = False  # ask workers for what tasks print, and print it here
        self.reporter: RunReporter | None = None  # a dashboard told of every finished call
        self.reported = 0  # tasks reported done to it
        # Arguments the wire cannot carry (objects of script classes) go pickled, to workers that
        # accept them by value (the launcher's own cluster). Results never come back pickled:
        # objects of script classes travel as plain state (objects.py).
        self.by_value = False
        self.feeders = 0
        self.shutting_down = False
        self.over = threading.Event()  # shut down and nothing left to run: threads exit
        # Futures fail outside the lock: their done callbacks may call submit().
        self.deferred: list[tuple[Chunk, BaseException]] = []
        self.inline = Inline(self)  # a lone caller sends its own call
        self._options: dict[str, Any] | None = None
        self._flat_options: dict[str, Any] | None = None

    # -- work in ---------------------------------------------------------------------------

    def submit(self, chunk: Chunk) -> None:
        """Queue a submitted task, which its caller may send itself (``inline``).

        Raises:
            RuntimeError: the pool or the interpreter is shutting down.
        """
        with self.lock:
            if _exiting:
                raise RuntimeError("cannot schedule new tasks after interpreter shutdown")
            if self.shutting_down:
                raise RuntimeError("cannot schedule new tasks after the pool was shut down")
            chunk.future.runner = self.inline.run  # type: ignore[attr-defined]
            if not self.inline.hold(chunk):
                self.pending.append(chunk)
                self.wake_idle()

    def enqueue(self, chunk: Chunk) -> None:
        """Queue a map's chunk; accepted after shutdown too (the map started before)."""
        with self.lock:
            self.pending.append(chunk)
            self.wake_idle()

    def requeue(self, chunk: Chunk) -> None:
        """Put a chunk back in front (its worker was lost or hung); caller holds the lock."""
        if not chunk.future.done():
            self.pending.appendleft(chunk)

    def feeder_started(self) -> None:
        """A map's feeder will keep adding chunks, even after shutdown."""
        with self.lock:
            self.feeders += 1

    def feeder_stopped(self) -> None:
        """A map's feeder added its last chunk."""
        with self.lock:
            self.feeders -= 1
            self.check_over()

    # -- chunk sizing ----------------------------------------------------------------------

    def chunk_size(self, task: str, remaining: int | None) -> int:
        """Tasks per call: TARGET_SECONDS of measured work; 1 while unmeasured.

        With a known number of ``remaining`` tasks, chunks shrink towards the end (guided
        scheduling) so that no worker is left with a long chunk while the others idle, but never
        below MIN_SECONDS of work: smaller calls cost more than the imbalance they save.
        """
        per_item = self.per_item.get(task)
        if per_item is None:
            return 1
        per_item = max(per_item, 1e-9)
        size = min(MAX_CHUNK, round(TARGET_SECONDS / per_item))  # sleep(0.1) measures 0.1003 s: 2, not 1
        if remaining is not None:
            guided = -(-remaining // (2 * SLOTS * max(1, self.ok)))
            size = min(size, max(guided, int(MIN_SECONDS / per_item)))
        return max(1, size)

    def record(self, task: str, seconds: float, items: int) -> None:
        """Fold a measured call into the task's per-item time estimate.

        Time per task over the recent tasks (the past halves every HALF_LIFE tasks measured), so
        each call weighs by its number of tasks: a map's tail of one-task calls, whose fixed cost
        dominates, does not make a tiny task look ten times slower.
        """
        sums = self.sums.get(task)
        if sums is None:
            sums = self.sums[task] = [0.0, 0.0]
        keep = 0.5 ** (items / HALF_LIFE)
        sums[0] = keep * sums[0] + seconds
        sums[1] = keep * sums[1] + items
        self.per_item[task] = sums[0] / sums[1]

    def in_flight_bound(self) -> int:
        """How many chunks a streaming map keeps queued or running."""
        return max(8, 4 * SLOTS * self.ok)

    def usable(self) -> list[str]:
        """Names of the workers taking work."""
        return [n for n, link in list(self.links.items()) if link.state == OK]

    # -- links -----------------------------------------------------------------------------

    def add_link(self, name: str, uri: str) -> None:
        """Start dispatchers for a worker; caller holds the lock."""
        self.links[name] = link = Link(name, uri)
        self.ok += 1
        self.free += 1
        self.inline.start()
        for slot in range(SLOTS):
            d = Dispatcher(link, slot, self.lock)
            d.thread = threading.Thread(target=self.dispatch, args=(d,), daemon=True,
                                        name=f"pool-dispatch-{name}-{slot}")
            link.dispatchers.append(d)
            d.thread.start()

    def set_state(self, link: Link, state: str) -> None:
        """Change a link's state and wake whoever that concerns; caller holds the lock."""
        self.ok += (state == OK) - (link.state == OK)
        if not link.calls:
            self.free += (state == OK) - (link.state == OK)
        link.state = state
        for d in link.dispatchers:
            d.wake.notify()
        self.wake_idle()
        self.changed.notify_all()

    def give_up_on(self, link: Link, why: str) -> None:
        """Mark a hung worker down and requeue every chunk it holds; caller holds the lock."""
        if link.state != OK:
            return
        log.warning("worker %s %s; its %d call(s) go to other workers", link.name, why, len(link.calls))
        for call in link.calls.values():
            call.aborted = True
            self.requeue(call.chunk)
            abort(call.proxy)
        self.set_state(link, DOWN)

    # -- dispatch --------------------------------------------------------------------------

    def may_take(self, link: Link, now: float) -> bool:
        """Whether ``link`` may get a call now: it is idle, or it runs one short, on-time call."""
        if link.state != OK or len(link.calls) >= SLOTS or (link.calls and not (self.pipeline and not self.free)):
            return False
        return all(c.expected is not None and c.expected < PIPELINE_SECONDS
                   and now - c.started < max(c.expected, 0.005) for c in link.calls.values())

    def wake_idle(self) -> None:
        """Wake waiting dispatchers that may take a pending chunk, idle workers first."""
        if not self.pending or not self.idle:
            return
        now = time.monotonic()
        wanted = len(self.pending)
        for pipelining in (False, True):  # idle workers first, then a second call behind a short one
            for d in list(self.idle):
                if not wanted:
                    return
                if bool(d.link.calls) == pipelining and self.may_take(d.link, now):
                    del self.idle[d]
                    d.wake.notify()
                    wanted -= 1

    def next_chunk(self, d: Dispatcher) -> Chunk | None:
        """Block until ``d`` may send a chunk; None when its link retired or the pool is over."""
        with self.lock:
            while True:
                if d.link.state == RETIRED or self.over.is_set():
                    return None
                if not self.inline.lends(d):  # else a caller uses d's slot: d sleeps until it is back
                    chunk = self.take(d)
                    if chunk is not None:
                        return chunk
                    self.rest(d)
                d.wake.wait()
                self.idle.pop(d, None)
                self.parked.discard(d)

    def take(self, d: Dispatcher) -> Chunk | None:
        """The next chunk for ``d``, booked as its call, if its link may take one; caller holds the lock."""
        now = time.monotonic()
        if not (self.pending and self.may_take(d.link, now)):
            return None
        chunk = self.pop()
        if chunk is None:
            return None
        per_item = self.per_item.get(chunk.task)
        expected = None if per_item is None else per_item * len(chunk.args)
        self.book(d, Call(chunk, now, expected))
        self.park_behind(d.link)
        self.wake_idle()
        return chunk

    def book(self, d: Dispatcher, call: Call) -> None:
        """Record ``call`` as ``d``'s; caller holds the lock."""
        d.link.calls[d.slot] = call
        self.busy += 1
        if len(d.link.calls) == 1 and d.link.state == OK:
            self.free -= 1

    def unbook(self, d: Dispatcher) -> Call:
        """Forget ``d``'s call and return it; caller holds the lock."""
        call = d.link.calls.pop(d.slot)
        self.busy -= 1
        if not d.link.calls and d.link.state == OK:
            self.free += 1
        return call

    def park_behind(self, link: Link) -> None:
        """``link`` started a call: if nothing may queue behind it, park its idle dispatchers; caller holds the lock."""
        if not self.pipelinable(link):
            for other in link.dispatchers:
                if other in self.idle:
                    del self.idle[other]
                    self.parked.add(other)

    def pipelinable(self, link: Link) -> bool:
        """Whether a call may ever queue behind ``link``'s calls (all measured short); caller holds the lock."""
        if not self.pipeline:
            return False
        for c in link.calls.values():  # a loop, not all(): once per call sent
            if c.expected is None or c.expected >= PIPELINE_SECONDS:
                return False
        return True

    def rest(self, d: Dispatcher) -> None:
        """Let ``d`` wait: idle (offered work), or parked while its link runs a call nothing may queue behind.

        Parked dispatchers cost ``wake_idle`` nothing: with long tasks on many workers, every
        worker has one busy and one parked dispatcher, and scanning them all per chunk made
        the client's CPU per task grow with the number of workers.
        """
        if d.link.calls and not self.pipelinable(d.link):
            self.parked.add(d)
        else:
            self.idle[d] = None

    def unpark(self, link: Link) -> None:
        """``link`` ended a call: its parked dispatchers are idle again (still asleep); caller holds the lock."""
        if not self.parked:
            return
        for d in link.dispatchers:
            if d in self.parked:
                self.parked.discard(d)
                self.idle[d] = None

    def pop(self) -> Chunk | None:
        """The first pending chunk still wanted, marked running; caller holds the lock."""
        while self.pending:
            chunk = self.pending.popleft()
            if chunk.future.done():
                continue  # cancelled, or a copy on another worker already settled it
            # A chunk requeued from a lost worker is running already.
            if chunk.future.running() or chunk.future.set_running_or_notify_cancel():
                return chunk
        self.check_over()
        return None

    def dispatch(self, d: Dispatcher) -> None:
        """One dispatcher: its own proxies, one call at a time, until its link stops.

        Plain-data chunks travel with marshal (C speed); anything else with serpent.
        """
        proxies: dict[str, Pyro4.Proxy] = {}
        try:
            chunk = self.next_chunk(d)
            while chunk is not None:
                packed = packing(chunk)
                kind = "serpent" if packed is None else "marshal"
                if kind not in proxies:
                    proxies[kind] = new_proxy(d.link.uri, kind, self.settings, self.settings.probe_timeout)
                error = self.call(d, proxies[kind], chunk, packed)
                following = self.finished(d, chunk, error)
                del chunk  # no stale reference to the batch while waiting for the next one
                chunk = following if following is not None else self.next_chunk(d)
        finally:
            for proxy in proxies.values():
                proxy._pyroRelease()

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``Evaluator.batch`` beyond the chunk: run id and output."""
        if self._options is None:  # show_output is set once, right after the pool made us
            self._options = {"run": self.run_id, **({"output": True} if self.show_output else {})}
        return self._options

    def flat_options(self) -> dict[str, Any]:
        """``options`` of a flat chunk (its tasks' only arguments, not tuples)."""
        if self._flat_options is None:
            self._flat_options = {**self.options(), "flat": True}
        return self._flat_options

    def set_shared(self, constants: dict[str, Any]) -> None:
        """Add constants for this pool's tasks; every worker gets them before its next chunk."""
        with self.lock:
            self.shared.update(constants)
            self.shared_version += 1

    call = calling.call
    report = calling.report
    push_shared = calling.push_shared
    too_large = calling.too_large
    judge = calling.judge

    def finished(self, d: Dispatcher, chunk: Chunk, error: BaseException | None,
                 lent: bool = False) -> Chunk | None:
        """Account for a call; on a communication error decide between retry, requeue and fail.

        Returns:
            The next chunk for ``d``, taken under the same lock (so that no other dispatcher
            is woken for it), or None. ``lent``: a caller made the call in ``d``'s slot
            (``inline``) and gives the slot back; then always None.
        """
        call = d.link.calls[d.slot]
        verdict = None if error is None or call.aborted else self.judge(d.link, call, error)
        with self.lock:
            call = self.unbook(d)
            if d.link.calls:
                now = time.monotonic()
                for other in d.link.calls.values():
                    other.started = now  # the call queued behind this one starts running now
            self.unpark(d.link)
            if verdict is not None and not call.aborted:
                self.settle_failure(d.link, chunk, error, verdict)
                self.wake_idle()  # a requeued chunk; after a success ``d`` takes the next one itself
            if lent:
                self.inline.give_back(d)
                following = None
            else:
                following = self.take(d)
            self.check_over()
        if self.deferred:  # whoever defers a failure flushes it after: no need to look under the lock
            self.flush()
        return following

    def settle_failure(self, link: Link, chunk: Chunk, error: BaseException | None, verdict: str) -> None:
        """Retry, requeue or fail a chunk whose call failed; caller holds the lock."""
        if verdict == "retry":
            chunk.hangups += 1
            self.requeue(chunk)
            return
        if verdict == "too large":
            self.deferred.append((chunk, Pyro4.errors.MessageTooLargeError(
                f"worker {link.name} closed the connection but still answers: "
                + self.too_large(chunk, "the call or its result is"))))
            return
        self.give_up_on(link, f"was lost ({error})")
        chunk.tried.append(link.name)
        if len(chunk.tried) < self.settings.max_retries:
            self.requeue(chunk)
        else:
            self.deferred.append((chunk, WorkerUnavailableError(
                f"task {chunk.task} (chunk of {len(chunk.args)}) failed on {len(chunk.tried)} "
                f"workers, which were lost: {', '.join(chunk.tried)}; last error: {error}")))

    # -- shutdown --------------------------------------------------------------------------

    def outstanding(self) -> bool:
        """Whether any chunk is queued or running; caller holds the lock."""
        while self.pending and self.pending[0].future.done():
            self.pending.popleft()
        return self.busy > 0 or any(not c.future.done() for c in self.pending)

    def check_over(self) -> None:
        """Once shut down with nothing left, let every thread exit; caller holds the lock."""
        if not self.shutting_down:
            return  # only shutdown() waits on ``changed``
        if not self.feeders and not self.over.is_set() and not self.outstanding():
            self.over.set()
            self.inline.stop()
            for link in self.links.values():
                for d in link.dispatchers:
                    d.wake.notify()
        if not self.outstanding():
            self.changed.notify_all()

    def fail_pending(self, error: BaseException) -> None:
        """Fail every queued chunk (no worker left); caller holds the lock."""
        while self.pending:
            chunk = self.pending.popleft()
            if chunk.future.running() or chunk.future.set_running_or_notify_cancel():
                self.deferred.append((chunk, error))
        self.check_over()

    def flush(self) -> None:
        """Fail the futures ``deferred`` while the lock was held (call without the lock)."""
        with self.lock:
            todo, self.deferred = self.deferred, []
        for chunk, error in todo:
            chunk.fail(error)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Refuse new work, optionally cancel queued chunks, optionally wait for the rest."""
        with self.lock:
            self.shutting_down = True
            queued = list(self.pending) if cancel_futures else []
        for chunk in queued:
            chunk.future.cancel()  # outside the lock: done callbacks run here
        with self.lock:
            self.check_over()
            if wait:
                self.changed.wait_for(lambda: not self.outstanding())
        if wait and not self.feeders:
            self.inline.release()
            self.inline.join(timeout=5)
            for link in list(self.links.values()):
                for d in link.dispatchers:
                    if d.thread is not None and d.thread is not threading.current_thread():
                        d.thread.join(timeout=5)
