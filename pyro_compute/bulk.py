"""Bulk frames: big buffers cross right after the Pyro4 message that announces them, in MAC'd parts.

A Pyro4 message holds only the structure of a call or reply (``binary``'s serializer puts big
arrays and bytes out of it); their raw bytes follow the message on the same connection::

    [Pyro4 message: structure, buffer sizes, nonce] [part 0][MAC 0] [part 1][MAC 1] ...

Each part is at most ``PART`` bytes; its MAC is Poly1305 under a one-time key HMAC-SHA256(secret,
nonce, buffer index, part index) when the ``cryptography`` package is installed (as in
ChaCha20-Poly1305, a key is never used twice), else HMAC-SHA1 under the secret of (nonce, indices,
bytes). The nonce, fresh per message, is inside the HMAC-checked message and its first byte names
the MAC, so a part cannot be forged, reordered or replayed from another message. The receiver reads each part
straight into the array that will hold it (no message-sized copy, no size limit beyond memory)
and checks each MAC before anything is built from the bytes. The message size limit and the
pre-authentication limits stay as they are: frames are read only on an authenticated connection,
inside a request (or reply) whose own message passed its HMAC check.

A ``Channel`` says, for the calling thread, which connection the message being (de)serialized
travels on: the worker's guarded server opens one per request, a ``BulkProxy`` per call.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hmac
import os
import queue
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import Pyro4
import Pyro4.errors
from Pyro4 import socketutil

from . import rpc

if TYPE_CHECKING:
    import numpy as np



@functools.cache
def _poly1305() -> Any:
    """``cryptography``'s Poly1305 (4-8x faster than HMAC-SHA1, the bound on big transfers), or None.

    Imported on first use: processes that never move a big array do not pay for it.
    """
    try:
        from cryptography.hazmat.primitives.poly1305 import Poly1305
    except ImportError:  # optional: HMAC-SHA1 then
        return None
    return Poly1305

SERIALIZER_ID = 0x7063  # pyro_compute's binary serializer (binary.py); Pyro4 uses 1-7
PART = 2 << 20  # bytes per part: small enough to pipeline MAC checks with the transfer
HMAC_SHA1, POLY1305 = b"S", b"P"  # the MAC of the parts, named by the nonce's first byte
BIG_MESSAGE = 1 << 20  # a message this big is received into one buffer
READ_AHEAD = 1 << 16  # bytes a client's connection asks for at once
MAX_BULK = 1 << 40  # bytes one message may announce; memory is only taken as bytes arrive
_local = threading.local()
sent_bytes = 0  # bytes this process sent through bulk connections (messages and frames); approximate


class Outgoing:
    """Buffers to stream after the message that carries ``nonce``, and who to tell once they are sent."""

    __slots__ = ("nonce", "buffers", "done")

    def __init__(self, nonce: bytes, buffers: list[memoryview], done: list[Callable[[bool], None]]) -> None:
        self.nonce, self.buffers, self.done = nonce, buffers, done

    def finish(self, ok: bool) -> None:
        """Tell whoever waits on these buffers whether they were sent."""
        done, self.done = self.done, []
        for callback in done:
            callback(ok)


class Channel:
    """The connection this thread's message travels on, its secret and the worker behind it."""

    __slots__ = ("conn", "key", "peer", "outgoing")

    def __init__(self, conn: Any, key: bytes | None, peer: tuple[str, str] | None) -> None:
        self.conn, self.key, self.peer = conn, key, peer
        self.outgoing: Outgoing | None = None


@contextlib.contextmanager
def channel(conn: Any, key: bytes | None, peer: tuple[str, str] | None = None) -> Iterator[Channel]:
    """Let messages serialized in this thread stream bulk frames over ``conn`` while the block runs."""
    before = getattr(_local, "channel", None)
    ch = _local.channel = Channel(conn, key, peer)
    try:
        yield ch
    finally:
        _local.channel = before


def open_channel(conn: Any, key: bytes | None, peer: tuple[str, str] | None = None) -> Channel:
    """``channel()`` without a context manager, for the per-call paths; undo with ``close_channel``."""
    ch = _local.channel = Channel(conn, key, peer)
    return ch


def close_channel(before: Channel | None) -> None:
    """Restore the channel that was open before ``open_channel`` (None: none)."""
    _local.channel = before


def current() -> Channel | None:
    """This thread's channel, or None (bulk then travels inside the message)."""
    return getattr(_local, "channel", None)


def new_nonce() -> bytes:
    """A fresh nonce for one message's frames; its first byte names the MAC its parts carry."""
    return (POLY1305 if _poly1305() is not None else HMAC_SHA1) + os.urandom(16)


def mac_size(nonce: bytes) -> int:
    """Bytes of each part's MAC under ``nonce``'s algorithm.

    Raises:
        Pyro4.errors.SerializeError: an unknown algorithm, or Poly1305 without ``cryptography``.
    """
    if nonce[:1] == HMAC_SHA1:
        return 20
    if nonce[:1] == POLY1305 and _poly1305() is not None:
        return 16
    raise Pyro4.errors.SerializeError("bulk data came with a MAC this process cannot check; install the "
                                      "'cryptography' package here as on the sender, or remove it there")


def _mac(key: bytes, nonce: bytes, index: int, part: int, data: memoryview) -> bytes:
    """The MAC of one part: Poly1305 under a one-time key derived from the secret, else HMAC-SHA1."""
    label = nonce + struct.pack("<QQ", index, part)
    if nonce[:1] == POLY1305 and _poly1305() is not None:
        return bytes(_poly1305().generate_tag(hmac.digest(key, label, "sha256"), data))
    mac = hmac.new(key, label, "sha1")
    mac.update(data)
    return mac.digest()


class _Macs:
    """Part MACs computed on a helper thread while the calling thread moves the bytes (2 cores: 2x)."""

    def __init__(self, key: bytes, nonce: bytes, threaded: bool) -> None:
        self.key, self.nonce = key, nonce
        self.todo: queue.SimpleQueue[tuple[concurrent.futures.Future[bytes], int, int, memoryview] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="pool-bulk-mac", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()

    def submit(self, index: int, part: int, data: memoryview) -> concurrent.futures.Future[bytes]:
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        if self.thread is None:
            future.set_result(_mac(self.key, self.nonce, index, part, data))
        else:
            self.todo.put((future, index, part, data))
        return future

    def close(self) -> None:
        if self.thread is not None:
            self.todo.put(None)
            self.thread.join()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            future, index, part, data = item
            future.set_result(_mac(self.key, self.nonce, index, part, data))


def _parts(views: Sequence[memoryview]) -> list[tuple[int, int, memoryview]]:
    return [(index, part, view[start:start + PART]) for index, view in enumerate(views)
            for part, start in enumerate(range(0, len(view), PART))]


def send_frames(sock: socket.socket, key: bytes | None, out: Outgoing) -> None:
    """Write ``out``'s buffers to ``sock`` in parts, each followed by its MAC (if there is a secret)."""
    parts = _parts(out.buffers)
    macs = _Macs(key, out.nonce, threaded=len(parts) > 2) if key else None
    try:
        pending = [macs.submit(*p) for p in parts] if macs else []
        for i, (_, _, piece) in enumerate(parts):
            sock.sendall(piece)
            if macs:
                sock.sendall(pending[i].result())
    except socket.timeout:
        raise Pyro4.errors.TimeoutError("sending bulk data: timeout") from None
    except OSError as e:
        raise Pyro4.errors.ConnectionClosedError(f"sending bulk data: connection lost: {e}") from None
    finally:
        if macs:
            macs.close()


def recv_frames(conn: Any, key: bytes | None, nonce: bytes, sizes: Sequence[int]) -> list[np.ndarray]:
    """Read the buffers announced by ``sizes`` from ``conn``, checking every part's MAC.

    Returns:
        One writable uint8 array per buffer.

    Raises:
        Pyro4.errors.SecurityError: a part's MAC does not match (the connection must be closed).
        Pyro4.errors.SerializeError: the sizes are malformed or more than memory allows.
    """
    if not all(type(n) is int and n >= 0 for n in sizes) or sum(sizes) > MAX_BULK:
        raise Pyro4.errors.SerializeError(f"bulk sizes {list(sizes)[:8]} are malformed or over {MAX_BULK} bytes")
    try:
        import numpy as np  # here, not at the top: the name server (no frames ever) loads no NumPy
        buffers = [np.empty(n, np.uint8) for n in sizes]
    except MemoryError:
        raise Pyro4.errors.SerializeError(f"not enough memory for {sum(sizes):,} bytes of arrays") from None
    parts = _parts([memoryview(b) for b in buffers])  # type: ignore[arg-type]
    size = mac_size(nonce) if key else 0
    macs = _Macs(key, nonce, threaded=len(parts) > 2) if key else None
    checks: list[tuple[bytes, concurrent.futures.Future[bytes]]] = []
    try:
        for index, part, piece in parts:
            _recv_into(conn, piece)
            if macs:
                tag = bytearray(size)
                _recv_into(conn, memoryview(tag))
                checks.append((bytes(tag), macs.submit(index, part, piece)))  # checked while the next part arrives
    finally:
        if macs:
            macs.close()
    if not all(hmac.compare_digest(tag, mac.result()) for tag, mac in checks):
        raise Pyro4.errors.SecurityError("bulk data hmac mismatch")
    return buffers


def _recv_into(conn: Any, view: memoryview) -> None:
    """Fill ``view`` from ``conn`` (first from bytes its reader already holds, if any)."""
    pending: bytes = getattr(conn, "pending", b"")
    got = 0
    if pending:
        got = min(len(pending), len(view))
        view[:got] = pending[:got]
        conn.pending = pending[got:]
    sock = conn.sock
    flags = 0 if hasattr(sock, "getpeercert") else socket.MSG_WAITALL  # not on TLS sockets
    try:
        while got < len(view):
            n = sock.recv_into(view[got:], len(view) - got, flags)
            if n == 0:
                raise Pyro4.errors.ConnectionClosedError("receiving bulk data: connection closed")
            got += n
    except socket.timeout:
        raise Pyro4.errors.TimeoutError("receiving bulk data: timeout") from None
    except OSError as e:
        raise Pyro4.errors.ConnectionClosedError(f"receiving bulk data: connection lost: {e}") from None


class BulkConnection(socketutil.SocketConnection):  # type: ignore[misc]
    """A Pyro4 connection that sends without copying and follows a message with its bulk frames.

    It also receives a big message into one buffer instead of Pyro4's list of 60 kB pieces,
    which held twice the message and left a new thread's heap arena at its size afterwards.
    """

    raw_ok = True  # may hand a big message out as a bytearray (only our serializer reads it)
    # A client's connection carries one reply at a time: it may read ahead (a reply's header,
    # annotations and data in one recv instead of three); the bytes read ahead wait in ``pending``
    # for the next recv or the bulk frames. A server's select loop must see every request arrive.
    read_ahead = True
    pending = b""

    def recv(self, size: int) -> Any:
        if size >= BIG_MESSAGE:
            buffer = bytearray(size)
            _recv_into(self, memoryview(buffer))
            return buffer if self.raw_ok else bytes(buffer)
        if not self.read_ahead:
            return super().recv(size)
        data = self.pending
        while len(data) < size:
            data += self._recv_some(max(READ_AHEAD, size - len(data)))
        self.pending = data[size:]
        return data[:size] if len(data) > size else data

    def recv_pair(self, first: int, second: int) -> tuple[Any, Any]:
        """``recv(first)`` (b"" for 0), then ``recv(second)``: sliced at once when both were read ahead."""
        data = self.pending
        end = first + second
        if len(data) >= end and second < BIG_MESSAGE:  # a reply that came in one piece
            self.pending = data[end:]
            return data[:first], data[first:end]
        return (self.recv(first) if first else b""), self.recv(second)

    def _recv_some(self, size: int) -> bytes:
        """At most ``size`` bytes, at least one."""
        try:
            data: bytes = self.sock.recv(size)
        except socket.timeout:
            raise Pyro4.errors.TimeoutError("receiving: timeout") from None
        except OSError as e:
            raise Pyro4.errors.ConnectionClosedError(f"receiving: connection lost: {e}") from None
        if not data:
            raise Pyro4.errors.ConnectionClosedError("receiving: connection closed")
        return data

    def send(self, data: bytes) -> None:
        global sent_bytes
        sent_bytes += len(data)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Pyro4.errors.TimeoutError("sending: timeout") from None
        except OSError as e:
            raise Pyro4.errors.ConnectionClosedError(f"sending: connection lost: {e}") from None
        ch = getattr(_local, "channel", None)  # current(), without a call per message
        out = ch.outgoing if ch is not None and ch.conn is self else None
        if out is None:
            return
        ch.outgoing = None  # type: ignore[union-attr]
        if out.nonce not in data:
            out.finish(False)  # a message other than the one that announced them (an error reply)
            return
        sent_bytes += sum(len(v) for v in out.buffers)
        try:
            send_frames(self.sock, ch.key, out)  # type: ignore[union-attr]
        except BaseException:
            out.finish(False)
            raise
        out.finish(True)


class BulkProxy(Pyro4.Proxy):  # type: ignore[misc]
    """A Pyro4 proxy whose calls may carry bulk frames and that knows which worker process it reached."""

    _bulk_peer: tuple[str, str] | None = None  # the worker's handshake token (new after a restart), URI

    def _pyroInvoke(self, methodname: str, vargs: Any, kwargs: Any, flags: int = 0,
                    objectId: Any = None) -> Any:
        if self._pyroConnection is None:
            self._pyroBind()
        conn = self._pyroConnection
        if type(conn) is socketutil.SocketConnection:
            conn.__class__ = BulkConnection  # same state, our send
            with contextlib.suppress(OSError):  # a part's MAC must not wait for an ACK (Nagle)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = self._bulk_peer or None
        before = getattr(_local, "channel", None)
        key = self._pyroHmacKey
        ch = open_channel(conn, key, peer)
        try:
            if rpc.covers(self, methodname, vargs, flags, objectId):
                return rpc.invoke(self, methodname, vargs, kwargs, key)  # the same call in fewer steps
            return super()._pyroInvoke(methodname, vargs, kwargs, flags, objectId)
        finally:
            close_channel(before)
            if ch.outgoing is not None:  # serialized but never sent (the message was refused)
                ch.outgoing.finish(False)

    def _pyroValidateHandshake(self, response: Any) -> None:
        token = response if isinstance(response, str) and response.startswith(TOKEN_PREFIX) else ""
        object.__setattr__(self, "_bulk_peer", (token, str(self._pyroUri)) if token else None)


TOKEN_PREFIX = "pyro_compute-worker "
