"""The lone caller's fast path: ``submit(f).result()`` sends the call from the waiting thread itself.

A submitted task waits in the pending deque like any other, and an idle dispatcher may take it.
If its caller asks for the result first, while the task is still first in the queue and some
worker is wholly idle, the caller borrows that worker's idle dispatcher slot (the dispatcher
stays asleep) and makes the call on its own proxy: no hand-off to a dispatcher thread and none
back, which is most of the latency of a lone ``submit().result()`` beside a raw Pyro4 call.
The call is booked in the link exactly as a dispatcher's call (health probes it, gives up on a
hung worker and requeues the chunk; a lost worker means retry elsewhere), so every scheduling
guarantee holds; only the thread that sends it differs.
"""
from __future__ import annotations

import itertools
import threading
import time
import weakref
from typing import TYPE_CHECKING

import Pyro4

from .chunk import Chunk, TaskFuture
from .links import OK, RETIRED, Call, Dispatcher, abort, new_proxy
from .sending import packing

if TYPE_CHECKING:
    from .scheduler import Scheduler

# result(timeout) runs a call itself only when the task's measured time is this many times
# shorter than the timeout, so that a slow call does not hold the caller past its timeout.
TIMEOUT_FACTOR = 10
HOLD = 0.001    # seconds a lone submitted task waits for its caller before a dispatcher takes it
LINGER = 0.5    # the waker polls every HOLD for this long after the last lone submit, then sleeps


class Inline:
    """Calls sent by the threads waiting on their results; see the module docstring."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.lent: set[Dispatcher] = set()  # dispatchers whose slot a caller is using
        self.local = threading.local()  # each calling thread's own proxies
        self.proxies: weakref.WeakSet[Pyro4.Proxy] = weakref.WeakSet()  # every one of them, to release
        self.held_since: float | None = None  # oldest lone task queued without waking a dispatcher
        self.last_held = 0.0
        self.wake = threading.Condition(sched.lock)
        self.sleeping = False  # the waker waits without a timeout: a new lone task must notify it
        self.waker: threading.Thread | None = None
        self.sent = 0  # calls sent by their callers (for tests and curious users)
        self.held: Dispatcher | None = None  # the idle dispatcher ``hold`` found, tried first by ``claim``

    def hold(self, chunk: Chunk) -> bool:
        """Queue a lone submitted chunk without waking a dispatcher, if one is idle; caller holds the lock.

        Returns:
            False (nothing done) unless the queue was empty and a worker is idle.
        """
        sched = self.sched
        if sched.pending or self.waker is None:
            return False
        self.held = self.idle_dispatcher()
        if self.held is None:
            return False
        sched.pending.append(chunk)
        now = time.monotonic()
        self.last_held = now
        if self.held_since is None:
            self.held_since = now
        if self.sleeping:
            self.wake.notify()
        return True

    def start(self) -> None:
        """Start the waker (with the first worker's dispatchers, so it stops with them)."""
        if self.waker is None:
            self.waker = threading.Thread(target=self.wake_late, name="pool-waker", daemon=True)
            self.waker.start()

    def wake_late(self) -> None:
        """The waker: wake dispatchers for lone tasks held HOLD seconds that nobody has sent.

        While lone tasks keep coming it polls with a plain sleep, looking without the lock
        (about a tenth of a condition wait's CPU, on cores the callers share), and takes the
        lock only to act or to go to sleep until the next lone task notifies it.
        """
        sched = self.sched
        while not sched.over.is_set():
            now = time.monotonic()
            held = self.held_since
            if held is not None and now - held < HOLD:
                time.sleep(held + HOLD - now)
            elif held is None and now - self.last_held < LINGER:
                time.sleep(HOLD)
            else:
                with sched.lock:
                    self.wake_or_sleep()

    def wake_or_sleep(self) -> None:
        """Wake dispatchers for a task held too long, or sleep until a lone task is held; caller holds the lock."""
        now = time.monotonic()
        if self.held_since is not None and now - self.held_since >= HOLD:
            self.held_since = None
            self.sched.wake_idle()
        elif self.held_since is None and now - self.last_held >= LINGER and not self.sched.over.is_set():
            self.sleeping = True
            self.wake.wait()
            self.sleeping = False

    def idle_dispatcher(self) -> Dispatcher | None:
        """An idle dispatcher of a worker with no call at all, looking at a few; caller holds the lock.

        The most recently idle first: a lone caller's calls keep going to the worker that just
        answered (its process and connection still warm) instead of alternating between workers.
        """
        for d in itertools.islice(reversed(self.sched.idle), 8):
            if not d.link.calls and d.link.state == OK:
                return d
        return None

    def stop(self) -> None:
        """Let the waker exit (the pool is over); caller holds the lock."""
        self.wake.notify()

    def join(self, timeout: float) -> None:
        """Wait for the waker to exit."""
        if self.waker is not None and self.waker is not threading.current_thread():
            self.waker.join(timeout)

    def run(self, future: TaskFuture, timeout: float | None) -> None:
        """Send ``future``'s chunk from this thread if it is still queued first and a worker idles."""
        sched = self.sched
        with sched.lock:
            claimed = self.claim(future, timeout)
        if claimed is None:
            return
        d, chunk, packed = claimed
        kind = "serpent" if packed is None else "marshal"
        proxy = self.proxy(d.link.uri, kind)
        try:
            error = sched.call(d, proxy, chunk, packed)
        except BaseException:  # KeyboardInterrupt mid-call: the task goes back to the queue
            self.interrupted(d, chunk, proxy)
            raise
        sched.finished(d, chunk, error, lent=True)

    def claim(self, future: TaskFuture, timeout: float | None) -> tuple[Dispatcher, Chunk, str | None] | None:
        """Take the chunk and an idle worker's dispatcher slot, or None; caller holds the lock."""
        sched = self.sched
        if not sched.pending or sched.pending[0].future is not future or sched.over.is_set():
            return None
        chunk = sched.pending[0]
        per_item = sched.per_item.get(chunk.task)
        expected = None if per_item is None else per_item * len(chunk.args)
        if timeout is not None and (expected is None or expected * TIMEOUT_FACTOR + self.margin() > timeout):
            return None
        d = self.held
        if d is None or d not in sched.idle or d.link.calls or d.link.state != OK:
            d = self.idle_dispatcher()
            if d is None:
                return None
        sched.pending.popleft()
        if not sched.pending:
            self.held_since = None  # nothing left for the waker to wake anyone for
        try:
            started = future.set_running_or_notify_cancel()
        except RuntimeError:  # requeued from a lost worker: running already
            started = future.running()
        if not started:
            sched.check_over()
            return None  # cancelled meanwhile
        del sched.idle[d]
        self.lent.add(d)
        sched.book(d, Call(chunk, time.monotonic(), expected))
        sched.park_behind(d.link)
        self.sent += 1
        return d, chunk, packing(chunk)

    def margin(self) -> float:
        """Seconds health may take to give up on a hung worker (its call then returns here)."""
        s = self.sched.settings
        return 1.0 + s.discovery_interval + s.probe_timeout

    def lends(self, d: Dispatcher) -> bool:
        """Whether a caller is using ``d``'s slot (``d`` must not take work); caller holds the lock."""
        return d in self.lent

    def give_back(self, d: Dispatcher) -> None:
        """Return a borrowed slot: its dispatcher (still asleep) is idle again; caller holds the lock."""
        self.lent.discard(d)
        if d.link.state != RETIRED and not self.sched.over.is_set():
            self.sched.idle[d] = None
        if self.sched.pending:
            self.sched.wake_idle()

    def interrupted(self, d: Dispatcher, chunk: Chunk, proxy: Pyro4.Proxy) -> None:
        """The caller was interrupted mid-call: drop the connection, requeue the chunk, free the slot."""
        abort(proxy)
        proxy._pyroRelease()
        sched = self.sched
        with sched.lock:
            call = sched.unbook(d) if d.slot in d.link.calls else None
            sched.unpark(d.link)
            if call is not None and not call.aborted:
                sched.requeue(chunk)
            self.give_back(d)
            sched.check_over()

    def proxy(self, uri: str, kind: str) -> Pyro4.Proxy:
        """This thread's own proxy to ``uri`` (proxies are never shared between threads)."""
        mine: dict[tuple[str, str], Pyro4.Proxy] | None = getattr(self.local, "proxies", None)
        if mine is None:
            mine = self.local.proxies = {}
        proxy = mine.get((uri, kind))
        if proxy is None:
            settings = self.sched.settings
            proxy = mine[uri, kind] = new_proxy(uri, kind, settings, settings.probe_timeout)
            self.proxies.add(proxy)
        return proxy

    def release(self) -> None:
        """Close every calling thread's connections (at shutdown, once nothing runs)."""
        for proxy in list(self.proxies):
            proxy._pyroRelease()
