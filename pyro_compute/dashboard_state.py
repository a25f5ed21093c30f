"""What the dashboard shows: a polled history of the cluster's counters and a run's own reports.

``ClusterMonitor`` calls :func:`pyro_compute.status.cluster_status` about once a second in a
background thread and keeps a short history; windowed busy share and rates come from the deltas of
each worker's lifetime counters (``busy_seconds``, ``tasks``, ``samples``) between polls, measured
against the worker's own clock (its ``uptime``), so a slow probe does not distort them.
``DashboardRun`` is what a pool or ``estimate_pi`` reports to: progress, the task stream and π.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Protocol

from .config import Settings
from .errors import ComputeError
from .status import cluster_status

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0   # seconds between two polls of the cluster
WINDOW = 10.0         # seconds the per-worker busy share and rates are averaged over
HISTORY = 600.0       # seconds of cluster throughput kept for the chart
TASK_EVENTS = 5000    # task-stream events a run keeps (the oldest go first)
PI_POINTS = 2000      # π estimates a run keeps (the oldest go first)

Row = dict[str, Any]
Snapshot = tuple[float, dict[str, Row]]  # (poll time, reachable rows by worker name)


def _restarted(old: Row, new: Row) -> bool:
    """Whether a worker's counters went backwards between two rows: a new process, same name."""
    return (new.get("pid") != old.get("pid") or new["uptime"] < old["uptime"]
            or new["tasks"] < old["tasks"])


def windowed(old: Row | None, new: Row) -> dict[str, float]:
    """Busy share, tasks/s and samples/s of one worker between two of its rows (0 without a past)."""
    if old is None or _restarted(old, new) or new["uptime"] <= old["uptime"]:
        return {"busy_share": 0.0, "tasks_per_second": 0.0, "samples_per_second_window": 0.0,
                "window_seconds": 0.0}
    dt = new["uptime"] - old["uptime"]
    # Busy time is booked when a task ends, so a long task can land in one window: clamp to 1.
    busy = min(1.0, max(0.0, (new["busy_seconds"] - old["busy_seconds"]) / dt))
    return {"busy_share": busy, "tasks_per_second": (new["tasks"] - old["tasks"]) / dt,
            "samples_per_second_window": (new["samples"] - old["samples"]) / dt,
            "window_seconds": dt}


class ClusterMonitor:
    """Poll the cluster in a background thread; keep the latest rows and a throughput history.

    Args:
        settings: where the name server is and the shared secret.
        interval: seconds between polls.
        window: seconds the per-worker busy share and rates are averaged over.
        history: seconds of throughput history kept.
        status: the function that reads the cluster (``cluster_status``; replaceable for reuse).
    """

    def __init__(self, settings: Settings, *, interval: float = POLL_INTERVAL, window: float = WINDOW,
                 history: float = HISTORY,
                 status: Callable[[Settings], list[Row]] = cluster_status) -> None:
        self.settings, self.interval, self.window, self.history = settings, interval, window, history
        self._status = status
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rows: list[Row] = []
        self._error: str | None = None
        self._polled_at = 0.0
        self._snapshots: Deque[Snapshot] = collections.deque()
        self._series: Deque[Row] = collections.deque()
        self._thread = threading.Thread(target=self._loop, name="dashboard-poll", daemon=True)

    def start(self) -> ClusterMonitor:
        """Poll once now (so the first page load has data), then keep polling in the background."""
        self.poll()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling; safe to call more than once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval + 10)

    def _loop(self) -> None:
        while not self._stop.wait(max(0.0, self._polled_at + self.interval - time.time())):
            self.poll()

    def poll(self) -> None:
        """Read the cluster once and fold the rows into the history."""
        now = time.time()
        try:
            rows, error = self._status(self.settings), None
        except ComputeError as e:
            rows, error = [], str(e)
            log.warning("dashboard: %s", e)
        with self._lock:
            self._polled_at, self._error = now, error
            if error is None:
                self._rows = rows
                self._fold(now, {r["name"]: r for r in rows if r.get("reachable")})

    def _fold(self, now: float, live: dict[str, Row]) -> None:
        previous = self._snapshots[-1][1] if self._snapshots else {}
        self._snapshots.append((now, live))
        while self._snapshots and self._snapshots[0][0] < now - self.window - 2 * self.interval:
            self._snapshots.popleft()
        step = [windowed(previous.get(name), row) for name, row in live.items()]
        self._series.append({
            "t": now, "workers": len(live),
            "samples_per_second": sum(s["samples_per_second_window"] for s in step),
            "tasks_per_second": sum(s["tasks_per_second"] for s in step),
            "busy_workers": sum(s["busy_share"] for s in step)})
        while self._series and self._series[0]["t"] < now - self.history:
            self._series.popleft()

    def _past(self, name: str, now: float) -> Row | None:
        """The worker's oldest row within the window (the window's start), if any."""
        for t, rows in self._snapshots:
            if t >= now - self.window - 0.5 * self.interval and name in rows:
                return rows[name]
        return None

    def status(self) -> tuple[list[Row], str | None]:
        """The latest rows, exactly as ``cluster_status`` returned them, and the last poll's error."""
        with self._lock:
            return list(self._rows), self._error

    def workers(self) -> list[Row]:
        """The latest rows, each with its busy share and rates over the last ``window`` seconds."""
        with self._lock:
            now = self._snapshots[-1][0] if self._snapshots else time.time()
            return [{**row, **(windowed(self._past(row["name"], now), row) if row.get("reachable")
                               else {})} for row in self._rows]

    def snapshot(self) -> dict[str, Any]:
        """What ``/api/history`` serves: the windowed worker rows and the throughput series."""
        workers = self.workers()
        with self._lock:
            series = list(self._series)
            error, polled_at = self._error, self._polled_at
        return {"now": time.time(), "polled_at": polled_at, "interval": self.interval,
                "window": self.window, "error": error, "workers": workers,
                "series": {key: [p[key] for p in series] for key in
                           ("t", "samples_per_second", "tasks_per_second", "busy_workers", "workers")}}


class RunReporter(Protocol):
    """What a pool or ``estimate_pi`` reports a run to; ``DashboardRun`` is the one that shows it."""

    def progress(self, done: int, total: int | None = None, *, queued: int | None = None,
                 running: int | None = None) -> None:
        """Report ``done`` of ``total`` tasks, and optionally how many are queued and running."""

    def task(self, worker: str, start: float, end: float, label: str = "") -> None:
        """Report one finished task: which worker ran it, from when to when (``time.time()``)."""

    def pi(self, estimate: float, low: float, high: float, samples: int) -> None:
        """Report the π estimate so far with its 95 % interval after ``samples`` points."""


class DashboardRun:
    """A run's own view: what a pool or ``estimate_pi`` reports, for the page to show live.

    Every method is thread-safe and cheap (a lock and an append), so a pool may call them from its
    dispatcher threads. Times are ``time.time()`` seconds.

    Args:
        title: what the page calls this run, e.g. ``"pi, 4e9 samples, seed 7"``.
    """

    def __init__(self, title: str = "run") -> None:
        self.title = title
        self._lock = threading.Lock()
        self._started = time.time()
        self._progress: Row = {"done": 0, "total": None, "queued": None, "running": None}
        self._tasks: Deque[Row] = collections.deque(maxlen=TASK_EVENTS)
        self._task_count = 0
        self._pi: Deque[Row] = collections.deque(maxlen=PI_POINTS)
        self._finished: float | None = None

    def progress(self, done: int, total: int | None = None, *, queued: int | None = None,
                 running: int | None = None) -> None:
        """Report ``done`` of ``total`` tasks (None: open-ended), and optionally queued/running."""
        with self._lock:
            self._progress = {"done": int(done), "total": None if total is None else int(total),
                              "queued": queued, "running": running}

    def task(self, worker: str, start: float, end: float, label: str = "") -> None:
        """Report one finished task for the task stream: which worker ran it, from when to when."""
        with self._lock:
            self._tasks.append({"worker": str(worker), "start": float(start), "end": float(end),
                                "label": str(label)})
            self._task_count += 1

    def pi(self, estimate: float, low: float, high: float, samples: int) -> None:
        """Report the π estimate so far with its 95 % interval [low, high] after ``samples`` points."""
        with self._lock:
            self._pi.append({"estimate": float(estimate), "low": float(low), "high": float(high),
                             "samples": int(samples), "t": time.time()})

    def finish(self) -> None:
        """Mark the run as finished; the page stops calling it running."""
        with self._lock:
            self._finished = time.time()

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """What ``/api/run`` serves; task events that ended before ``since`` are left out."""
        with self._lock:
            tasks = [t for t in self._tasks if since is None or t["end"] >= since]
            return {"title": self.title, "started": self._started, "finished": self._finished,
                    "progress": dict(self._progress), "task_count": self._task_count,
                    "tasks": tasks, "pi": list(self._pi)}
