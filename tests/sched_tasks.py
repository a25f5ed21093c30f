"""Functions the executor-contract tests run on workers (started with ``--allow-module sched_tasks``).

They stand in for the callables CPython's ``test_concurrent_futures`` submits (``time.sleep``,
``mul``, ``capture``, ...), which a remote worker may not import from the stdlib.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


def mul(x: Any, y: Any) -> Any:
    """Return ``x * y``."""
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return ``(args, kwargs)`` as the worker received them."""
    return args, kwargs


def sleep(seconds: float) -> None:
    """``time.sleep`` on the worker."""
    time.sleep(seconds)


def sleep_and_raise(seconds: float) -> None:
    """Sleep, then raise ``Exception('this is an exception')``."""
    time.sleep(seconds)
    raise Exception("this is an exception")


def sleep_and_print(seconds: float, msg: str) -> str:
    """Sleep, print ``msg`` on the worker, and return it so the caller can print it too."""
    time.sleep(seconds)
    print(msg)
    sys.stdout.flush()
    return msg


def make_dummy_object(_: Any) -> np.ndarray:
    """A fresh object the caller can hold a weak reference to (an array: plain data cannot)."""
    return np.zeros(4)
