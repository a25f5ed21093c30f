"""Worker-importable tasks of the array benchmarks (B8, B9); allowed as ``benchmarks.array_tasks``."""
from __future__ import annotations

from typing import Any

import numpy as np


def identity(x: Any) -> Any:
    """Return ``x`` unchanged: a round trip of its data."""
    return x


def pick(a: np.ndarray, i: int) -> float:
    """One element of a shared array: a task whose cost is its input, not its work."""
    return float(a[(i * 7919) % a.size])
