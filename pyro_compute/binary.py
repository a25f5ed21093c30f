"""Our Pyro4 serializer: marshal for the structure, numpy arrays as raw buffers beside it.

A message is ``marshal((MAGIC, flags, tree, sizes, nonce, carried))``. In ``tree``, numpy
arrays, numpy scalars, bytearrays and broadcast handles are markers: tuples that start with
``Ellipsis`` (which plain data never holds; it is refused in what is sent). An array's bytes
travel inside ``tree`` when small or when no ``bulk.Channel`` is open, else as bulk frames after
the message (``sizes`` and ``nonce`` announce them, see ``bulk``): only arrays may exceed the
message size limit. bytes travel raw inside the message, as marshal writes them (no base64). Decoding builds nothing but
plain data, numpy arrays of bool, integer, float and complex dtypes (checked against a strict
pattern before numpy parses them), exceptions through Pyro4's checked ``dict_to_class``, and
broadcast values the worker holds. No pickle, no code.
"""
from __future__ import annotations

import marshal
import re
from typing import Any, Callable

import numpy as np
import Pyro4.errors
from Pyro4.util import MarshalSerializer, SerializerBase

from . import bulk
from .broadcast import Broadcast
from .serializers import BoundedInflate, plain

NAME = "pyro_compute"
SERIALIZER_ID = bulk.SERIALIZER_ID
MAGIC = b"PCB\x01"
REBUILD = 1  # flags: the tree holds markers or class dicts
STREAM_MIN = 64 * 1024  # buffers smaller than this travel inside the message
_FLAT = frozenset({type(None), bool, int, float, complex, str})
_SIMPLE = _FLAT | {bytes}  # what marshal writes as it is
_NONE: list[Any] = []  # no sizes, no handles carried
_DTYPE = re.compile(r"[<>|=][biufc][0-9]{1,2}")
SAFE_KINDS = "biufc"
MAX_DIMS = 64

# Set in a worker by ``store.install``: (key, value or NO_VALUE) -> the broadcast value.
NO_VALUE: Any = object()
handle_hook: Callable[[str, Any], Any] | None = None
expect_hook: Callable[[list[str], bool], None] | None = None


def check_dtype(dtype: np.dtype[Any]) -> None:
    """Refuse dtypes other than plain bool, integer, float and complex ones.

    Raises:
        TypeError: object, structured, string, datetime and other dtypes.
    """
    if dtype.kind not in SAFE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"numpy dtype {dtype} cannot cross the wire: only bool, integer, float and "
                        "complex dtypes do; convert the array (e.g. to float64), or send its parts "
                        "as separate arrays")


class _Packer:
    """One message's encoding: the tree, the buffers that go as frames, the handles it delivers."""

    __slots__ = ("ch", "rebuild", "frames", "carried", "delivered", "arrays")

    def __init__(self, ch: bulk.Channel | None) -> None:
        self.ch = ch
        self.rebuild = False
        self.frames: list[memoryview] = []
        self.carried: list[str] = []
        self.delivered: list[Broadcast] = []
        self.arrays: dict[int, tuple[np.ndarray, tuple[Any, ...]]] = {}

    def pack(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _SIMPLE:
            return obj
        if kind is list:
            return obj if {type(x) for x in obj} <= _SIMPLE else [self.pack(x) for x in obj]
        if kind is tuple:
            return obj if {type(x) for x in obj} <= _SIMPLE else tuple(self.pack(x) for x in obj)
        if kind is dict:
            if {type(k) for k in obj} <= _SIMPLE and {type(v) for v in obj.values()} <= _SIMPLE:
                return obj
            return {self.pack(k): self.pack(v) for k, v in obj.items()}
        return self.pack_other(obj)

    def pack_other(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self.array(obj)
        if isinstance(obj, np.generic):
            check_dtype(obj.dtype)
            return self.marker("s", obj.dtype.str, obj.tobytes())
        if isinstance(obj, (bytes, bytearray)):  # raw inside the message, within its size limit
            return bytes(obj) if type(obj) is bytes else self.marker("B", bytes(obj))
        if isinstance(obj, (set, frozenset)):
            return type(obj)(self.pack(x) for x in obj) if type(obj) in (set, frozenset) else set(map(self.pack, obj))
        if isinstance(obj, tuple):  # a namedtuple arrives as a tuple
            return tuple(self.pack(x) for x in obj)
        if isinstance(obj, list):
            return [self.pack(x) for x in obj]
        if isinstance(obj, dict):  # an OrderedDict or defaultdict arrives as a dict
            return {self.pack(k): self.pack(v) for k, v in obj.items()}
        if isinstance(obj, Broadcast):
            return self.handle(obj)
        if obj is Ellipsis:
            raise TypeError("Ellipsis (...) cannot cross the wire; send None or a string instead")
        if not isinstance(obj, BaseException):  # Pyro4 would send an object's __dict__: a silent dict
            kind = type(obj)
            raise TypeError(f"an object of class {kind.__module__}.{kind.__qualname__} cannot cross the wire: "
                            "only plain data (numbers, strings, bytes, lists, tuples, dicts, sets) and numpy "
                            "arrays do; send its fields (a tuple or vars(obj)) and rebuild it in the task")
        self.rebuild = True
        return self.pack(MarshalSerializer.class_to_dict(obj))

    def finish(self, ok: bool) -> None:
        """Tell the handles this message carried whether it was sent."""
        peer = None if self.ch is None else self.ch.peer
        delivered, self.delivered = self.delivered, []
        if peer is not None:
            for h in delivered:
                h.finished(peer, ok)

    def marker(self, *fields: Any) -> tuple[Any, ...]:
        self.rebuild = True
        return (Ellipsis, *fields)

    def buffer(self, view: memoryview) -> Any:
        """The buffer itself (it travels in the message) or its frame number."""
        if self.ch is None or len(view) < STREAM_MIN:
            return view.tobytes()
        self.frames.append(view)
        return len(self.frames) - 1

    def array(self, a: np.ndarray) -> tuple[Any, ...]:
        seen = self.arrays.get(id(a))
        if seen is not None:  # the same array again (a shared argument of a chunk's tasks): sent once
            return seen[1]
        marker = self.encode_array(a)
        self.arrays[id(a)] = (a, marker)  # keeps ``a`` alive, so its id is not reused meanwhile
        return marker

    def encode_array(self, a: np.ndarray) -> tuple[Any, ...]:
        check_dtype(a.dtype)
        if a.flags.c_contiguous or not a.flags.f_contiguous:
            order, flat = "C", np.ascontiguousarray(a)  # a view that is neither is copied once
        else:
            order, flat = "F", a.T
        raw = flat.reshape(-1).view(np.uint8)
        view = memoryview(raw)  # type: ignore[arg-type]
        return self.marker("a", a.dtype.str, list(a.shape), order, self.buffer(view))

    def handle(self, h: Broadcast) -> tuple[Any, ...]:
        peer = None if self.ch is None else self.ch.peer
        if h.key in self.carried or not h.wanted_by(peer):
            return self.marker("h", h.key)
        self.carried.append(h.key)
        self.delivered.append(h)
        return self.marker("H", h.key, self.pack(h.value()))


def _simple(obj: Any, depth: int = 0) -> bool:
    """True if marshal writes ``obj`` as it is: only ``_SIMPLE`` values in lists, tuples and dicts."""
    kind = type(obj)
    if kind in _SIMPLE:
        return True
    if depth > 3:
        return False
    if kind is list or kind is tuple:
        return set(map(type, obj)) <= _SIMPLE or all(_simple(x, depth + 1) for x in obj if type(x) not in _SIMPLE)
    if kind is dict:
        if not set(map(type, obj)) <= _SIMPLE:
            return False
        if set(map(type, obj.values())) <= _SIMPLE:
            return True
        for v in obj.values():  # a loop, not all() over a generator: a reply's few values
            if type(v) not in _SIMPLE and not _simple(v, depth + 1):
                return False
        return True
    return False


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; big buffers become frames of this thread's channel if one is open."""
    if _simple(obj):  # the common case (every plain batch and reply) at about marshal's own cost
        return marshal.dumps((MAGIC, 0, obj, _NONE, b"", _NONE))
    ch = bulk.current()
    packer = _Packer(ch)
    try:
        tree = packer.pack(obj)
    except BaseException:
        packer.finish(False)
        raise
    nonce = b""
    if ch is not None:
        if ch.outgoing is not None:  # serialized again (an error reply instead): drop those frames
            ch.outgoing.finish(False)
            ch.outgoing = None
        if packer.frames or packer.delivered:
            nonce = bulk.new_nonce()
            ch.outgoing = bulk.Outgoing(nonce, packer.frames, [packer.finish])
    sizes = [len(v) for v in packer.frames]
    flags = REBUILD if packer.rebuild else 0
    return marshal.dumps((MAGIC, flags, tree, sizes, nonce, packer.carried))  # one copy of big bytes, not two


def loads(data: bytes) -> Any:
    """Decode a message, reading its bulk frames from this thread's channel.

    Raises:
        Pyro4.errors.SerializeError: not our format, or frames announced without a channel.
        TypeError: a refused dtype or a malformed array (after all frames were read).
    """
    try:
        magic, flags, tree, sizes, nonce, carried = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        raise Pyro4.errors.SerializeError("not a pyro_compute binary message, or a corrupt one") from None
    if magic != MAGIC or not (type(flags) is int and isinstance(sizes, list) and isinstance(nonce, bytes)
                              and isinstance(carried, list)):
        raise Pyro4.errors.SerializeError("a pyro_compute binary message is malformed")
    if not (carried or sizes or flags & REBUILD):
        return plain(tree)  # every plain call and reply
    keys = [k for k in carried if isinstance(k, str)]
    if keys and expect_hook is not None:
        expect_hook(keys, True)  # another call to this worker that needs them waits for them
    try:
        frames = _frames(sizes, nonce)
        return _Unpacker(frames).unpack(tree) if flags & REBUILD else plain(tree)
    finally:
        if keys and expect_hook is not None:
            expect_hook(keys, False)


def _frames(sizes: list[int], nonce: bytes) -> list[np.ndarray]:
    if not sizes:
        return []
    ch = bulk.current()
    if ch is None:
        raise Pyro4.errors.SerializeError("bulk data arrived where none may be read (before the handshake?)")
    return bulk.recv_frames(ch.conn, ch.key, nonce, sizes)


class _Unpacker:
    """Rebuild markers (arrays, scalars, bytes, handles) and class dicts of a decoded tree."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.arrays: dict[int, np.ndarray] = {}

    def unpack(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _FLAT or kind is bytes:
            return obj
        if kind is list:
            return obj if {type(x) for x in obj} <= _FLAT else [self.unpack(x) for x in obj]
        if kind is tuple:
            if obj and obj[0] is Ellipsis:
                return self.marker(obj)
            return tuple(self.unpack(x) for x in obj)
        if kind is dict:
            d = {self.unpack(k): self.unpack(v) for k, v in obj.items()}
            return SerializerBase.dict_to_class(d) if "__class__" in d else d
        if kind in (set, frozenset):
            return kind(self.unpack(x) for x in obj)
        raise Pyro4.errors.SerializeError(f"unexpected {kind.__name__} in a pyro_compute binary message")

    def marker(self, m: tuple[Any, ...]) -> Any:
        tag = m[1] if len(m) > 1 else None
        if tag == "a" and len(m) == 6:
            if id(m) not in self.arrays:  # one array sent for several places: one array here, as pickle does
                self.arrays[id(m)] = self.array(*m[2:])
            return self.arrays[id(m)]
        if tag == "s" and len(m) == 4 and isinstance(m[3], bytes):
            dtype = _dtype(m[2])
            if len(m[3]) != dtype.itemsize:
                raise TypeError("a numpy scalar arrived with the wrong number of bytes")
            return np.frombuffer(m[3], dtype)[0]
        if tag in ("b", "B") and len(m) == 3:
            raw = self.raw(m[2])
            return bytes(raw) if tag == "b" else bytearray(raw)
        if tag in ("h", "H") and isinstance(m[2], str):
            if handle_hook is None:
                raise Pyro4.errors.SerializeError("a broadcast handle reached a process that holds no broadcast values")
            return handle_hook(m[2], self.unpack(m[3]) if tag == "H" and len(m) == 4 else NO_VALUE)
        raise Pyro4.errors.SerializeError(f"unknown marker {str(tag)[:20]!r} in a pyro_compute binary message")

    def raw(self, where: Any) -> Any:
        if type(where) is bytes:
            return where
        if type(where) is int and 0 <= where < len(self.frames):
            return self.frames[where]
        raise TypeError("an array's data is missing from the message")

    def array(self, dtype_str: Any, shape: Any, order: Any, where: Any) -> np.ndarray:
        dtype = _dtype(dtype_str)
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(n) is int and n >= 0 for n in shape)):
            raise TypeError(f"an array arrived with a malformed shape {str(shape)[:80]}")
        if order not in ("C", "F"):
            raise TypeError("an array arrived with a malformed memory order")
        raw = self.raw(where)
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(raw):
            raise TypeError(f"an array of shape {tuple(shape)} and dtype {dtype} arrived with {len(raw)} bytes")
        if type(raw) is bytes:  # small: copied so that it is writable like any other
            return np.frombuffer(raw, dtype).reshape(shape, order=order).copy(order="K")
        return raw.view(dtype).reshape(shape, order=order)  # type: ignore[no-any-return]


def _dtype(text: Any) -> np.dtype[Any]:
    if not (isinstance(text, str) and _DTYPE.fullmatch(text)):
        raise TypeError(f"numpy dtype {str(text)[:40]!r} cannot cross the wire: only bool, integer, "
                        "float and complex dtypes do")
    dtype = np.dtype(text)
    check_dtype(dtype)
    return dtype


class BinarySerializer(BoundedInflate, MarshalSerializer):  # type: ignore[misc]
    """Pyro4 serializer ``pyro_compute``: see the module docstring."""

    serializer_id = SERIALIZER_ID

    def dumpsCall(self, obj: Any, method: str, vargs: Any, kwargs: Any) -> bytes:  # noqa: N802
        if type(obj) is str and type(method) is str and _simple(vargs, 1) and _simple(kwargs, 1):  # dumps' check
            return marshal.dumps((MAGIC, 0, (obj, method, vargs, kwargs), _NONE, b"", _NONE))
        return dumps((obj, method, vargs, kwargs))

    def dumps(self, data: Any) -> bytes:
        return dumps(data)

    def loadsCall(self, data: bytes) -> Any:  # noqa: N802
        call = loads(data)
        if not (isinstance(call, tuple) and len(call) == 4):
            raise Pyro4.errors.SerializeError("a pyro_compute binary call is malformed")
        obj, method, vargs, kwargs = call
        return obj, method, list(vargs), kwargs

    loads = staticmethod(loads)  # type: ignore[assignment]  # no method frame per message
