"""What a worker sends back: results the wire carries as they are, and error reports of bounded size.

A batch reply must never fail as a whole because one task returned something the wire cannot
carry (an iterator, a generator, an int over 4,300 digits, an object): that task fails alone
with a TypeError saying why. Error reports never hold more than a few kilobytes of the caller's
data, however large the argument that caused them.
"""
from __future__ import annotations

import marshal
import reprlib
import struct
import traceback
from typing import Any, Collection

import numpy as np

from .references import object_result_refusal

INT_DIGITS = 4300  # CPython's default limit for int <-> str; serpent writes ints as text
_INT_LIMIT = 10**INT_DIGITS
_INT_BITS = _INT_LIMIT.bit_length()  # ints with fewer bits are below the limit
_FLAT = frozenset({type(None), bool, float, str, complex})
_FLAT_INT = _FLAT | {int}
_MARSHAL_FLAT = frozenset({type(None), bool, int, float, str, complex, bytes})
_INT_ONLY = {int}
_SAFE_KINDS = "biufc"
_CONTAINERS = frozenset({list, tuple, set, frozenset})
_SERPENT_CHANGES: dict[type, str] = {bytes: "bytes, which the serpent serializer would turn into a base64 dict",
                    frozenset: "a frozenset, which the serpent serializer would turn into a set"}
_KEY_TYPES = (str, int, bool)
MAX_ARG_CHARS = 2000  # of an exception argument sent back
MAX_TRACEBACK_CHARS = 20_000
_ALLOWED = ("None, bool, int, float, complex, str, list, tuple, dict, set, numpy arrays and "
            "scalars of numbers; bytes and frozenset only where no numpy value shares the reply")


class _ShortRepr(reprlib.Repr):
    """reprlib that also cuts bytes before building their repr (reprlib repr()s them whole)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 8

    def repr_bytes(self, x: bytes, level: int) -> str:
        return _cut(x, self.maxstring)

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({_cut(bytes(x[:self.maxstring + 1]), self.maxstring)})"

    def repr_int(self, x: int, level: int) -> str:
        return f"<int of {x.bit_length():,} bits>" if _big_int(x) else super().repr_int(x, level)

    def repr_str(self, x: str, level: int) -> str:
        return _cut(x, self.maxstring)


def _cut(x: str | bytes, limit: int) -> str:
    """repr of the first ``limit`` items, itself cut to ``limit`` characters (bytes escape 4x)."""
    text = repr(x[:limit])
    if len(x) <= limit and len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(x):,} {'characters' if isinstance(x, str) else 'bytes'} in all)"


def short_repr(value: Any, limit: int = 80) -> str:
    """A repr of ``value`` of about ``limit`` characters, built without a full repr of large values."""
    try:
        return _ShortRepr(limit).repr(value)
    except Exception:  # a user __repr__ that fails must not hide the error being reported
        return f"<{type(value).__qualname__} object>"


def unsendable(value: Any, serpent: bool, depth: int = 0) -> str | None:
    """Why the wire cannot carry ``value`` back unchanged, or None.

    Only exact builtin types pass (a namedtuple arrives as a tuple): serpent turns a Decimal,
    a date or a deque into something else without a word, and fails on a range or an iterator.
    ``serpent``: the reply goes through serpent, which also turns bytes into a base64 dict and a
    frozenset into a set; marshal carries those but no numpy.
    """
    kind = type(value)
    if kind in _FLAT:
        return None
    if kind is int:
        return _big_int(value)
    if kind in _SERPENT_CHANGES and serpent:
        return _SERPENT_CHANGES[kind]
    if kind is bytes or depth > 64:
        return None  # the serializer itself reports structures this deep
    if isinstance(value, (np.ndarray, np.generic)):
        return None if value.dtype.kind in _SAFE_KINDS else f"numpy dtype {value.dtype} (only bool, integer, float and complex dtypes cross the wire)"
    if kind in _CONTAINERS or (isinstance(value, tuple) and hasattr(value, "_fields")):
        return _items(value, serpent, depth)
    if kind is dict:
        if not {type(k) for k in value} <= {str}:
            for k in value:
                if not _good_key(k):
                    return f"dict key {short_repr(k)} of type {type(k).__name__}"
        return _items(value.values(), serpent, depth)
    if isinstance(value, BaseException) and kind.__module__ in ("builtins", "pyro_compute.errors"):
        return _items(value.args, serpent, depth)
    if hasattr(value, "__next__"):
        return f"a {kind.__module__}.{kind.__qualname__} (an iterator: return a list of its items)"
    return object_result_refusal(value)


def _items(values: Collection[Any], serpent: bool, depth: int) -> str | None:
    """``unsendable`` of the first item that has a reason; numbers and text checked at C speed."""
    kinds = {type(v) for v in values}
    if kinds <= _FLAT:
        return None
    for v in values:
        if type(v) is int:
            if v.bit_length() >= _INT_BITS and _big_int(v):
                return _big_int(v)
        elif type(v) not in _FLAT:
            why = unsendable(v, serpent, depth + 1)
            if why:
                return why
    return None


def _big_int(value: int) -> str | None:
    if value.bit_length() < _INT_BITS or -_INT_LIMIT < value < _INT_LIMIT:
        return None
    return (f"an int of more than {INT_DIGITS} digits ({value.bit_length():,} bits), which cannot "
            "be written as text; return hex(n) or n.to_bytes(...) and convert back")


def _good_key(key: Any) -> bool:
    if type(key) in _KEY_TYPES and (type(key) is not int or _big_int(key) is None):
        return True
    if type(key) is float and key == key:
        return True
    return type(key) is tuple and all(_good_key(k) for k in key)


def marshal_plain(values: list[Any]) -> bool:
    """True if marshal carries ``values`` exactly and ``unsendable`` has nothing against them:
    builtin scalars (bytes too, ints under the digit limit) in builtin containers, good dict keys.

    marshal turns anything with a buffer (a numpy scalar) into bytes, so only exact types pass.
    """
    return _marshal_items(values, 0)


def _marshal_items(values: Collection[Any], depth: int) -> bool:
    kinds = {type(v) for v in values}
    if kinds <= _MARSHAL_FLAT and int not in kinds:
        return True
    if kinds == _INT_ONLY:  # min and max at C speed instead of a bit_length per int
        return bool(-_INT_LIMIT < min(values) and max(values) < _INT_LIMIT)
    for v in values:
        kind = type(v)
        if kind is int:
            if v.bit_length() >= _INT_BITS and _big_int(v):
                return False
        elif kind not in _MARSHAL_FLAT and not _marshal_value(v, depth + 1):
            return False
    return True


def _marshal_value(value: Any, depth: int) -> bool:
    kind = type(value)
    if depth > 64:
        return False
    if kind in _CONTAINERS:
        return _marshal_items(value, depth)
    if kind is dict:
        return ({type(k) for k in value} <= {str} or all(_good_key(k) for k in value)) \
            and _marshal_items(value.values(), depth)
    return False


_SETS = frozenset({set, frozenset})
_CODES: dict[type, bytes] = {list: b"[", tuple: b"(", set: b"<", frozenset: b">"}  # marshal's type codes
_PIECES = 2  # marshal version without back-references, so separately written pieces join into one stream


def pack(values: list[Any]) -> bytes:
    """``marshal.dumps(values)`` (for values ``marshal_plain`` passed), fast for big sets too.

    marshal sorts the items of every set it writes (about 0.4 s for 333,000 ints); here a set is
    written as the list of its items under the set's type code, which ``marshal.loads`` reads as that set.
    """
    if not _has_set(values, 0):
        return marshal.dumps(values)
    return _pack(values)


def _has_set(values: Collection[Any], depth: int) -> bool:
    kinds = {type(v) for v in values}
    if kinds & _SETS:
        return True
    if kinds <= _MARSHAL_FLAT or depth > 64:
        return False
    return any(_has_set(v.values() if type(v) is dict else v, depth + 1) for v in values
               if type(v) in _CODES or type(v) is dict)


def _pack(value: Any) -> bytes:
    kind = type(value)
    if kind is dict:
        if not _has_set(value.values(), 0):
            return marshal.dumps(value, _PIECES)
        pairs = (marshal.dumps(k, _PIECES) + _pack(v) for k, v in value.items())
        return b"{" + b"".join(pairs) + b"0"  # marshal's dict: key, value pairs, then its null code
    if kind not in _CODES:
        return marshal.dumps(value, _PIECES)
    items = value if kind is list else list(value)
    if not _has_set(items, 0):
        return _CODES[kind] + marshal.dumps(items, _PIECES)[1:]  # a list's items, under this type code
    return _CODES[kind] + struct.pack("<i", len(items)) + b"".join(_pack(v) for v in items)


def pack_plain(values: list[Any]) -> bytes | None:
    """``pack(values)`` if ``marshal_plain(values)``, else None: one pass over the values for both.

    A container of small ints is checked by the length marshal writes for it (5 bytes per int
    below 2**31), so a set of 333,000 ints costs its marshal.dumps, not a Python loop as well.
    """
    return _plain_piece(values, 0)


def _plain_piece(value: Any, depth: int) -> bytes | None:
    kind = type(value)
    if kind in _MARSHAL_FLAT:
        return None if kind is int and _big_int(value) else marshal.dumps(value, _PIECES)
    if depth > 64:
        return None
    if kind is dict:
        if not ({type(k) for k in value} <= {str} or all(_good_key(k) for k in value)):
            return None
        pieces = [b"{"]
        for k, v in value.items():
            piece = _plain_piece(v, depth + 1)
            if piece is None:
                return None
            pieces += (marshal.dumps(k, _PIECES), piece)
        return b"".join(pieces) + b"0"  # marshal's dict: key, value pairs, then its null code
    if kind not in _CODES:
        return None
    items = value if kind is list or kind is tuple else list(value)
    if items and type(items[0]) is int:  # ints below 2**31 only: each item then reads back as marshal's 'i' code
        try:
            data = marshal.dumps(items, _PIECES)
        except ValueError:  # something marshal cannot write: the type check below names it
            data = b""
        if len(data) == 5 + 5 * len(items) and data[5::5] == b"i" * len(items):
            return data if kind is list else _CODES[kind] + data[1:]
    kinds = set(map(type, items))
    if kinds <= _MARSHAL_FLAT:
        data = marshal.dumps(items, _PIECES)
        if int in kinds and not (kinds == _INT_ONLY and len(data) == 5 + 5 * len(items)) \
                and not _ints_fit(items, kinds):
            return None
        return data if kind is list else _CODES[kind] + data[1:]  # the items, under this container's type code
    if not _has_set(items, depth):
        if not _marshal_items(items, depth):
            return None
        data = marshal.dumps(items, _PIECES)
        return data if kind is list else _CODES[kind] + data[1:]
    pieces = [_CODES[kind], struct.pack("<i", len(items))]
    for v in items:
        piece = _plain_piece(v, depth + 1)
        if piece is None:
            return None
        pieces.append(piece)
    return b"".join(pieces)


def _ints_fit(items: Collection[Any], kinds: set[type]) -> bool:
    """True if every int in ``items`` is under the digit limit."""
    if kinds == _INT_ONLY:
        return bool(-_INT_LIMIT < min(items) and max(items) < _INT_LIMIT)
    return all(v.bit_length() < _INT_BITS or not _big_int(v) for v in items if type(v) is int)


def fail_unsendable(results: list[Any], errors: list[list[Any]], serpent: bool) -> None:
    """Turn results the wire cannot carry into those tasks' errors, so the rest still arrive."""
    kinds = {type(x) for x in results}
    if kinds <= _FLAT or (kinds <= _FLAT_INT and all(type(x) is not int or x.bit_length() < _INT_BITS
                                                     for x in results)):
        return
    failed = {e[0] for e in errors}
    for i, value in enumerate(results):
        why = None if i in failed else unsendable(value, serpent)
        if why:
            results[i] = None
            errors.append([i, "builtins", "TypeError",
                           [f"the result of task {i} cannot be sent back: {why}; "
                            f"return plain data ({_ALLOWED}) with str, int, float or tuple dict keys"],
                           ""])
    errors.sort(key=lambda e: e[0])


def error_entry(index: int, e: BaseException) -> list[Any]:
    """``[index, module, type, args, traceback]`` for a task's exception, of bounded size."""
    kind = type(e)
    return [index, kind.__module__, kind.__qualname__, plain_args(e), traceback_text(e)]


def plain_args(e: BaseException) -> list[Any]:
    """The exception's arguments as plain data: scalars as they are, long text cut, the rest as short reprs."""
    out: list[Any] = []
    for a in e.args:
        if isinstance(a, str) and type(a) is str:
            out.append(a if len(a) <= MAX_ARG_CHARS else f"{a[:MAX_ARG_CHARS]}... ({len(a):,} characters in all)")
        elif type(a) in (int, float, bool, type(None)) and _big_int(a if type(a) is int else 0) is None:
            out.append(a)
        else:
            out.append(short_repr(a, MAX_ARG_CHARS))
    return out


def traceback_text(e: BaseException) -> str:
    """The formatted traceback, without ever formatting a huge message in full."""
    if all(_small(x) for x in _chain(e)):
        text = "".join(traceback.format_exception(e))
    else:  # str(e) would copy (and for bytes, quadruple) the caller's data: report it cut instead
        frames = "".join(traceback.format_tb(e.__traceback__))
        text = (f"Traceback (most recent call last):\n{frames}{type(e).__qualname__}: "
                f"{', '.join(map(str, plain_args(e)))}\n")
    return text if len(text) <= MAX_TRACEBACK_CHARS else "...\n" + text[-MAX_TRACEBACK_CHARS:]


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = e
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _small(e: BaseException) -> bool:
    """True if ``str(e)`` is cheap: every argument a small scalar, short text or a few of those."""
    return all(_cheap(a, 0) for a in e.args)


def _cheap(value: Any, depth: int) -> bool:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value) <= MAX_ARG_CHARS
    if type(value) is int:
        return _big_int(value) is None
    if type(value) in (float, bool, complex, type(None)):
        return True
    if type(value) in (list, tuple, set, frozenset) and depth < 2 and len(value) <= 16:
        return all(_cheap(v, depth + 1) for v in value)
    return False
