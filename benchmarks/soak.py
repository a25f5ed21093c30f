"""Soak test (not run in CI): millions of tiny tasks through ``Pool.map``, watching the client's RSS.

Run: ``python -m benchmarks.soak [--tasks N] [--generator-items N] [--every N]``. Phase one maps
over a ``range`` of ``--tasks`` items, phase two over a generator of ``--generator-items`` items
(read lazily, never materialised). Every result is checked; the client's resident set size is
printed every ``--every`` results and at the end of each phase, as growth over the RSS measured
after warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Iterable, Iterator

import psutil

from pyro_compute import LocalCluster, Pool, tasks

MIB = 1 << 20


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    return float(psutil.Process().memory_info().rss) / MIB


def checked(results: Iterable[int], start: float) -> Iterator[int]:
    """Pass results through, failing on the first that is not ``i + 1`` for input ``i``."""
    for i, value in enumerate(results):
        if value != i + 1:
            raise RuntimeError(f"result {i} is {value!r}, expected {i + 1}; the pool lost or "
                               f"reordered a task {time.perf_counter() - start:.1f} s into the phase")
        yield value


def soak(pool: Pool, label: str, items: Iterable[int], total: int, every: int, base: float) -> None:
    """Map ``increment`` over ``items``, printing progress, throughput and RSS growth."""
    start = last = time.perf_counter()
    done = 0
    for done, _ in enumerate(checked(pool.map(tasks.increment, items), start), 1):
        if done % every == 0 and done < total:
            now = time.perf_counter()
            print(f"{label:>9} {done:>12,} {every / (now - last):>14,.0f} {rss_mib() - base:>+15.1f}",
                  flush=True)
            last = now
    elapsed = time.perf_counter() - start
    if done != total:
        raise RuntimeError(f"{label}: got {done:,} results for {total:,} tasks")
    print(f"{label:>9} {done:>12,} {done / elapsed:>14,.0f} {rss_mib() - base:>+15.1f}  "
          f"done in {elapsed:.1f} s", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``--tasks``, ``--generator-items``, ``--every``, ``--workers``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks mapped over a range")
    parser.add_argument("--generator-items", type=int, default=10**8, help="items of the generator phase")
    parser.add_argument("--every", type=int, default=0, help="report every N results (default: a tenth)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.generator_items < 1 or args.every < 0:
        parser.error("--tasks and --generator-items must be positive, --every not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start a cluster, run both phases, print progress; return the exit status."""
    args = parse_args(argv)
    with LocalCluster(args.workers) as cluster, Pool(cluster=cluster) as pool:
        list(pool.map(tasks.increment, range(10_000)))  # warm-up: imports, threads, chunk sizes
        base = rss_mib()
        print(f"client RSS after warm-up: {base:.1f} MiB; {args.workers} workers")
        print(f"{'phase':>9} {'results':>12} {'tasks/s':>14} {'RSS growth MiB':>15}")
        phases = [("range", range(args.tasks), args.tasks),
                  ("generator", (i for i in range(args.generator_items)), args.generator_items)]
        for label, items, total in phases:
            soak(pool, label, items, total, args.every or max(1, total // 10), base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
