"""Pyro4's serializer tables, hardened: no pickle from the network, bounded inflate, no Pyro4 objects from callers.

Every process of ours runs ``harden()`` through ``wire.register_wire()``:

- pickle, dill and cloudpickle stay in Pyro4's tables (so a refusal can still be *sent* in them)
  but can no longer *decode*: a handshake reply, call reply or request in one of them raises
  ``SerializeError`` before a byte is unpickled. Pyro4 picks the handshake reply's decoder by the
  id the peer names, so without this a fake worker could run code in any client.
- marshal (Pyro4's serializer, and the structure of ours) decodes only plain data: it would
  also rebuild code objects, which nothing of ours should ever hold from the network.
- serpent and marshal inflate a compressed message only up to ``Pyro4.config.MAX_MESSAGE_SIZE``
  bytes, so a small zlib bomb cannot make anyone hold a gigabyte.
- inside ``refusing_pyro_objects()`` (a worker wraps every request and handshake in it), class
  dicts naming Pyro4 classes (proxies, URIs, daemons, serializers, errors) are refused, so a caller
  can never make a worker hold a proxy and connect out on its behalf.
"""
from __future__ import annotations

import contextlib
import itertools
import marshal
import threading
import zlib
from typing import Any, Callable, Iterator

import Pyro4.core
import Pyro4.errors
import Pyro4.futures
import Pyro4.util
from Pyro4.util import SerializerBase

PICKLE_FAMILY = ("pickle", "dill", "cloudpickle")
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})
_ROWS = frozenset({tuple, list})
_SEQUENCES = frozenset({list, tuple, set, frozenset})
_CONTAINERS = _SEQUENCES | {dict}
_PLAIN_OR_CONTAINER = _PLAIN | _CONTAINERS
DEFAULT_INFLATE_LIMIT = 256 * 1024 * 1024
_state = threading.local()


class _DecodeRefused:
    """Mixin: this serializer may encode (to send a refusal) but never decodes."""

    name = "pickle"

    def loads(self, data: bytes) -> Any:
        raise Pyro4.errors.SerializeError(
            f"refused to decode a message in {self.name}: pyro_compute never reads pickle, dill or "
            "cloudpickle from the network. The peer is not a genuine pyro_compute worker or name "
            "server; check who registered it (pyro-compute status) and who holds the secret")

    def loadsCall(self, data: bytes) -> Any:
        return self.loads(data)


class BoundedInflate:
    """Mixin: inflate compressed messages up to the message size limit, and no further."""

    def deserializeData(self, data: bytes, compressed: bool = False) -> Any:
        return self.loads(inflate(data) if compressed else data)  # type: ignore[attr-defined]

    def deserializeCall(self, data: bytes, compressed: bool = False) -> Any:
        return self.loadsCall(inflate(data) if compressed else data)  # type: ignore[attr-defined]


class PlainMarshal(BoundedInflate):
    """Mixin for Pyro4's marshal serializer: plain data only (see ``plain``), bounded inflate."""

    def loadsCall(self, data: bytes) -> Any:  # noqa: N802
        obj, method, vargs, kwargs = plain(marshal.loads(data))
        return obj, method, self.recreate_classes(vargs), self.recreate_classes(kwargs)  # type: ignore[attr-defined]

    def loads(self, data: bytes) -> Any:
        return self.recreate_classes(plain(marshal.loads(data)))  # type: ignore[attr-defined]


def plain(tree: Any) -> Any:
    """``tree`` if it holds only plain data, as marshal decoded it (marshal also builds code objects).

    Raises:
        Pyro4.errors.SerializeError: something else, e.g. a code object.
    """
    stack = [tree]
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind in _PLAIN:
            continue
        if kind in _SEQUENCES:
            types = set(map(type, obj))
            if types <= _PLAIN:
                continue
            if types <= _ROWS and set(map(type, itertools.chain.from_iterable(obj))) <= _PLAIN:
                continue  # a chunk's argument tuples, checked at C speed
            stack.extend(obj)
        elif kind is dict:
            if not set(map(type, obj)) <= _PLAIN:
                stack.extend(obj)
            values = obj.values()
            types = set(map(type, values))
            if types <= _PLAIN:
                continue
            if types <= _PLAIN_OR_CONTAINER:  # push only the containers (a reply's error list), at C speed
                stack.extend(itertools.compress(values, map(_CONTAINERS.__contains__, map(type, values))))
            else:
                stack.extend(values)  # the odd one is refused below
        else:
            raise Pyro4.errors.SerializeError(f"refused a {kind.__name__} in a marshal message: only "
                                              "plain data may arrive that way")
    return tree


def loads_plain(data: bytes) -> Any:
    """``plain(marshal.loads(data))``; ints and containers of ints are checked on their bytes instead.

    A list of small ints, or of a few containers of them, None, True or False, as marshal
    version 2 writes it (the layout ``replies.pack_plain`` sends) is checked by the type code of
    every item, at C speed: marshal can build nothing but those from such bytes.
    """
    if len(data) <= _SMALL and data in _seen:
        return marshal.loads(data)
    if not _ints_only(data):
        return plain(marshal.loads(data))
    if len(data) <= _SMALL and len(_seen) < _SEEN:
        _seen[data] = None
    return marshal.loads(data)


_SMALL = 64  # bytes of a payload whose verdict ``loads_plain`` remembers (a noop's [None], a small count)
_SEEN = 4096
_seen: dict[bytes, None] = {}  # small payloads found plain on their bytes: the same bytes need no new look


_SMALL_INT = b"i"  # marshal's code of an int below 2**31, then 4 bytes
_ATOMS = frozenset(b"NTF")  # None, True, False: a code alone
_INT_CONTAINERS = frozenset(b"[(<>")  # list, tuple, set, frozenset, each then a 4-byte count
_FEW = 64  # top-level items looked at one by one


def _ints_only(data: bytes) -> bool:
    if len(data) < 5 or data[0] != ord("["):
        return False
    n = int.from_bytes(data[1:5], "little")
    if len(data) == 5 + 5 * n and data[5::5] == _SMALL_INT * n:
        return True
    if n > _FEW:
        return False
    pos = 5
    for _ in range(n):
        if pos >= len(data):
            return False
        if data[pos] == _SMALL_INT[0]:
            pos += 5
            continue
        if data[pos] in _ATOMS:
            pos += 1
            continue
        if data[pos] not in _INT_CONTAINERS:
            return False
        m = int.from_bytes(data[pos + 1:pos + 5], "little")
        end = pos + 5 + 5 * m
        if end > len(data) or data[pos + 5:end:5] != _SMALL_INT * m:
            return False
        pos = end
    return pos == len(data)


def inflate(data: bytes, limit: int | None = None) -> bytes:
    """zlib-decompress ``data``, refusing output larger than ``limit`` (default: the message limit).

    Raises:
        Pyro4.errors.MessageTooLargeError: the data would inflate beyond the limit.
    """
    limit = limit or Pyro4.config.MAX_MESSAGE_SIZE or DEFAULT_INFLATE_LIMIT
    d = zlib.decompressobj()
    try:
        out = d.decompress(bytes(data), limit)
    except zlib.error as e:
        raise Pyro4.errors.SerializeError(f"a compressed message is corrupt: {e}") from None
    if d.unconsumed_tail or not d.eof:
        raise Pyro4.errors.MessageTooLargeError(
            f"a compressed message inflates to more than {limit} bytes; refused "
            "(raise PYRO_COMPUTE_MAX_MESSAGE_SIZE on both sides if this is legitimate)")
    return out


@contextlib.contextmanager
def refusing_pyro_objects() -> Iterator[None]:
    """While active in this thread, class dicts naming Pyro4 classes are refused."""
    before = getattr(_state, "refusing", False)
    _state.refusing = True
    try:
        yield
    finally:
        _state.refusing = before


def _guarded(rebuild: Callable[[str, dict[str, Any]], Any]) -> Callable[[str, dict[str, Any]], Any]:
    def converter(classname: str, data: dict[str, Any]) -> Any:
        if getattr(_state, "refusing", False):
            raise Pyro4.errors.SerializeError(
                f"refused to rebuild a {classname} from a caller's data: arguments must be plain "
                "data (numbers, strings, lists, tuples, dicts) or numpy arrays")
        return rebuild(classname, data)
    return converter


def _rebuild_core(classname: str, data: dict[str, Any]) -> Any:
    cls = {"Pyro4.core.URI": Pyro4.core.URI, "Pyro4.core.Proxy": Pyro4.core.Proxy,
           "Pyro4.core.Daemon": Pyro4.core.Daemon}[classname]
    obj = cls.__new__(cls)
    obj.__setstate_from_dict__(data["state"])
    return obj


def _rebuild_serializer(classname: str, data: dict[str, Any]) -> Any:
    name = classname.rsplit(".", 1)[1].replace("Serializer", "").lower()
    return Pyro4.util.get_serializer(name)


def _rebuild_error(classname: str, data: dict[str, Any]) -> Any:
    return SerializerBase.make_exception(getattr(Pyro4.errors, classname.rsplit(".", 1)[1]), data)


def _rebuild_wrapper(classname: str, data: dict[str, Any]) -> Any:
    ex = data["exception"]
    if isinstance(ex, dict) and "__class__" in ex:
        ex = SerializerBase.dict_to_class(ex)
    return Pyro4.futures._ExceptionWrapper(ex)


def _pyro_classes() -> dict[str, Callable[[str, dict[str, Any]], Any]]:
    """Every Pyro4 class that Pyro4's dict_to_class would rebuild, with Pyro4's own rebuild."""
    table: dict[str, Callable[[str, dict[str, Any]], Any]] = {
        f"Pyro4.core.{n}": _rebuild_core for n in ("URI", "Proxy", "Daemon")}
    table.update({f"Pyro4.util.{n}Serializer": _rebuild_serializer
                  for n in ("Serpent", "Pickle", "Marshal", "Json", "Msgpack", "Cloudpickle", "Dill")})
    table.update({f"Pyro4.errors.{n}": _rebuild_error for n, v in vars(Pyro4.errors).items()
                  if isinstance(v, type) and issubclass(v, Pyro4.errors.PyroError)})
    table["Pyro4.futures._ExceptionWrapper"] = _rebuild_wrapper
    return table


def _replace(name: str, mixin: type) -> None:
    """Swap Pyro4's serializer ``name`` (if installed) for a subclass with ``mixin`` first."""
    tables = Pyro4.util._serializers, Pyro4.util._serializers_by_id
    old = tables[0].get(name)
    if old is None or isinstance(old, mixin):
        return
    cls = type(f"Hardened{type(old).__name__}", (mixin, type(old)), {"name": name})
    new = cls()
    tables[0][name] = new
    tables[1][new.serializer_id] = new


def harden() -> None:
    """Harden Pyro4's serializer tables in this process (idempotent); see the module docstring."""
    for name in PICKLE_FAMILY:
        _replace(name, _DecodeRefused)
    _replace("marshal", PlainMarshal)
    for name in ("serpent", "json", "msgpack"):
        _replace(name, BoundedInflate)
    for classname, rebuild in _pyro_classes().items():
        SerializerBase.register_dict_to_class(classname, _guarded(rebuild))
