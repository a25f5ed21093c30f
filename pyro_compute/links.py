"""Links: a worker as the pool sees it, the calls it holds, and how the pool talks to it."""
from __future__ import annotations

import logging
import threading

import Pyro4
import Pyro4.constants
import Pyro4.errors

from . import binary
from .bulk import BulkProxy
from .chunk import Chunk
from .config import Settings

log = logging.getLogger(__name__)

OK, DOWN, RETIRED = "ok", "down", "retired"
WORKER_SERIALIZERS = ("marshal", "serpent")  # what the scheduler asks for; workers get ours
PIPELINE_SECONDS = 0.05  # a second call is sent only behind a call expected to take less


class Call:
    """A chunk sent to a worker: when it (last) started, how long it should take, on which proxy."""

    __slots__ = ("chunk", "started", "expected", "proxy", "fresh", "aborted")

    def __init__(self, chunk: Chunk, started: float, expected: float | None) -> None:
        self.chunk, self.started, self.expected = chunk, started, expected
        self.proxy: Pyro4.Proxy | None = None
        self.fresh = False  # sent on a connection made for it
        self.aborted = False  # health gave up on it and requeued its chunk


class Link:
    """A worker the pool knows: name, URI, health state and the calls it holds."""

    def __init__(self, name: str, uri: str) -> None:
        self.name, self.uri = name, uri
        self.state = OK
        self.calls: dict[int, Call] = {}
        self.probing = False
        self.last_probe = 0.0
        self.dispatchers: list[Dispatcher] = []


class Dispatcher:
    """One thread sending one link's calls, with its own proxies and wake-up condition."""

    def __init__(self, link: Link, slot: int, lock: threading.Lock) -> None:
        self.link, self.slot = link, slot
        self.wake = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.shared_sent = 0  # version of the pool's shared constants this worker has


ANSWERS, REFUSED, SILENT = "answers", "refused", "silent"  # what a probe found


def probe(uri: str, settings: Settings) -> str:
    """Whether the worker at ``uri`` completes a fresh handshake within ``settings.probe_timeout``.

    A busy worker ANSWERS (each connection has its own server thread; kernels release the
    GIL); a stopped or hung one stays SILENT, although its kernel still accepts the TCP
    connection; a worker that is leaving (draining its last batch: it stopped listening, and a
    connection caught in its backlog is reset) or gone REFUSED it.
    """
    try:
        with new_proxy(uri, "serpent", settings, settings.probe_timeout) as proxy:
            proxy._pyroBind()
        return ANSWERS
    except Pyro4.errors.CommunicationError as e:
        if isinstance(e, Pyro4.errors.ConnectionClosedError) or isinstance(
                e.__cause__, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError)):
            return REFUSED
        return SILENT


def new_proxy(uri: str, serializer: str, settings: Settings, timeout: float) -> Pyro4.Proxy:
    """A proxy with our secret, serializer and timeout (not connected yet).

    A proxy to a worker asked for marshal or serpent gets our binary serializer instead: marshal
    for the structure as before, arrays and bytes as raw buffers (bulk frames when big) instead
    of serpent's base64 text. The name server keeps serpent, the only serializer it accepts.
    """
    if serializer in WORKER_SERIALIZERS and Pyro4.URI(uri).object != Pyro4.constants.NAMESERVER_NAME:
        proxy: Pyro4.Proxy = BulkProxy(uri)
        serializer = binary.NAME
    else:
        proxy = Pyro4.Proxy(uri)
    proxy._pyroSerializer = serializer
    proxy._pyroHmacKey = settings.hmac_bytes
    proxy._pyroTimeout = timeout
    return proxy


def connect(proxy: Pyro4.Proxy, settings: Settings) -> bool:
    """Connect ``proxy`` if it is not, with a short handshake timeout, then allow long calls.

    Returns:
        True if a new connection was made.
    """
    if proxy._pyroConnection is not None:
        return False
    proxy._pyroTimeout = settings.probe_timeout
    proxy._pyroBind()
    proxy._pyroTimeout = settings.call_timeout
    return True


def abort(proxy: Pyro4.Proxy | None) -> None:
    """Break the connection of a call blocked on a hung worker so its dispatcher is freed."""
    conn = getattr(proxy, "_pyroConnection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(2)  # socket.SHUT_RDWR: recv() in the blocked thread returns at once
        except OSError as e:
            log.debug("aborting a call: %s", e)
