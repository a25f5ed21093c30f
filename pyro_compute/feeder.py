"""Feeder: reads one map call's input lazily into chunks, with a bounded number in flight."""
from __future__ import annotations

import concurrent.futures
import functools
import itertools
import queue
import threading
import time
from typing import Any, Callable, Iterator

from . import taskctx
from .chunk import Chunk, child_seeds


class Feeder(threading.Thread):
    """Reads one map call's input lazily into chunks, keeping a bounded number in flight."""

    def __init__(self, task: tuple[str, bytes | None], args: Iterator[Any], *,
                 total: int | None, size: Callable[[int | None], int], submit: Callable[[Chunk], None],
                 done: Callable[[], None], in_flight: int, seed: int | None, key: tuple[int, ...],
                 ordered: bool, flat: bool = False) -> None:
        """Args:
            task: the chunks' task reference and by-value code.
            args: argument tuples, read lazily.
            total: how many tuples ``args`` holds, if known.
            size: how many tasks the next chunk should carry, given how many remain (if known).
            submit: hands a chunk to the pool.
            done: called once the feeder will submit nothing more.
            in_flight: most chunks submitted but not yet consumed.
            seed, key: task i gets child ``(*key, i)`` of ``SeedSequence(seed)``; no seeds if None.
            ordered: yield chunks in input order (else in completion order).
            flat: ``args`` yields each task's only argument, not tuples (no tuple per task).
        """
        super().__init__(name=f"pool-feeder-{task[0]}", daemon=True)
        self.task, self.args, self.total, self.size, self.submit = task, args, total, size, submit
        self.on_done = done
        self.seed, self.key, self.ordered, self.flat = seed, key, ordered, flat
        self.slots = threading.Semaphore(in_flight)
        self.out: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self.live: set[Chunk] = set()  # submitted, not yet consumed: what stop() cancels
        self.live_lock = threading.Lock()
        self.submitted = 0
        self.error: BaseException | None = None
        self.done = False
        self.stopped = False

    def run(self) -> None:
        index = 0
        try:
            while not self.stopped and self.error is None:
                remaining = None if self.total is None else self.total - index
                args = self._take(self.size(remaining))
                if not args:
                    break
                seeds = None if self.seed is None else child_seeds(self.seed, self.key, index, len(args))
                index += len(args)
                self.slots.acquire()
                if self.stopped:
                    break
                self._put(Chunk(self.task, args, None, seeds, single=False, flat=self.flat))
        except BaseException as e:  # seeds or submission failed: report it in order
            self.error = e
        finally:
            self.done = True
            self.out.put(None)
            self.on_done()

    def _take(self, n: int) -> list[Any]:
        """Up to ``n`` argument tuples; if the input raises, the ones read before it and the error."""
        args: list[Any] = []
        try:
            args.extend(itertools.islice(self.args, n))  # keeps what it read if the input raises
        except BaseException as e:  # the caller's iterable raised: results before it still count
            self.error = e
        return args

    def _put(self, chunk: Chunk) -> None:
        if self.ordered:
            self.out.put(chunk)
        else:
            chunk.future.add_done_callback(functools.partial(self._completed, chunk))
        with self.live_lock:
            self.live.add(chunk)
        self.submitted += 1
        self.submit(chunk)

    def _completed(self, chunk: Chunk, _: concurrent.futures.Future[Any]) -> None:
        self.out.put(chunk)

    def chunks(self, deadline: float | None) -> Iterator[Chunk]:
        """Chunks in submission order (ordered) or completion order; re-raise an input error."""
        consumed = 0
        while True:
            if self.done and consumed == self.submitted:
                break
            if not self.ordered and taskctx.in_task():
                self._wait_in_task(deadline)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                chunk = self.out.get(timeout=remaining)
            except queue.Empty:
                raise concurrent.futures.TimeoutError("map timed out waiting for results") from None
            if chunk is not None:
                consumed += 1
                yield chunk
        if self.error is not None:
            raise self.error

    def _wait_in_task(self, deadline: float | None) -> None:
        """Until a chunk completes (or the deadline), lend this task's worker to other tasks.

        Blocking on ``out`` would hold the worker while the chunks awaited may need it.
        """
        while self.out.empty() and (deadline is None or time.monotonic() < deadline):
            with self.live_lock:
                live = [c.future for c in self.live]
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if live:
                taskctx.wait(live, timeout, concurrent.futures.FIRST_COMPLETED)
                time.sleep(0)  # a future just done queues its chunk from its done callback
            else:
                time.sleep(0.001)  # the feeder is reading input: nothing is in flight yet

    def release(self, chunk: Chunk) -> None:
        """``chunk`` was consumed: forget it and let the feeder put another in flight."""
        with self.live_lock:
            self.live.discard(chunk)
        self.slots.release()

    def stop(self) -> None:
        """Stop reading input; cancel chunks not started and drop the rest (nobody reads them)."""
        self.stopped = True
        self.slots.release()
        with self.live_lock:
            live, self.live = self.live, set()
        for chunk in live:
            if not chunk.future.cancel():
                chunk.fail(concurrent.futures.CancelledError("the map was closed"))
