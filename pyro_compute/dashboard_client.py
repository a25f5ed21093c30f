"""Report a run to a running ``pyro-compute dashboard`` in another process, never slowing the run.

::

    dispatcher threads ──task/progress/pi──► RemoteRun ── bounded queue (full: drop and count)
                                                │ also kept locally, like any DashboardRun
                          pool-dashboard-report thread, every ``interval`` s:
                          POST /api/report  {"run", "title", "events": [[kind, ...], ...], "dropped"}
                          header X-Pyro-Compute-Token: HMAC of a fixed label under the shared secret

Reports are plain JSON; the secret itself never leaves the process. A dashboard that is slow,
gone or refusing costs the run nothing but the events it could not take: the sending thread waits
at most ``timeout`` per request and backs off after a failure, while the callers only append to
the queue.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any

from .config import Settings
from .dashboard_state import DashboardRun, report_token
from .errors import ConfigError

__all__ = ["RemoteRun"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Pyro-Compute-Token"
QUEUE_SIZE = 20_000   # events waiting to be sent; more are dropped and counted
BATCH = 2_000         # events per request
INTERVAL = 0.5        # seconds between two sends
TIMEOUT = 2.0         # seconds one request may take
MAX_BACKOFF = 30.0    # most seconds between two attempts while the dashboard fails


def _endpoint(url: str) -> tuple[str, int, str]:
    """Host, port and report path of a dashboard address such as ``http://127.0.0.1:8787/``.

    Raises:
        ConfigError: the address is neither an http:// URL nor host:port.
    """
    parts = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port < 1 or ("//" not in url and parts.port is None):
        raise ConfigError(f"the dashboard address {url!r} is not of the form http://HOST:PORT/; give the "
                          "address 'pyro-compute dashboard' printed")
    return parts.hostname, port, parts.path.rstrip("/") + "/api/report"


class RemoteRun(DashboardRun):
    """A DashboardRun that also sends what it is told to a dashboard elsewhere, in the background.

    Hand it to a pool (``Pool(dashboard=RemoteRun(url, settings).start())``) or to ``estimate_pi``
    as its reporter; ``close()`` marks it finished, sends what is left and stops the thread.

    Args:
        url: the dashboard's address, e.g. ``http://127.0.0.1:8787`` (``pyro-compute dashboard``).
        settings: whose shared secret the report token is derived from.
        title: what the dashboard calls this run.
        queue_size: events that may wait to be sent; further ones are dropped and counted.
        interval: seconds between two sends.
        timeout: seconds one request may take.

    Raises:
        ConfigError: ``url`` is not a dashboard address.
    """

    def __init__(self, url: str, settings: Settings, title: str | None = None, *,
                 queue_size: int = QUEUE_SIZE, interval: float = INTERVAL, timeout: float = TIMEOUT) -> None:
        super().__init__(title or f"pool, pid {os.getpid()} on {socket.gethostname()}")
        self.url = url
        self.host, self.port, self.path = _endpoint(url)
        self.interval, self.timeout = interval, timeout
        self.run_id = uuid.uuid4().hex
        self._token = report_token(settings.hmac_bytes)
        self._events: queue.Queue[list[Any]] = queue.Queue(queue_size)
        self._latest: dict[str, list[Any]] = {}  # the newest progress of each kind, never dropped
        self._count_lock = threading.Lock()
        self._lost = 0
        self.sent = 0  # events the dashboard took
        self.failures = 0  # requests that failed
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pool-dashboard-report", daemon=True)

    @property
    def lost(self) -> int:
        """Events dropped so far: the queue was full, or the dashboard did not take them."""
        with self._count_lock:
            return self._lost

    def start(self) -> RemoteRun:
        """Start the sending thread; return self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Mark the run finished, send what is left (within ``timeout``) and stop; safe to repeat."""
        if not self._closing.is_set():
            self.finish()
            self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3 * self.timeout + 5)

    def __enter__(self) -> RemoteRun:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what a pool reports: kept locally, queued for the dashboard ------------------------------

    def progress(self, done: int, total: int | None = None, *, queued: int | None = None,
                 running: int | None = None) -> None:
        """As DashboardRun.progress; only the newest report of each kind is sent."""
        super().progress(done, total, queued=queued, running=running)
        kind = "caller" if queued is None and running is None else "counts"
        with self._count_lock:
            self._latest[kind] = ["progress", int(done), *(None if v is None else int(v)
                                                           for v in (total, queued, running))]

    def task(self, worker: str, start: float, end: float, label: str = "") -> None:
        """As DashboardRun.task, and queued for the dashboard."""
        super().task(worker, start, end, label)
        self._offer(["task", str(worker), float(start), float(end), str(label)], start + end)

    def pi(self, estimate: float, low: float, high: float, samples: int) -> None:
        """As DashboardRun.pi, and queued for the dashboard."""
        super().pi(estimate, low, high, samples)
        self._offer(["pi", float(estimate), float(low), float(high), int(samples)], estimate + low + high)

    def finish(self) -> None:
        """As DashboardRun.finish; the dashboard learns it with the last report."""
        super().finish()
        with self._count_lock:
            self._latest["finish"] = ["finish"]

    def _offer(self, event: list[Any], check: float) -> None:
        """Queue ``event`` unless the queue is full; ``check`` (a sum of its floats) must be finite."""
        if not math.isfinite(check):  # plain JSON has no NaN or infinity
            self._lose(1)
        else:
            try:
                self._events.put_nowait(event)
            except queue.Full:
                self._lose(1)

    def _lose(self, n: int) -> None:
        with self._count_lock:
            self._lost += n

    # -- the sending thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        delay = self.interval
        while True:
            closing = self._closing.wait(delay)
            ok = self._send_all(closing)
            if closing:
                self._lose(self._events.qsize())  # the dashboard failed: what is left stays unsent
                return
            delay = self.interval if ok else min(MAX_BACKOFF, max(2 * delay, 1.0))

    def _send_all(self, closing: bool) -> bool:
        """Send the queued events in batches; False after a failed request (its events are lost).

        On closing, batches go out until the queue is empty or ``timeout`` has passed; then what
        is left is dropped, and the newest progress and the finish mark are sent in a last request.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            batch, latest = self._take()
            if not batch and not latest:
                return True
            if not self._post(batch + list(latest.values()), len(batch)):
                with self._count_lock:  # progress and finish are sent again next time if not newer
                    for kind, event in latest.items():
                        self._latest.setdefault(kind, event)
                return False
            if not closing and len(batch) < BATCH or not batch:
                return True
            if closing and time.monotonic() > deadline:  # the rest is lost; the finish mark goes next
                self._lose(self._drop_queued())

    def _drop_queued(self) -> int:
        """Empty the queue; return how many events it held."""
        n = 0
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                return n
            n += 1

    def _take(self) -> tuple[list[list[Any]], dict[str, list[Any]]]:
        """Up to BATCH queued events and, once the queue is drained, the newest progress and finish."""
        batch: list[list[Any]] = []
        while len(batch) < BATCH:
            try:
                batch.append(self._events.get_nowait())
            except queue.Empty:
                break
        latest: dict[str, list[Any]] = {}
        with self._count_lock:
            if len(batch) < BATCH:  # the finish mark goes after every task event
                latest, self._latest = self._latest, {}
        return batch, latest

    def _post(self, batch: list[list[Any]], droppable: int) -> bool:
        body = json.dumps({"run": self.run_id, "title": self.title, "events": batch,
                           "dropped": self.lost}, allow_nan=False).encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body, {"Content-Type": "application/json",
                                                   TOKEN_HEADER: self._token})
            response = conn.getresponse()
            answer = response.read(2000).decode(errors="replace").strip()
        except (OSError, http.client.HTTPException) as e:
            return self._failed(droppable, f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        if response.status != 200:
            return self._failed(droppable, f"HTTP {response.status}: {answer}")
        self.sent += len(batch)
        return True

    def _failed(self, n: int, why: str) -> bool:
        self._lose(n)
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "the dashboard at %s did not take this run's reports (%s); the run goes on, "
                "and its reports are dropped while the dashboard cannot take them", self.url, why)
        return False
