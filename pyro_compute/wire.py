"""What crosses the wire: serpent hooks for numpy values and our errors, plain-data checks, and the
registration of our binary serializer (``binary``), which pool calls to workers use."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import Pyro4.util
import serpent
from Pyro4.util import SerializerBase, SerpentSerializer

from .broadcast import Broadcast
from .errors import register_errors
from .serializers import harden

_PLAIN_SCALARS = frozenset({int, float, str, bool, type(None), complex})
_PLAIN_CONTAINERS = frozenset({list, tuple})
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
    return dtype.type(_number(d["value"]))  # type: ignore[no-any-return]


def _dict_to_complex(_: str, d: dict[str, Any]) -> complex:
    return complex(_number(d["real"]), _number(d["imag"]))


def _number(value: Any) -> Any:
    """Undo serpent's class dict for a float or complex with a NaN part (there is no literal for NaN).

    Pyro4 turns ``{"__class__": "float"}`` back into a float only where it is not inside another
    class dict, such as our numpy scalar's, and never turns ``{"__class__": "complex"}`` back.
    """
    if isinstance(value, dict):
        if value.get("__class__") == "float":
            return float(value["value"])
        if value.get("__class__") == "complex":
            return _dict_to_complex("complex", value)
    return value


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.kind not in _SAFE_KINDS:
        raise TypeError(f"numpy dtype {dtype} cannot cross the wire; use a bool, integer, "
                        "float or complex dtype")


def is_plain(obj: Any, depth: int = 8) -> bool:
    """True if ``obj`` holds only builtin scalars in lists, tuples and str-keyed dicts.

    Only such data may travel with marshal: it would silently turn a numpy scalar into bytes.
    """
    kind = type(obj)
    if kind in _PLAIN_SCALARS:
        return True
    if depth == 0:
        return False
    if kind in _PLAIN_CONTAINERS:
        return all(type(x) in _PLAIN_SCALARS or is_plain(x, depth - 1) for x in obj)
    if kind is dict:
        return all(type(k) is str and is_plain(v, depth - 1) for k, v in obj.items())
    return False


def plain_values(values: list[Any]) -> bool:
    """``is_plain`` for a list, fast when it holds only scalars."""
    return {type(x) for x in values} <= _PLAIN_SCALARS or is_plain(values)


def plain_rows(rows: list[tuple[Any, ...]]) -> bool:
    """``is_plain`` for a chunk's argument tuples, fast when they hold only scalars."""
    return {type(x) for row in rows for x in row} <= _PLAIN_SCALARS or is_plain(rows)


def foreign(obj: Any, depth: int = 8) -> bool:
    """True if ``obj`` holds an object the wire would refuse to rebuild (not plain data or numpy)."""
    kind = type(obj)
    if kind in _PLAIN_SCALARS or kind in (bytes, bytearray) or isinstance(obj, (np.ndarray, np.generic, Broadcast)):
        return False
    if kind in _PLAIN_CONTAINERS or kind in (set, frozenset):
        return depth == 0 or any(foreign(x, depth - 1) for x in obj)
    if kind is dict:
        return depth == 0 or any(foreign(k, depth - 1) or foreign(v, depth - 1) for k, v in obj.items())
    return True


def sent_bytes(data: Any, what: str) -> bytes:
    """Bytes as sent: serpent wraps them in a base64 dict, marshal and our serializer do not.

    Raises:
        TypeError: ``data`` is not bytes in either form; ``what`` names it.
    """
    if isinstance(data, dict):
        data = serpent.tobytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    return data


def to_serpent(obj: Any) -> bytes:
    """Serialize ``obj`` with Pyro4's serpent serializer and our hooks."""
    return SerpentSerializer().dumps(obj)  # type: ignore[no-any-return]


def from_serpent(data: bytes) -> Any:
    """Inverse of ``to_serpent``."""
    return SerpentSerializer().loads(data)


@functools.cache
def register_wire() -> None:
    """Register our serpent hooks and binary serializer, and harden Pyro4's serializers (idempotent).

    Every process of ours runs this (pools, status, workers, the name server launcher), so
    none of them decodes pickle-family data from the network; see ``serializers``.
    """
    SerializerBase.register_class_to_dict(np.ndarray, _array_to_dict)
    SerializerBase.register_class_to_dict(np.generic, _scalar_to_dict)
    SerializerBase.register_dict_to_class(_ARRAY, _dict_to_array)
    SerializerBase.register_dict_to_class(_SCALAR, _dict_to_scalar)
    SerializerBase.register_dict_to_class("complex", _dict_to_complex)
    register_errors()
    harden()
    from .binary import NAME, BinarySerializer  # binary imports this module's neighbours
    if NAME not in Pyro4.util._serializers:
        binary = BinarySerializer()
        Pyro4.util._serializers[NAME] = binary
        Pyro4.util._serializers_by_id[binary.serializer_id] = binary
