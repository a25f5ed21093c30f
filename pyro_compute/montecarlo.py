"""Monte Carlo estimates built on a Pool: π by hit counting, with its standard error."""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Generator, Iterable, Iterator

from tqdm.auto import tqdm

from .pool import Pool

TASK_SAMPLES = 1 << 25  # ~20 ms of kernel work: fine-grained enough to balance, coarse enough to hide RMI


@dataclasses.dataclass(frozen=True)
class PiEstimate:
    """An estimate of π with what it took to get it."""

    pi: float
    stderr: float
    samples: int
    hits: int
    seed: int
    workers: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        """Samples per wall-clock second."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def pi_stderr(hits: int, samples: int) -> float:
    """Standard error of ``4 * hits / samples`` as a binomial estimate."""
    p = hits / samples
    return 4.0 * math.sqrt(p * (1.0 - p) / samples)


def task_sizes(samples: int | None) -> Iterator[int]:
    """Split ``samples`` into tasks of TASK_SAMPLES (the last one smaller); endless when None."""
    if samples is None:
        return itertools.repeat(TASK_SAMPLES)
    full, rest = divmod(samples, TASK_SAMPLES)
    return itertools.chain(itertools.repeat(TASK_SAMPLES, full), [rest] if rest else [])


def estimate_pi(pool: Pool, samples: int, seed: int, tol: float | None = None,
                progress: bool = False) -> PiEstimate:
    """Estimate π with ``samples`` points, or keep going past them until the standard error < ``tol``.

    The answer depends only on (samples, seed, tol): task ``i`` always gets the same size and
    seed, and results are consumed in task order, however many workers run them.

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
        return itertools.chain(task_sizes(samples), task_sizes(None))

    started = time.perf_counter()
    hits = done = 0
    bar = tqdm(total=samples, disable=not progress, unit="samples", unit_scale=True, dynamic_ncols=True)
    results: Generator[int, None, None] = pool.map("pi_hits", plan(), seed=seed)  # type: ignore[assignment]
    try:
        for h, n in zip(results, plan()):
            hits += h
            done += n
            bar.update(n)
            if done >= samples and (tol is None or pi_stderr(hits, done) < tol):
                break
    finally:
        results.close()
        bar.close()
    return PiEstimate(4.0 * hits / done, pi_stderr(hits, done), done, hits, seed,
                      len(pool.workers), time.perf_counter() - started)
