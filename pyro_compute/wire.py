"""serpent hooks so numpy arrays, numpy scalars and our own errors cross the wire."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import serpent
from Pyro4.util import SerializerBase

from .errors import register_errors

_ARRAY = "numpy.ndarray"
_SCALAR = "numpy.generic"
_SAFE_KINDS = "biufc"  # bool, int, uint, float, complex: no object arrays, ever


def _array_to_dict(a: np.ndarray) -> dict[str, Any]:
    _check_dtype(a.dtype)
    return {"__class__": _ARRAY, "dtype": a.dtype.str, "shape": list(a.shape),
            "data": np.ascontiguousarray(a).tobytes()}


def _scalar_to_dict(x: np.generic) -> dict[str, Any]:
    _check_dtype(x.dtype)
    return {"__class__": _SCALAR, "dtype": x.dtype.str, "value": x.item()}


def _dict_to_array(_: str, d: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    _check_dtype(dtype)
    data = d["data"]
    raw = serpent.tobytes(data) if isinstance(data, dict) else data
    shape = tuple(int(n) for n in d["shape"])
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _dict_to_scalar(_: str, d: dict[str, Any]) -> np.generic:
    dtype = np.dtype(d["dtype"])
    _check_dtype(dtype)
    return dtype.type(d["value"])  # type: ignore[no-any-return]


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.kind not in _SAFE_KINDS:
        raise TypeError(f"numpy dtype {dtype} cannot cross the wire; use a bool, integer, "
                        "float or complex dtype")


@functools.cache
def register_wire() -> None:
    """Register the numpy and error hooks with Pyro4's serpent serializer (idempotent)."""
    SerializerBase.register_class_to_dict(np.ndarray, _array_to_dict)
    SerializerBase.register_class_to_dict(np.generic, _scalar_to_dict)
    SerializerBase.register_dict_to_class(_ARRAY, _dict_to_array)
    SerializerBase.register_dict_to_class(_SCALAR, _dict_to_scalar)
    register_errors()
