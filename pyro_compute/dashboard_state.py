"""What the dashboard shows: a polled history of the cluster's counters and a run's own reports.

``ClusterMonitor`` calls :func:`pyro_compute.status.cluster_status` about once a second in a
background thread and keeps a short history; windowed busy share and rates come from the deltas of
each worker's lifetime counters (``busy_seconds``, ``tasks``, ``samples``) between polls, measured
against the worker's own clock (its ``uptime``), so a slow probe does not distort them.
``DashboardRun`` is what a pool or ``estimate_pi`` reports to: progress, the task stream and π.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import math
import re
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

TOKEN_LABEL = b"pyro-compute dashboard token v1"
REPORT_LABEL = b"pyro-compute dashboard reports v1"

Row = dict[str, Any]
Snapshot = tuple[float, dict[str, Row]]  # (poll time, reachable rows by worker name)


def dashboard_token(secret: bytes) -> str:
    """The access token for ``secret``: an HMAC of a fixed label, so it reveals nothing of it."""
    return hmac.new(secret, TOKEN_LABEL, hashlib.sha256).hexdigest()[:32]


def report_token(secret: bytes | None) -> str:
    """The token a pool's reports carry (header ``X-Pyro-Compute-Token``); derived like the page's."""
    return hmac.new(secret or b"", REPORT_LABEL, hashlib.sha256).hexdigest()[:32]


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
        self._thread = threading.Thread(target=self._loop, name="pool-dashboard-poll", daemon=True)

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
    dispatcher threads. Times are ``time.time()`` seconds. Two kinds of progress are kept apart:
    the caller's own measure (``progress(done, total)``, e.g. samples of π) and the pool's task
    counts (``progress(done, queued=..., running=...)``), so neither overwrites the other.

    Args:
        title: what the page calls this run, e.g. ``"pi, 4e9 samples, seed 7"``.
    """

    def __init__(self, title: str = "run") -> None:
        self.title = title
        self._lock = threading.Lock()
        self._started = self._updated = time.time()
        self._progress: Row | None = None  # the caller's measure: done of total (None: open-ended)
        self._counts: Row | None = None  # the pool's tasks: done, queued, running
        self._tasks: Deque[Row] = collections.deque(maxlen=TASK_EVENTS)
        self._task_count = 0
        self._pi: Deque[Row] = collections.deque(maxlen=PI_POINTS)
        self._finished: float | None = None
        self._dropped = 0  # events a reporting client could not deliver

    def progress(self, done: int, total: int | None = None, *, queued: int | None = None,
                 running: int | None = None) -> None:
        """Report ``done`` of ``total`` (None: unknown); with queued/running, the pool's task counts."""
        with self._lock:
            self._updated = time.time()
            if queued is None and running is None:
                self._progress = {"done": int(done), "total": None if total is None else int(total)}
            else:
                self._counts = {"done": int(done), "queued": queued, "running": running}

    def task(self, worker: str, start: float, end: float, label: str = "") -> None:
        """Report one finished task for the task stream: which worker ran it, from when to when."""
        with self._lock:
            self._updated = time.time()
            self._tasks.append({"worker": str(worker), "start": float(start), "end": float(end),
                                "label": str(label)})
            self._task_count += 1

    def pi(self, estimate: float, low: float, high: float, samples: int) -> None:
        """Report the π estimate so far with its 95 % interval [low, high] after ``samples`` points."""
        with self._lock:
            self._updated = time.time()
            self._pi.append({"estimate": float(estimate), "low": float(low), "high": float(high),
                             "samples": int(samples), "t": self._updated})

    def finish(self) -> None:
        """Mark the run as finished; the page stops calling it running."""
        with self._lock:
            self._finished = self._updated = time.time()

    def dropped(self, count: int) -> None:
        """Record that a reporting client has dropped ``count`` events in all (it reports its total)."""
        with self._lock:
            self._dropped = max(self._dropped, int(count))

    def times(self) -> tuple[float, float, float | None]:
        """When the run started, when it last reported anything, and when it finished (or None)."""
        with self._lock:
            return self._started, self._updated, self._finished

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """What ``/api/run`` serves; task events that ended before ``since`` are left out."""
        with self._lock:
            tasks = [t for t in self._tasks if since is None or t["end"] >= since]
            return {"title": self.title, "started": self._started, "finished": self._finished,
                    "updated": self._updated, "progress": _copy(self._progress),
                    "counts": _copy(self._counts), "task_count": self._task_count,
                    "tasks": tasks, "pi": list(self._pi), "dropped": self._dropped}


def _copy(row: Row | None) -> Row | None:
    return None if row is None else dict(row)


# -- runs reported over HTTP by pools in other processes -------------------------------------------

MAX_RUNS = 20          # runs a standalone dashboard keeps (finished ones go first)
MAX_EVENTS = 5000      # events one report may carry
RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
TEXT = 200             # characters kept of a reported string


def _num(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer or null, not {value!r}")
    return value


def _text(value: Any) -> str:
    return str(value)[:TEXT] if isinstance(value, (str, int, float)) else ""


def parse_event(event: Any) -> Callable[[DashboardRun], None]:
    """Check one reported event (a JSON list such as ``["task", worker, start, end, label]``);
    return what replays it on a run.

    Raises:
        ValueError: the event is not one of task, progress, pi, finish with valid fields.
    """
    if not isinstance(event, list) or not event:
        raise ValueError(f"an event must be a non-empty JSON list, not {event!r:.80}")
    kind, fields = event[0], event[1:]
    if kind == "task" and len(fields) == 4:
        worker, start, end, label = (_text(fields[0]), _num(fields[1], "start"), _num(fields[2], "end"),
                                     _text(fields[3]))
        return lambda run: run.task(worker, start, end, label)
    if kind == "progress" and len(fields) == 4:
        done, total, queued, running = (_count(v, k) for v, k in zip(
            fields, ("done", "total", "queued", "running")))
        return lambda run: run.progress(done or 0, total, queued=queued, running=running)
    if kind == "pi" and len(fields) == 4:
        estimate, low, high = (_num(v, k) for v, k in zip(fields, ("estimate", "low", "high")))
        samples = _count(fields[3], "samples") or 0
        return lambda run: run.pi(estimate, low, high, samples)
    if kind == "finish" and not fields:
        return DashboardRun.finish
    raise ValueError(f"unknown event {event!r:.80}; expected task, progress, pi or finish")


class RunBoard:
    """The runs a dashboard shows: its own run, if any, and those other processes report to it.

    Args:
        own: the run of the process serving the page (``--dashboard``, ``Pool(dashboard=True)``).
        limit: most reported runs kept; finished ones are forgotten first, then the quietest.
    """

    def __init__(self, own: DashboardRun | None = None, limit: int = MAX_RUNS) -> None:
        self.own, self.limit = own, limit
        self._lock = threading.Lock()
        self._runs: dict[str, DashboardRun] = {}

    def apply(self, report: Any) -> int:
        """Replay one report (``{"run", "title", "events", "dropped"}``); return how many events it held.

        Raises:
            ValueError: the report is malformed; nothing of it is applied.
        """
        if not isinstance(report, dict) or not isinstance(report.get("run"), str) \
                or not RUN_ID.fullmatch(report["run"]):
            raise ValueError("a report must be a JSON object with a 'run' id of 1-64 letters, digits, - or _")
        events = report.get("events", [])
        if not isinstance(events, list) or len(events) > MAX_EVENTS:
            raise ValueError(f"'events' must be a list of at most {MAX_EVENTS} events")
        replays = [parse_event(event) for event in events]
        dropped = _count(report.get("dropped", 0), "dropped")
        run = self._run(report["run"], _text(report.get("title", "run")))
        for replay in replays:
            replay(run)
        run.dropped(dropped or 0)
        return len(events)

    def _run(self, key: str, title: str) -> DashboardRun:
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                while len(self._runs) >= self.limit:
                    del self._runs[min(self._runs, key=lambda k: _staleness(self._runs[k]))]
                run = self._runs[key] = DashboardRun(title or "run")
            return run

    def snapshots(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every run's snapshot, the own run first, then reported ones by start time."""
        with self._lock:
            reported = sorted(self._runs.items(), key=lambda kv: kv[1].times()[0])
        own = [] if self.own is None else [{"id": "own", **self.own.snapshot(since)}]
        return own + [{"id": key, **run.snapshot(since)} for key, run in reported]


def _staleness(run: DashboardRun) -> tuple[bool, float]:
    """Sort key of the run to forget first: finished before running, then the longest silent."""
    _, updated, finished = run.times()
    return finished is None, updated
