"""The worker's side of broadcasts: values kept by key until their pool releases them.

``binary`` calls in here while it decodes a request: a value that arrives is kept, a key alone
is looked up. A key whose value is still arriving on another connection (two calls to a new
worker at once) is waited for.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import binary
from .errors import KernelError

WAIT = 300.0  # seconds a task waits for a value still arriving on another connection
GRACE = 5.0  # seconds it waits for a value announced nowhere yet (sent, but not read yet)
_cond = threading.Condition()
_values: dict[str, Any] = {}
_arriving: dict[str, int] = {}
_received = 0  # values that arrived since start (a worker should get each one once)


def install() -> None:
    """Let this process keep broadcast values (a worker's Evaluator calls this)."""
    binary.handle_hook = resolve
    binary.expect_hook = expect


def expect(keys: list[str], arriving: bool) -> None:
    """Mark ``keys`` as arriving (True) or no longer arriving (False) in a message being decoded."""
    with _cond:
        for key in keys:
            count = _arriving.get(key, 0) + (1 if arriving else -1)
            if count > 0:
                _arriving[key] = count
            else:
                _arriving.pop(key, None)
        _cond.notify_all()


def resolve(key: str, value: Any) -> Any:
    """Keep ``value`` under ``key``, or (``binary.NO_VALUE``) return the value kept under it.

    Raises:
        KernelError: no value is kept under ``key`` (it was released).
    """
    with _cond:
        if value is not binary.NO_VALUE:
            global _received
            _received += 1
            _values[key] = value
            _cond.notify_all()
            return value
        # Its value may be on its way on another connection whose request is not read yet.
        _cond.wait_for(lambda: key in _values or key in _arriving, GRACE)
        _cond.wait_for(lambda: key in _values or key not in _arriving, WAIT)
        if key in _values:
            return _values[key]
    raise KernelError(f"broadcast {key} is not held by this worker: it was released (handle.release(), "
                      "the end of its with block or the pool's shutdown); broadcast the value again")


def drop(keys: list[str]) -> int:
    """Forget the values of ``keys``; return how many were held."""
    with _cond:
        return sum(_values.pop(key, _values) is not _values for key in keys)


def held() -> dict[str, int]:
    """How many values are kept, their size in bytes (arrays and bytes counted), how many arrived in all."""
    with _cond:
        values, received = list(_values.values()), _received
    return {"broadcasts": len(values), "bytes": sum(_size(v) for v in values), "received": received}


def _size(value: Any, depth: int = 0) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)) and depth < 4:
        return sum(_size(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 4:
        return sum(_size(v, depth + 1) for v in value.values())
    return 0
