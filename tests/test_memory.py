"""Bounded memory on endless input, seen from outside: how far ahead the input is read, what stays alive.

The pool promises that ``map`` over an endless generator runs in bounded memory: it reads the
input at most a window of chunks ahead of the consumer (``Feeder``'s in-flight limit; today
``max(8, CHUNKS_PER_SLOT * SLOTS * workers)`` = 16 chunks on the two-worker session cluster) and
forgets a chunk once its results were handed out. These tests watch only the public behaviour (a
generator that counts what it handed out, weak references to the inputs, the process's RSS), so
a rewrite of the feeder keeps them green unless it drops the bound. The long soak stays in
``benchmarks/soak.py``.
"""
from __future__ import annotations

import gc
import itertools
import operator
import time
import weakref
from typing import Iterator

import numpy as np
import psutil
import pytest

from pyro_compute import Pool, tasks
from pyro_compute.cluster import LocalCluster

T = 60
# Chunks the input may be read ahead of the consumer: the stated window (16 chunks here) with
# 4x headroom for a feeder that also holds the chunk it is building. Removing the bound reads
# thousands of items ahead within the pauses below.
WINDOW_CHUNKS = 64
MIB = 1 << 20


class Counted:
    """An endless input that counts how many items it has handed out."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled += 1
            yield i


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=cluster) as p:
        yield p


def ahead_while_pausing(pool: Pool, method: str, chunksize: int, pauses: int = 4, between: int = 60,
                        pause: float = 0.4) -> list[int]:
    """Consume a map over an endless input with pauses; how far ahead the input was after each."""
    source = Counted()
    results = getattr(pool, method)(operator.neg, source, chunksize=chunksize, timeout=T)
    consumed, ahead = 0, []
    try:
        for _ in range(pauses):
            for _ in range(between):
                value = next(results)
                assert value == -consumed if method == "map" else value <= 0
                consumed += 1
            time.sleep(pause)  # a feeder without a bound keeps reading while the consumer sleeps
            ahead.append(source.pulled - consumed)
    finally:
        results.close()
    return ahead


@pytest.mark.parametrize("method,chunksize", [("map", 1), ("map", 5), ("map_as_completed", 1)])
def test_map_reads_an_endless_generator_at_most_a_window_ahead(pool: Pool, method: str, chunksize: int) -> None:
    ahead = ahead_while_pausing(pool, method, chunksize)
    assert max(ahead) <= WINDOW_CHUNKS * chunksize, f"input read ahead of the consumer by {ahead}"


@pytest.mark.parametrize("method", ["map", "map_as_completed"])
def test_inputs_are_dropped_once_their_results_were_consumed(pool: Pool, method: str) -> None:
    """Weak references to the inputs: only the window's worth may be alive after consuming many."""
    refs: list[weakref.ref[np.ndarray]] = []

    def arrays() -> Iterator[np.ndarray]:
        for i in itertools.count():
            a = np.full(64, i, dtype=np.int64)
            refs.append(weakref.ref(a))
            yield a

    results = getattr(pool, method)(len, arrays(), chunksize=1, timeout=T)
    try:
        assert list(itertools.islice(results, 600)) == [64] * 600
        gc.collect()
        alive = sum(r() is not None for r in refs)
    finally:
        results.close()
    assert alive <= WINDOW_CHUNKS, f"{alive} of {len(refs)} inputs still alive after 600 results"


def test_short_soak_of_200k_tiny_tasks_stays_within_an_rss_bound(pool: Pool) -> None:
    """200k increments over a generator; every result checked; RSS grows by less than 40 MiB."""
    n = 200_000
    list(pool.map(tasks.increment, range(20_000), timeout=T))  # warm-up: chunk sizes, buffers
    gc.collect()
    base = psutil.Process().memory_info().rss
    peak = base
    results = pool.map(tasks.increment, (i for i in range(n)), timeout=T)
    for i, value in enumerate(results):
        assert value == i + 1
        if i % 10_000 == 0:
            peak = max(peak, psutil.Process().memory_info().rss)
    assert i == n - 1
    growth = (max(peak, psutil.Process().memory_info().rss) - base) / MIB
    assert growth < 40, f"client RSS grew by {growth:.1f} MiB over {n:,} tasks"
