"""Single-core throughput of the π kernel next to plain Numba loops, in G samples/s."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import numba
import numpy as np
from llvmlite import binding
from numba import int64, njit, uint64

from pyro_compute.kernels import LANES, pi_hits

_RADIUS_SQ = 1 << 62  # the kernel's unit circle on a 2**31 grid


@njit(nogil=True)
def numpy_random_hits(samples: int, seed: int) -> int:
    """Count quarter-circle hits with two np.random.random() draws per sample."""
    np.random.seed(seed)
    hits = 0
    for _ in range(samples):
        x = np.random.random()
        y = np.random.random()
        if x * x + y * y < 1.0:
            hits += 1
    return hits


@njit(inline="always")
def _splitmix64(state: np.uint64) -> tuple[np.uint64, np.uint64]:
    """Advance a splitmix64 state; return the new state and its output."""
    state = state + uint64(0x9E3779B97F4A7C15)
    z = (state ^ (state >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return state, z ^ (z >> uint64(31))


@njit(nogil=True)
def xoroshiro_hits(samples: int, seed: int) -> int:
    """Count hits with one xoroshiro128+ stream and the kernel's integer hit test."""
    state, s0 = _splitmix64(uint64(seed))
    state, s1 = _splitmix64(state)
    hits = 0
    for _ in range(samples):
        r = s0 + s1
        s1 ^= s0
        s0 = ((s0 << uint64(24)) | (s0 >> uint64(40))) ^ s1 ^ (s1 << uint64(16))
        s1 = (s1 << uint64(37)) | (s1 >> uint64(27))
        x = int64(r >> uint64(33))
        y = int64((r >> uint64(2)) & uint64(0x7FFFFFFF))
        if x * x + y * y < _RADIUS_SQ:
            hits += 1
    return hits


def measure(fn: Callable[[int, Any], int], samples: int, seed: Any, repeat: int) -> tuple[float, int]:
    """Median seconds of ``repeat`` calls after one warm-up call, and the last call's hits."""
    fn(1000, seed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        hits = fn(samples, seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times), hits


def main(argv: list[str] | None = None) -> int:
    """Time each loop on this core and print a table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per loop (median taken)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    # The Evaluator calls pi_hits with np.uint64 seeds; time that compiled signature.
    loops = [(f"pyro_compute pi_hits ({LANES} lanes)", pi_hits, 2 * 10**8, np.uint64(7)),
             ("np.random.random() x2", numpy_random_hits, 2 * 10**7, 7),
             ("xoroshiro128+ single stream", xoroshiro_hits, 2 * 10**8, 7)]
    print(f"CPU {binding.get_host_cpu_name()}, numba {numba.__version__}, numpy {np.__version__}, "
          f"median of {args.repeat}")
    print(f"{'loop':<32} {'samples':>11} {'median s':>9} {'G samples/s':>12} {'pi':>9}")
    rates = []
    for label, fn, samples, seed in loops:
        seconds, hits = measure(fn, samples, seed, args.repeat)
        rates.append(samples / seconds / 1e9)
        print(f"{label:<32} {samples:>11.0e} {seconds:>9.3f} {rates[-1]:>12.3f} {4 * hits / samples:>9.5f}")
    print(f"kernel / np.random: {rates[0] / rates[1]:.1f}x   "
          f"kernel / single stream: {rates[0] / rates[2]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
