"""A proxy call as Pyro4 makes it, byte for byte and check for check, in fewer Python steps.

``Pyro4.core.Proxy._pyroInvoke`` builds a ``Message`` object each way, computes each HMAC through
the pure-Python ``hmac`` module and copies annotations through several helpers: about 20 µs of
Python per call here, more than a remote ``noop`` costs the pool itself. ``invoke`` sends the same
header, HMAC annotation and data and applies the same checks to the reply (header tag, version and
checksum, message size limit, message type, HMAC, sequence number, serializer) with one-shot
``hmac.digest``. Calls it does not cover (one-way, compressed, blobs, annotations or a correlation
id set by the caller, wire logging, raw responses, streamed results) go through Pyro4's own code.
"""
from __future__ import annotations

import functools
import hmac
import struct
from typing import Any

import Pyro4
import Pyro4.core
import Pyro4.errors
from Pyro4 import constants, message, util

_HEADER = struct.Struct(message.Message.header_format)
_HMAC_CHUNK = struct.pack("!4sH", b"HMAC", 20)  # annotation key and length of a SHA-1 HMAC
_MAGIC = message.Message.checksum_magic
_VERSION = constants.PROTOCOL_VERSION
_ANNOTATION = struct.Struct("!4sH")
_CORR_CHUNK = struct.pack("!4sH", b"CORR", 16)
_CORR_HMAC_SIZE = 2 * 6 + 16 + 20


def covers(proxy: Pyro4.Proxy, methodname: str, vargs: Any, flags: int, object_id: Any) -> bool:
    """Whether ``invoke`` makes this call exactly as Pyro4 would (else Pyro4 makes it)."""
    ctx = Pyro4.core.current_context
    config = Pyro4.config
    return not (flags or object_id or proxy._pyroConnection is None or methodname in proxy._pyroOneway
                or config.COMPRESSION or config.LOGWIRE or proxy._pyroRawWireResponse
                or ctx.annotations or ctx.correlation_id
                or type(proxy)._pyroAnnotations is not Pyro4.core.Proxy._pyroAnnotations
                or (vargs and isinstance(vargs[0], Pyro4.core.SerializedBlob)))


def invoke(proxy: Pyro4.Proxy, methodname: str, vargs: Any, kwargs: Any, key: bytes | None) -> Any:
    """Call ``methodname`` on a connected proxy (``covers`` said yes) with its HMAC ``key``; return the result.

    Raises:
        whatever Pyro4's ``_pyroInvoke`` raises in the same case; on a communication error or
        KeyboardInterrupt the connection is released, as Pyro4 does.
    """
    Pyro4.core.current_context.response_annotations = {}
    with proxy._Proxy__pyroConnLock:
        conn = proxy._pyroConnection
        serializer = util.get_serializer(proxy._pyroSerializer or Pyro4.config.SERIALIZER)
        data = serializer.dumpsCall(conn.objectId, methodname, vargs, kwargs)  # serializeCall, not compressed
        proxy.__dict__["_pyroSeq"] = seq = (proxy._pyroSeq + 1) & 0xffff  # past Proxy.__setattr__'s Python
        request = _message(message.MSG_INVOKE, data, serializer.serializer_id, seq, key)
        try:
            conn.send(request)
            del request
            return _result(proxy, conn, serializer, seq, key)
        except (Pyro4.errors.CommunicationError, KeyboardInterrupt):
            proxy._pyroRelease()  # a half-read reply must not be taken for the next call's
            raise


def _message(kind: int, data: bytes, serializer_id: int, seq: int, key: bytes | None) -> bytes:
    """Header, HMAC annotation (with a key) and data, as ``Message(...).to_bytes()`` writes them."""
    annotations = _HMAC_CHUNK + _sha1_hmac(key, data) if key else b""
    size = len(data) + len(annotations)
    limit = Pyro4.config.MAX_MESSAGE_SIZE
    if 0 < limit < size:
        raise Pyro4.errors.MessageTooLargeError(f"max message size exceeded ({size} where max={limit})")
    if len(data) > 0x7fffffff:
        raise ValueError("invalid message size (outside range 0..2Gb)")
    checksum = (kind + _VERSION + len(data) + len(annotations) + serializer_id + seq + _MAGIC) & 0xffff
    return _HEADER.pack(b"PYRO", _VERSION, kind, 0, seq, len(data), serializer_id, len(annotations), 0,
                        checksum) + annotations + data


def _result(proxy: Pyro4.Proxy, conn: Any, serializer: Any, seq: int, key: bytes | None) -> Any:
    """Receive and check the reply to call ``seq``; its result, or raise its exception."""
    flags, reply_seq, serializer_id, annotations, data = _receive(conn, key)
    if reply_seq != seq:
        raise Pyro4.errors.ProtocolError(f"invoke: reply sequence out of sync, got {reply_seq} expected {seq}")
    if serializer_id != serializer.serializer_id:
        raise Pyro4.errors.SerializeError(f"invalid serializer in response: {serializer_id}")
    if annotations:
        Pyro4.core.current_context.response_annotations = annotations
        proxy._pyroResponseAnnotations(annotations, message.MSG_RESULT)
    if flags & message.FLAGS_COMPRESSED:
        result = serializer.deserializeData(data, compressed=True)
    else:
        result = serializer.loads(data)  # what deserializeData does with uncompressed data
    if flags & message.FLAGS_ITEMSTREAMRESULT:
        raise Pyro4.errors.ProtocolError("result of call is an iterator; pool proxies take no streamed results")
    if flags & message.FLAGS_EXCEPTION:
        raise result
    return result


def _receive(conn: Any, key: bytes | None) -> tuple[int, int, int, dict[str, bytes], bytes]:
    """One result message, checked as ``Message.recv(conn, [MSG_RESULT], key)`` checks it."""
    header = conn.recv(_HEADER.size)
    if len(header) != _HEADER.size:
        raise Pyro4.errors.ProtocolError("header data size mismatch")
    tag, version, kind, flags, seq, data_size, serializer_id, anns_size, _, checksum = _HEADER.unpack(header)
    if tag != b"PYRO" or version != _VERSION:
        raise Pyro4.errors.ProtocolError("invalid data or unsupported protocol version")
    if checksum != (kind + version + data_size + anns_size + flags + serializer_id + seq + _MAGIC) & 0xffff:
        raise Pyro4.errors.ProtocolError("header checksum mismatch")
    limit = Pyro4.config.MAX_MESSAGE_SIZE
    if 0 < limit < data_size + anns_size:
        conn.close()
        raise Pyro4.errors.MessageTooLargeError(
            f"max message size exceeded ({data_size + anns_size} where max={limit})")
    if kind != message.MSG_RESULT:
        raise Pyro4.errors.ProtocolError(f"invalid msg type {kind} received")
    raw, data = conn.recv_pair(anns_size, data_size)  # a BulkConnection: BulkProxy made it one
    if anns_size == _CORR_HMAC_SIZE and raw.startswith(_CORR_CHUNK) and raw[22:28] == _HMAC_CHUNK:
        corr, mac = raw[6:22], raw[28:]  # what a Pyro4 daemon sends: its correlation id and the HMAC
        annotations = {"CORR": corr, "HMAC": mac}
        if key and hmac.compare_digest(mac, _sha1_hmac(key, data, corr)):  # _hmac of these two
            return flags, seq, serializer_id, annotations, data
    elif anns_size == len(_HMAC_CHUNK) + 20 and raw.startswith(_HMAC_CHUNK):
        annotations = {"HMAC": raw[len(_HMAC_CHUNK):]}  # the HMAC alone
    else:
        annotations = _annotations(raw)
    mac = annotations.get("HMAC")
    if mac is not None and key:
        if not hmac.compare_digest(mac, _hmac(key, data, annotations)):
            raise Pyro4.errors.SecurityError("message hmac mismatch")
    elif (mac is not None) != bool(key):
        raise Pyro4.errors.SecurityError("hmac key config not symmetric")
    return flags, seq, serializer_id, annotations, data


def _annotations(raw: bytes) -> dict[str, bytes]:
    """Annotation chunks: 4-byte ASCII name, 2-byte length, value."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(raw):
        name, length = _ANNOTATION.unpack(raw[i:i + 6])
        out[name.decode("ASCII")] = raw[i + 6:i + 6 + length]
        i += 6 + length
    return out


def _hmac(key: bytes, data: bytes, annotations: dict[str, bytes]) -> bytes:
    """``Message.hmac``: SHA-1 HMAC of the data, then of the other annotations' values in name order."""
    return _sha1_hmac(key, data, *(value for name, value in sorted(annotations.items()) if name != "HMAC"))


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> Any:
    """An HMAC-SHA1 state that has absorbed ``key``, or None where OpenSSL's HMAC is missing."""
    try:
        import _hashlib  # OpenSSL's HMAC: a keyed state copies in half the time keying anew takes
        return _hashlib.hmac_new(key, digestmod="sha1")
    except (ImportError, AttributeError, ValueError):  # a Python without it: hmac.digest then
        return None


def _sha1_hmac(key: bytes, data: bytes, *more: bytes) -> bytes:
    """HMAC-SHA1 of ``data`` and then ``more``, from a copy of the keyed state when there is one."""
    keyed = _keyed(key)
    if keyed is None:
        if not more:
            return hmac.digest(key, data, "sha1")
        mac = hmac.new(key, data, "sha1")
    else:
        mac = keyed.copy()
        mac.update(data)
    for value in more:
        mac.update(value)
    return mac.digest()
