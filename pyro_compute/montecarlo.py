"""Monte Carlo estimates built on a Pool: π by hit counting, with an error honest at every sample size.

The error is one standard error's worth of the Wilson score interval for the hit rate p = π/4
(z = 1): unlike the plain binomial ``sqrt(p(1-p)/n)`` it is never zero, even when every sample
hit or none did, so no finite run passes a tolerance by luck of a tiny sample.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import TYPE_CHECKING, Generator, Iterable, Iterator

from tqdm.auto import tqdm

from .pool import Pool

if TYPE_CHECKING:
    from .dashboard_state import RunReporter

TASK_SAMPLES = 1 << 25  # ~20 ms of kernel work: fine-grained enough to balance, coarse enough to hide RMI
MIN_TASK_SAMPLES = 1 << 10
CHUNK_SAMPLES = 1 << 20  # at least ~1 ms of kernel work per RMI call
TASKS_PER_RUN = 64  # a run to tolerance takes 64-128 tasks, so it overshoots by < 1/64
Z = 1.0  # the error reported is one standard error's worth of the Wilson interval
_P_PLAN = math.pi / 4  # the hit rate, used only to plan task sizes
_MAX_PLANNED = float(1 << 62)


@dataclasses.dataclass(frozen=True)
class PiEstimate:
    """An estimate of π with what it took to get it.

    ``stderr`` is the largest distance from ``pi`` to an end of the Wilson score interval
    [``low``, ``high``] (z = 1), so ``pi ± stderr`` covers that interval.
    """

    pi: float
    stderr: float
    samples: int
    hits: int
    seed: int
    workers: int
    seconds: float
    low: float
    high: float

    @property
    def samples_per_second(self) -> float:
        """Samples per wall-clock second."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def pi_interval(hits: int, samples: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval for π = 4 * hit rate from ``hits`` of ``samples`` points."""
    n = samples
    p = hits / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return 4.0 * (centre - half), 4.0 * (centre + half)


def pi_error(hits: int, samples: int) -> float:
    """Error of ``4 * hits / samples``: its largest distance to an end of the Wilson interval; > 0."""
    low, high = pi_interval(hits, samples)
    pi = 4.0 * hits / samples
    return max(pi - low, high - pi)


def samples_needed(tol: float) -> int:
    """About how many samples bring the error of π below ``tol`` (planning figure, p = π/4)."""
    return int(min(_MAX_PLANNED, math.ceil(16.0 * _P_PLAN * (1.0 - _P_PLAN) / (tol * tol))))


def task_size(samples: int, tol: float) -> int:
    """Samples per task for a run to ``tol`` of at least ``samples``: a power of two from 1/128 to
    1/64 of the samples it will take (within [MIN_TASK_SAMPLES, TASK_SAMPLES]), so the run stops
    within 1/64 of what it needs; a function of (samples, tol) only."""
    share = max(samples, samples_needed(tol)) // TASKS_PER_RUN
    return min(TASK_SAMPLES, max(MIN_TASK_SAMPLES, 1 << max(0, share.bit_length() - 1)))


def task_sizes(samples: int | None) -> Iterator[int]:
    """Split ``samples`` into tasks of TASK_SAMPLES (the last one smaller); endless when None."""
    if samples is None:
        return itertools.repeat(TASK_SAMPLES)
    full, rest = divmod(samples, TASK_SAMPLES)
    return itertools.chain(itertools.repeat(TASK_SAMPLES, full), [rest] if rest else [])


def _report(reporter: RunReporter, hits: int, done: int, total: int | None) -> None:
    """Tell a run's dashboard the estimate so far, its 95 % Wilson interval and the progress."""
    low, high = pi_interval(hits, done, z=1.96)
    reporter.pi(4.0 * hits / done, low, high, done)
    reporter.progress(done, total)


def estimate_pi(pool: Pool, samples: int, seed: int, tol: float | None = None,
                progress: bool = False, reporter: RunReporter | None = None) -> PiEstimate:
    """Estimate π with ``samples`` points, or with at least ``samples`` and then until the error < ``tol``.

    The answer depends only on (samples, seed, tol): task ``i`` always gets the same size and
    seed, and results are consumed in task order, however many workers run them. With ``tol``
    every task has ``task_size(samples, tol)`` samples.

    Raises:
        ValueError: samples is not positive or tol is not positive.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be a positive number, not {tol}")
    def plan() -> Iterable[int]:
        # A list when the count is fixed: the pool then knows the length and shrinks the last chunks.
        if tol is None:
            return list(task_sizes(samples))
        return itertools.repeat(task_size(samples, tol))

    started = time.perf_counter()
    hits = done = 0
    bar = tqdm(total=samples, disable=not progress, unit="samples", unit_scale=True, dynamic_ncols=True)
    # An explicit chunk size: the pool's measured time per task is kept per kernel name, so tasks
    # of another size (an earlier call) would make it send chunks of far too much work.
    size = task_size(samples, tol) if tol is not None else TASK_SAMPLES
    chunksize = max(1, CHUNK_SAMPLES // size)
    results: Generator[int, None, None] = pool.map(  # type: ignore[assignment]
        "pi_hits", plan(), seed=seed, chunksize=chunksize)
    try:
        for h, n in zip(results, plan()):
            hits += h
            done += n
            bar.update(n)
            if reporter is not None:
                _report(reporter, hits, done, samples if tol is None else None)
            if done >= samples and (tol is None or pi_error(hits, done) < tol):
                break
    finally:
        results.close()
        bar.close()
    low, high = pi_interval(hits, done)
    return PiEstimate(4.0 * hits / done, pi_error(hits, done), done, hits, seed,
                      len(pool.workers), time.perf_counter() - started, low, high)
