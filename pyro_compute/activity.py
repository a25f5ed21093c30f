"""How busy a worker was lately: busy intervals of the last WINDOW seconds and tasks in flight."""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Callable, Iterator

WINDOW = 10.0  # seconds the recent busy share looks back


class Activity:
    """Busy share over a sliding window, and how many tasks are in flight (running or waiting).

    Args:
        window: seconds to look back.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._spans: collections.deque[tuple[float, float]] = collections.deque()
        self._active = 0
        self._since = 0.0
        self._in_flight = 0
        self._born = clock()

    @contextlib.contextmanager
    def waiting(self, tasks: int) -> Iterator[None]:
        """Count ``tasks`` as in flight for the block (queued behind a running batch or running)."""
        with self._lock:
            self._in_flight += tasks
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= tasks

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count the block as busy time; nested or overlapping blocks count once."""
        with self._lock:
            if self._active == 0:
                self._since = self._clock()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._spans.append((self._since, self._clock()))

    def snapshot(self) -> dict[str, float | int]:
        """``{"recent_busy": seconds busy in the window, "recent_window": its length, "in_flight"}``."""
        with self._lock:
            now = self._clock()
            start = now - self.window
            while self._spans and self._spans[0][1] <= start:
                self._spans.popleft()
            busy = sum(end - max(begin, start) for begin, end in self._spans)
            if self._active:
                busy += now - max(self._since, start)
            return {"recent_busy": busy, "recent_window": min(self.window, now - self._born),
                    "in_flight": self._in_flight}
