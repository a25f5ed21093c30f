"""Benchmark plumbing: side-by-side medians, result rows with targets, and the printed table."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
Case = Callable[[], Sequence[float]]


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one ``fn()`` call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(fn: Callable[[], object]) -> Case:
    """A case whose one measurement is the wall-clock seconds of ``fn()``."""
    return lambda: (seconds(fn),)


def side_by_side(cases: Mapping[str, Case], repeat: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run every case once per repetition, in rotating order; return each one's elementwise medians.

    A case returns one or more measurements (seconds, percentiles, MiB ...). Interleaving the
    cases spreads a noisy neighbour's load over all of them instead of one; one untimed run of
    each comes first when ``warmup`` (JIT compiles, imports on the workers, chunk-size learning).
    """
    names = list(cases)
    if warmup:
        for name in names:
            cases[name]()
    runs: dict[str, list[Sequence[float]]] = {name: [] for name in names}
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            runs[name].append(cases[name]())
    return {name: [statistics.median(col) for col in zip(*samples)] for name, samples in runs.items()}


def interleaved_latency(setup: Callable[[], contextlib.AbstractContextManager[Mapping[str, Callable[[], object]]]],
                        count: int, repeat: int) -> dict[str, list[float]]:
    """p50 and p99 (µs) of each call ``setup()`` yields, timed call by call in rotating order; medians over ``repeat`` runs.

    Every call of one kind sits between calls of the others, so the machine's drift (another
    tenant, a migrated thread, a frequency change) reaches all kinds alike instead of one run
    of 2,000 calls of one kind. Each run makes its calls anew with ``setup`` (new connections,
    so new server threads, wherever the kernel places them this time) and warms them with
    ``count // 10`` untimed calls of each kind.
    """
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        with setup() as calls:
            names = list(calls)
            fns = [calls[name] for name in names]
            for _ in range(max(1, count // 10)):
                for fn in fns:
                    fn()
            samples = _interleaved(fns, count)
        for name, latencies in zip(names, samples):
            runs.setdefault(name, []).append(percentiles_us(latencies))
    return {name: [statistics.median(col) for col in zip(*r)] for name, r in runs.items()}


def _interleaved(fns: Sequence[Callable[[], object]], count: int) -> list[list[float]]:
    """Seconds of ``count`` calls of each of ``fns``, taking turns in rotating order."""
    clock = time.perf_counter
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(count):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            start = clock()
            fns[k]()
            samples[k].append(clock() - start)
    return samples


def percentiles_us(latencies: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of ``latencies`` (seconds), in microseconds."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1e6, cuts[98] * 1e6


def _machine_busy_seconds() -> float:
    """CPU seconds every core has spent busy since boot."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def _own_busy_seconds() -> float:
    """CPU seconds of this process and its descendants, live or already reaped."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may exit between listing and asking
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


class OtherLoad:
    """Context manager measuring how many cores other processes kept busy while it was open.

    On a shared machine this says how far to trust the figures measured inside it.
    """

    def __enter__(self) -> OtherLoad:
        self.cores = 0.0
        self._start = (time.perf_counter(), _machine_busy_seconds(), _own_busy_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = self._start
        others = (_machine_busy_seconds() - busy) - (_own_busy_seconds() - own)
        self.cores = max(0.0, others) / max(time.perf_counter() - wall, 1e-9)


def worker_env() -> dict[str, str]:
    """Extra environment for cluster children so they can import ``benchmarks.workloads``."""
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"PYTHONPATH": path}


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal on a row's value (``on="value"``) or on its ratio to the baseline."""

    op: str  # "<=" or ">="
    limit: float
    on: str = "value"

    def met(self, row: Row) -> bool:
        """Whether ``row`` reaches this target."""
        actual = row.value if self.on == "value" else row.ratio
        if actual is None:
            return False
        return actual <= self.limit if self.op == "<=" else actual >= self.limit

    def describe(self, unit: str) -> str:
        """Human-readable form, e.g. ``≤ 1.05× baseline`` or ``≥ 1.5 G samples/s``."""
        sign = "≤" if self.op == "<=" else "≥"
        if self.on == "ratio":
            return f"{sign} {self.limit:g}× baseline"
        return f"{sign} {number(self.limit)} {unit}"


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured metric of one benchmark, optionally beside a baseline and against targets."""

    bench: str
    metric: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    targets: tuple[Target, ...] = ()

    @property
    def ratio(self) -> float | None:
        """``value / baseline_value`` (None without a baseline)."""
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value

    def status(self) -> str:
        """``met``, ``missed`` (naming the missed targets when there are several) or empty."""
        missed = [t for t in self.targets if not t.met(self)]
        if not self.targets:
            return ""
        if not missed:
            return "met"
        if len(self.targets) == 1:
            return "**missed**"
        return "**missed** " + ", ".join(t.describe(self.unit) for t in missed)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"bench": self.bench, "metric": self.metric, "value": self.value, "unit": self.unit,
                "baseline": self.baseline or None, "baseline_value": self.baseline_value,
                "ratio": self.ratio, "targets": [t.describe(self.unit) for t in self.targets],
                "met": all(t.met(self) for t in self.targets) if self.targets else None}


@dataclasses.dataclass
class Report:
    """What one benchmark produced: rows plus notes on how it was measured or what was skipped."""

    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: Report) -> None:
        """Append another report's rows and notes."""
        self.rows += other.rows
        self.notes += other.notes


def number(x: float) -> str:
    """Three significant digits, with thousands separators for large values."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def table(rows: Iterable[Row]) -> str:
    """A Markdown table of ``rows`` (readable as plain text too)."""
    header = ["bench", "metric", "pyro_compute", "baseline", "baseline value", "ratio", "target", "status"]
    lines = [header]
    for r in rows:
        base = "" if r.baseline_value is None else f"{number(r.baseline_value)} {r.unit}"
        ratio = "" if r.ratio is None else f"{r.ratio:.3g}×"
        lines.append([r.bench, r.metric, f"{number(r.value)} {r.unit}", r.baseline, base, ratio,
                      "; ".join(t.describe(r.unit) for t in r.targets), r.status()])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ["-" * w for w in widths])
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines)


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table (or JSON)."""
    print(message, file=sys.stderr, flush=True)
