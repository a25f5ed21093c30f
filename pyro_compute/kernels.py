"""Numba Monte Carlo kernels: pure, deterministic functions of their arguments and seed.

The generator is xoroshiro128+ run as ``LANES`` interleaved independent streams so LLVM
vectorises the loop; every lane is seeded from the task seed with splitmix64. The π hit test
is exact integer arithmetic, so results are bit-identical on every x86-64 machine.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar, Union

import numpy as np

if TYPE_CHECKING:
    from numba import int64, uint64

LANES = 32
INTEGRANDS = ("gaussian", "ball", "sin_product", "sum_squares")
_COORD_BITS = 31
_RADIUS_SQ = 1 << (2 * _COORD_BITS)  # the unit circle on a 2**31 grid
_DOUBLE_UNIT = 1.0 / (1 << 53)
U64 = np.uint64
Seed = Union[int, np.uint64]
F = TypeVar("F", bound=Callable[..., Any])
# Numba costs a process 0.3 CPU-s and ~60 MiB to import and load the cached kernels, so it is
# imported on the first kernel call (or warm_up), not with this module: a worker that only runs
# tasks never loads it. Until then each kernel below is a _Pending placeholder.
_PENDING: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
_LOADING = threading.RLock()
_WARM = False  # set once warm_up has loaded every kernel


class _Pending:
    """A kernel before Numba is loaded: the first call (or attribute lookup) loads every kernel."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.py_func = func

    def __call__(self, *args: Any) -> Any:
        return _jitted(self.__name__)(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(_jitted(self.__name__), name)


def njit(**options: Any) -> Callable[[F], F]:
    """``numba.njit(**options)``, applied when the first kernel runs rather than at import."""
    def pending(func: F) -> F:
        _PENDING[func.__name__] = (func, options)
        return _Pending(func)  # type: ignore[return-value]  # calls through to the dispatcher
    return pending


def _jitted(name: str) -> Any:
    """The Numba dispatcher of kernel ``name``, loading and warming every kernel the first time."""
    if not _WARM:
        warm_up()  # a second caller meanwhile waits for the first one's warm-up
    return globals()[name]


def load() -> None:
    """Import Numba and turn every kernel into its dispatcher (once; thread-safe).

    All at once: a kernel's compiler resolves the kernels it calls from this module's globals.
    """
    with _LOADING:
        if not _PENDING:
            return
        numba = importlib.import_module("numba")
        globals().update(int64=numba.int64, uint64=numba.uint64)
        for name, (func, options) in _PENDING.items():
            globals()[name] = numba.njit(**options)(func)
        _PENDING.clear()


def loaded() -> bool:
    """Whether Numba and the kernels are loaded in this process."""
    return not _PENDING


@njit(inline="always")
def _rotl(x: U64, k: int) -> U64:
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(inline="always")
def _splitmix64(state: U64) -> tuple[U64, U64]:
    state = state + uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return state, z ^ (z >> uint64(31))


@njit(nogil=True, cache=True)
def _seed_lanes(seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    s0 = np.empty(LANES, np.uint64)
    s1 = np.empty(LANES, np.uint64)
    # Hash the seed before walking the splitmix64 sequence from it: seeds that differ by a
    # multiple of the sequence's increment would otherwise share most lane streams.
    _, state = _splitmix64(uint64(seed))
    for lane in range(LANES):
        state, s0[lane] = _splitmix64(state)
        state, s1[lane] = _splitmix64(state)
    return s0, s1


@njit(inline="always")
def _next(s0: np.ndarray, s1: np.ndarray, lane: int) -> U64:
    a = s0[lane]
    b = s1[lane]
    out: U64 = a + b
    b ^= a
    s0[lane] = _rotl(a, 24) ^ b ^ (b << uint64(16))
    s1[lane] = _rotl(b, 37)
    return out


@njit(inline="always")
def _is_hit(r: U64) -> bool:
    # Two disjoint 31-bit coordinates from one output; the two weakest low bits are dropped.
    x = int64(r >> uint64(33))
    y = int64((r >> uint64(2)) & uint64(0x7FFFFFFF))
    return bool((x * x + y * y) < int64(_RADIUS_SQ))


@njit(nogil=True, cache=True)
def pi_hits(samples: int, seed: Seed) -> int:
    """Count how many of ``samples`` uniform points in the unit square fall inside the quarter circle."""
    s0, s1 = _seed_lanes(seed)
    counts = np.zeros(LANES, np.int64)
    rounds = samples // LANES
    for _ in range(rounds):
        for lane in range(LANES):
            counts[lane] += _is_hit(_next(s0, s1, lane))
    hits = counts.sum()
    for lane in range(samples - rounds * LANES):
        hits += _is_hit(_next(s0, s1, lane))
    return int(hits)


@njit(inline="always")
def _integrand(code: int, x: np.ndarray) -> float:
    acc = 0.0
    if code == 0:
        for v in x:
            acc += v * v
        return math.exp(-acc)
    if code == 1:
        for v in x:
            acc += v * v
        return 1.0 if acc <= 1.0 else 0.0
    if code == 2:
        acc = 1.0
        for v in x:
            acc *= math.sin(v)
        return acc
    for v in x:
        acc += v * v
    return acc


@njit(nogil=True, cache=True)
def integrate(code: int, samples: int, seed: Seed,
              lower: np.ndarray, upper: np.ndarray) -> tuple[int, float, float]:
    """Sample ``volume * f(x)`` uniformly over the box; return ``(n, sum, sum_of_squares)``.

    ``code`` indexes ``INTEGRANDS``. The sums merge exactly across tasks (use ``math.fsum``).
    """
    dims = lower.shape[0]
    width = upper - lower
    volume = 1.0
    for d in range(dims):
        volume *= width[d]
    s0, s1 = _seed_lanes(seed)
    x = np.empty(dims)
    total = 0.0
    total_sq = 0.0
    for i in range(samples):
        lane = i % LANES
        for d in range(dims):
            u = float(_next(s0, s1, lane) >> uint64(11)) * _DOUBLE_UNIT
            x[d] = lower[d] + width[d] * u
        g = volume * _integrand(code, x)
        total += g
        total_sq += g * g
    return samples, total, total_sq


def warm_up() -> None:
    """Compile (or load from cache) every kernel so the first real call is fast."""
    # The Evaluator passes seeds as np.uint64; warming with an int seed would compile
    # (int64, int64) and leave the signature real calls use to the first caller.
    global _WARM
    with _LOADING:  # one thread at a time: _without_scipy edits sys.modules
        load()
        seed = np.uint64(1)
        with _without_scipy():
            pi_hits(LANES + 1, seed)
        box = np.zeros(1), np.ones(1)
        integrate(0, 2, seed, *box)
        _WARM = True


@contextlib.contextmanager
def _without_scipy() -> Iterator[None]:
    """Hide scipy.linalg from Numba's first compile, which imports it only to probe for BLAS.

    That probe costs a quarter of a second and ~10 MiB per worker, and no kernel here uses BLAS.
    Numba then takes np.correlate/np.convolve in njit code for a plain loop; np.dot and np.linalg
    still work in njit code, as they import scipy.linalg themselves when first compiled.
    """
    if "scipy.linalg" in sys.modules:
        yield
        return
    sys.modules["scipy.linalg"] = None  # type: ignore[assignment]  # "import scipy.linalg" raises ImportError
    try:
        yield
    finally:
        if "scipy.linalg" in sys.modules and sys.modules["scipy.linalg"] is None:
            del sys.modules["scipy.linalg"]
