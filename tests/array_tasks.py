"""Task functions for the array and broadcast tests (allowed on their clusters by module name)."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np


def identity(x: Any) -> Any:
    """Return ``x`` unchanged."""
    return x


def describe(a: np.ndarray) -> list[Any]:
    """What the worker received: dtype, shape, memory order, writability and a digest of the bytes."""
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    return [a.dtype.str, list(a.shape), order, bool(a.flags.writeable),
            hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()]


def make(nbytes: int, seed: int = 0) -> np.ndarray:
    """A float64 array of ``nbytes`` bytes (a big result of a task with a plain argument)."""
    return np.random.default_rng(seed).random(nbytes // 8)


def object_array(n: int) -> np.ndarray:
    """An object-dtype array, which the wire refuses to send back."""
    return np.array([None] * n, dtype=object)


def scaled_sum(a: np.ndarray, factor: float, seconds: float = 0.0) -> float:
    """``a.sum() * factor`` after sleeping ``seconds`` (a task taking a broadcast array)."""
    time.sleep(seconds)
    return float(a.sum()) * factor


def pid_and_sum(a: np.ndarray, seconds: float = 0.0) -> list[Any]:
    """The worker's pid and ``a.sum()``, after sleeping ``seconds``."""
    time.sleep(seconds)
    return [os.getpid(), float(a.sum())]


def type_and_bytes(x: Any) -> list[Any]:
    """The type name of ``x`` and its bytes."""
    return [type(x).__name__, bytes(x)]
