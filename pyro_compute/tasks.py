"""Small built-in tasks every worker may call by reference; handy for smoke tests and benchmarks."""
from __future__ import annotations

import time


def noop() -> None:
    """Do nothing; measures pure round-trip overhead."""


def increment(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


def sleep_sum(seconds: float, values: list[float]) -> float:
    """Sleep ``seconds``, then return ``sum(values)``; stands in for I/O-bound work."""
    time.sleep(seconds)
    return sum(values)
