"""A Pyro4 daemon whose strangers are cheap: one select loop holds every unauthenticated connection.

Pyro4's own servers give each connection a thread from the moment it is accepted and read a
whole message (up to ``MAX_MESSAGE_SIZE``) before they check its HMAC, so idle, trickling or
oversized strangers lock clients out or make the server hold gigabytes. Here:

    accept ──► pending (select loop, no thread)          ──► handshake job ──► idle (select loop)
               TLS handshake, then the MSG_CONNECT              thread pool       │   ▲
               header checked before its body is read:                            ▼   │
               type, size <= PREAUTH_MESSAGE_LIMIT,                          request job
               not compressed, PREAUTH_TOTAL_LIMIT in all;                    thread pool
               all of it within PREAUTH_DEADLINE seconds

A connection costs a thread only while a complete, size-checked handshake or an authenticated
request is being handled, and for up to LINGER_MS after an authenticated request: a client that
calls again within that time is served by the same thread, without two hand-offs through the
select loop (at most half the pool threads linger). Idle authenticated connections cost a file
descriptor and are closed after IDLE_TIMEOUT seconds; when MAX_CONNECTIONS are open, the oldest
stranger, else the longest-idle client, makes room.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import resource
import select
import selectors
import socket
import ssl
import threading
import time
import uuid
from typing import Any, Iterator

import Pyro4
import Pyro4.errors
import Pyro4.naming
from Pyro4 import message, socketutil

from . import bulk
from .bulk import TOKEN_PREFIX, BulkConnection
from .serializers import refusing_pyro_objects

log = logging.getLogger(__name__)
HEADER_SIZE = message.Message.header_size
PREAUTH_MESSAGE_LIMIT = 64 * 1024       # bytes one unauthenticated connection may make us hold
PREAUTH_TOTAL_LIMIT = 16 * 1024 * 1024  # bytes all unauthenticated connections together
PREAUTH_DEADLINE = 5.0                  # seconds from accept to a complete handshake, TLS included
MAX_PENDING = 1024                      # unauthenticated connections; the oldest goes first
MAX_CONNECTIONS = 4096                  # all connections (and at most the fd limit less 64)
IDLE_TIMEOUT = 600.0                    # default seconds an authenticated connection may stay idle
IO_TIMEOUT = 60.0                       # seconds one read or write of an accepted request may block
LINGER_MS = 20                          # a request's thread waits this long for the client's next one
TICK = 0.2                              # seconds between checks of deadlines and the loop condition
_disconnect_lock = threading.Lock()


class _Refused(Exception):
    """A stranger broke a pre-authentication rule; its connection is closed unanswered."""


class _Connection(BulkConnection):
    """A Pyro4 connection that first hands out bytes already read by the select loop (and sends bulk frames)."""

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        super().__init__(sock)
        self.pending = pending
        self.raw_ok = False  # a handshake is read as bytes
        self.read_ahead = False  # the select loop must see the next request arrive

    def recv(self, size: int) -> Any:
        head, self.pending = self.pending[:size], self.pending[size:]
        if len(head) == size:
            return head
        if head:
            return head + super().recv(size - len(head))
        return super().recv(size)


@dataclasses.dataclass(eq=False)
class _Client:
    sock: socket.socket
    since: float
    buf: bytearray = dataclasses.field(default_factory=bytearray)
    need: int = HEADER_SIZE
    reserved: int = 0
    tls: bool = False
    conn: _Connection | None = None


class GuardedServer:
    """The transport server behind ``GuardedDaemon`` (the interface Pyro4 daemons call)."""

    def __init__(self, daemon: Any, sock: socket.socket, ssl_context: ssl.SSLContext | None,
                 strict: bool, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.daemon, self.sock, self.locationStr = daemon, sock, daemon.locationStr
        self.strict, self.shutting_down, self.idle_timeout = strict, False, idle_timeout
        self._ssl = ssl_context
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pending: dict[socket.socket, _Client] = {}
        self._idle: dict[socket.socket, _Client] = {}
        self._returns: queue.SimpleQueue[_Client] = queue.SimpleQueue()
        self._busy: set[_Client] = set()
        self._reserved = 0
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self.max_connections = min(MAX_CONNECTIONS, raise_fd_limit() - 64)
        threads = max(2, Pyro4.config.THREADPOOL_SIZE)
        self._jobs = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="serve")
        self._lingering = 0  # pool threads waiting for their client's next request
        self._linger_max = threads // 2

    # -- the Pyro4 transport server interface --------------------------------------------------

    def loop(self, loopCondition: Any = lambda: True) -> None:
        while self.sock is not None and not self.shutting_down and loopCondition():
            self.events([self.sock])

    def events(self, eventsockets: Any) -> None:
        for key, _ in self._selector.select(TICK):
            if key.data == "listen":
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif key.fileobj in self._pending:
                self._read_pending(self._pending[key.fileobj])
            elif key.fileobj in self._idle:
                self._dispatch(self._idle.pop(key.fileobj))
        self._take_back()
        self._sweep()

    def shutdown(self) -> None:
        self.shutting_down = True
        self.wakeup()

    def wakeup(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def wait_quiet(self, timeout: float) -> bool:
        """Wait until no request is being served (replies sent); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._busy:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop_listening(self) -> None:
        """Refuse new connections (a draining worker), so that probes hear 'refused', not silence."""
        if self.sock is not None:
            self._selector.unregister(self.sock)
            self.sock.close()
            self.sock = None  # type: ignore[assignment]

    def close(self) -> None:
        self.shutting_down = True
        self._jobs.shutdown(wait=False, cancel_futures=True)
        for c in [*self._pending.values(), *self._idle.values()]:
            self._drop(c)
        with self._lock:
            busy = list(self._busy)
        for c in busy:  # wake a job blocked reading from a slow client
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        if self.sock is not None:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    @property
    def selector(self) -> Any:
        raise TypeError("the guarded server has no selector to share")

    def combine_loop(self, server: Any) -> None:
        raise TypeError("the guarded server cannot be combined with another loop")

    def stats(self) -> dict[str, int]:
        """How many connections are pending, idle and busy, and the bytes strangers make us hold."""
        return {"pending": len(self._pending), "idle": len(self._idle), "busy": len(self._busy),
                "preauth_bytes": self._reserved}

    # -- strangers: everything before the handshake is complete -------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of file descriptors: make room, try again next tick
                log.warning("cannot accept a connection: %s", e)
                self._make_room(force=True)
                return
            sock.setblocking(False)
            if Pyro4.config.SOCK_NODELAY:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            client = _Client(sock, time.monotonic(), tls=self._ssl is not None)
            self._make_room()
            self._pending[sock] = client
            self._selector.register(sock, selectors.EVENT_READ, "client")

    def _make_room(self, force: bool = False) -> None:
        if len(self._pending) >= MAX_PENDING or (force and self._pending):
            self._drop(next(iter(self._pending.values())))
        elif force or len(self._pending) + len(self._idle) + len(self._busy) >= self.max_connections:
            if self._idle:
                self._disconnect(self._idle.pop(next(iter(self._idle))))

    def _read_pending(self, c: _Client) -> None:
        try:
            if c.tls:
                c.sock.do_handshake()  # type: ignore[attr-defined]
                c.tls = False
            while len(c.buf) < c.need:
                chunk = c.sock.recv(c.need - len(c.buf))
                if not chunk:
                    raise _Refused("closed before the handshake")
                c.buf += chunk
                if len(c.buf) == HEADER_SIZE:
                    self._check_header(c)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return
        except (OSError, _Refused, Pyro4.errors.ProtocolError) as e:
            log.debug("dropped a connection before its handshake: %s", e)
            self._drop(c)
            return
        del self._pending[c.sock]
        self._selector.unregister(c.sock)
        self._start(self._handshake, c)

    def _check_header(self, c: _Client) -> None:
        msg = message.Message.from_header(bytes(c.buf))
        size = msg.data_size + msg.annotations_size
        if msg.type != message.MSG_CONNECT:
            raise _Refused(f"message type {msg.type} before the handshake")
        if msg.flags & message.FLAGS_COMPRESSED:
            raise _Refused("a compressed handshake")
        if size > PREAUTH_MESSAGE_LIMIT:
            raise _Refused(f"a handshake of {size} bytes (at most {PREAUTH_MESSAGE_LIMIT})")
        with self._lock:
            if self._reserved + size > PREAUTH_TOTAL_LIMIT:
                raise _Refused("strangers already hold the pre-authentication budget")
            self._reserved += size
        c.reserved, c.need = size, HEADER_SIZE + size

    def _drop(self, c: _Client) -> None:
        self._pending.pop(c.sock, None)
        self._idle.pop(c.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(c.sock)
        self._release(c)
        c.sock.close()

    def _release(self, c: _Client) -> None:
        with self._lock:
            self._reserved -= c.reserved
            c.reserved = 0
        c.buf = bytearray()

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < TICK:
            return
        self._last_sweep = now
        for c in [c for c in self._pending.values() if now - c.since > PREAUTH_DEADLINE]:
            self._drop(c)
        for c in [c for c in self._idle.values() if now - c.since > self.idle_timeout]:
            self._idle.pop(c.sock)
            self._disconnect(c)
        self.daemon._housekeeping()

    # -- clients: the handshake and every request, on the thread pool -----------------------

    def _start(self, job: Any, c: _Client) -> None:
        with self._lock:
            self._busy.add(c)
        try:
            self._jobs.submit(self._run, job, c)
        except RuntimeError:  # shutting down
            self._finish(c, False)

    def _run(self, job: Any, c: _Client) -> None:
        keep = False
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(IO_TIMEOUT)
            with self._guard():
                keep = job(c)
        except (OSError, Pyro4.errors.CommunicationError) as e:
            log.debug("closed a connection: %s", e)
        except Exception:  # a Pyro4 bug must cost one connection, never the server
            log.warning("closed a connection after an unexpected error", exc_info=True)
        finally:
            self._finish(c, keep)

    def _guard(self) -> Any:
        return refusing_pyro_objects() if self.strict else contextlib.nullcontext()

    def _handshake(self, c: _Client) -> bool:
        c.conn = _Connection(c.sock, bytes(c.buf))
        self._release(c)
        return bool(self.daemon._handshake(c.conn))

    def _request(self, c: _Client) -> bool:
        assert c.conn is not None
        # Bulk frames are read only here: after the handshake, after the request's own HMAC check.
        bulk.open_channel(c.conn, self.daemon._pyroHmacKey)
        try:
            while True:
                header = c.conn.recv(HEADER_SIZE)
                msg = message.Message.from_header(header)
                if msg.flags & message.FLAGS_KEEPSERIALIZED:
                    raise Pyro4.errors.SecurityError("a request with FLAGS_KEEPSERIALIZED; refused")
                c.conn.pending = header
                c.conn.raw_ok = msg.serializer_id == bulk.SERIALIZER_ID
                self.daemon.handleRequest(c.conn)
                if not (isinstance(c.sock, ssl.SSLSocket) and c.sock.pending()) and not self._linger(c):
                    return True
        finally:
            bulk.close_channel(None)

    def _linger(self, c: _Client) -> bool:
        """Whether the client's next request arrived within LINGER_MS: this thread then serves it too.

        A client calling again at once (a lone caller, a dispatcher with queued work) so skips two
        thread hand-offs per request: select loop to pool thread and back. At most half the pool
        threads linger, and none once the server stops listening (a draining worker).
        """
        if self.shutting_down or self.sock is None:
            return False
        with self._lock:
            if self._lingering >= self._linger_max:
                return False
            self._lingering += 1
        try:
            poller = select.poll()  # not select.select: descriptors may exceed FD_SETSIZE
            poller.register(c.sock, select.POLLIN)
            return bool(poller.poll(LINGER_MS))
        finally:
            with self._lock:
                self._lingering -= 1

    def _dispatch(self, c: _Client) -> None:
        self._selector.unregister(c.sock)
        self._start(self._request, c)

    def _finish(self, c: _Client, keep: bool) -> None:
        with self._lock:
            self._busy.discard(c)
        if keep and not self.shutting_down:
            c.since = time.monotonic()
            self._returns.put(c)
            self.wakeup()
        else:
            self._disconnect(c)

    def _take_back(self) -> None:
        while True:
            try:
                c = self._returns.get_nowait()
            except queue.Empty:
                return
            c.sock.setblocking(False)
            self._idle[c.sock] = c
            self._selector.register(c.sock, selectors.EVENT_READ, "client")

    def _disconnect(self, c: _Client) -> None:
        if c.conn is not None:
            with _disconnect_lock:
                try:
                    self.daemon._clientDisconnect(c.conn)
                except Exception:  # the daemon's hook must not keep the socket open
                    log.warning("error in clientDisconnect", exc_info=True)
        self._drop(c)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (at most 65536); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return 65536 if soft == resource.RLIM_INFINITY else soft


@contextlib.contextmanager
def _pyro_config(**values: Any) -> Iterator[None]:
    old = {k: getattr(Pyro4.config, k) for k in values}
    for k, v in values.items():
        setattr(Pyro4.config, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(Pyro4.config, k, v)


class _GuardedMixin:
    """Build the daemon as Pyro4 does, then move its listening socket to a ``GuardedServer``."""

    strict = False  # refuse Pyro4 objects (proxies, URIs...) in what callers send

    def __init__(self, *args: Any, idle_timeout: float = IDLE_TIMEOUT, **kwargs: Any) -> None:
        # The multiplex server binds without threads; TLS is added per connection, not on accept().
        with _pyro_config(SERVERTYPE="multiplex", SSL=False):
            super().__init__(*args, **kwargs)
        old = self.transportServer  # type: ignore[has-type]
        sock, old.sock = old.sock, None
        old.close()
        context = None
        if Pyro4.config.SSL:
            context = socketutil.getSSLcontext(
                servercert=Pyro4.config.SSL_SERVERCERT, serverkey=Pyro4.config.SSL_SERVERKEY,
                keypassword=Pyro4.config.SSL_SERVERKEYPASSWD, cacerts=Pyro4.config.SSL_CACERTS)
        self.transportServer = GuardedServer(self, sock, context, self.strict, idle_timeout)


class GuardedDaemon(_GuardedMixin, Pyro4.Daemon):  # type: ignore[misc]
    """A worker's daemon: guarded transport, and no Pyro4 object is ever rebuilt from a caller's data.

    It also accepts pyro_compute's binary serializer, and answers a handshake with a token of
    this process, by which pools tell whether a worker already holds a broadcast value.
    """

    strict = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        accepted: set[int] = self._Daemon__serializer_ids  # type: ignore[has-type]
        self._Daemon__serializer_ids = accepted | {bulk.SERIALIZER_ID}
        self.token = TOKEN_PREFIX + uuid.uuid4().hex

    def validateHandshake(self, conn: Any, data: Any) -> Any:  # noqa: N802 (Pyro4's name)
        super().validateHandshake(conn, data)
        return self.token


class GuardedNameServerDaemon(_GuardedMixin, Pyro4.naming.NameServerDaemon):  # type: ignore[misc]
    """Pyro4's name server daemon on the guarded transport (it must accept URIs in ``register``)."""
