"""Broadcast handles: a value sent once to each worker that runs a task taking it (``Pool.broadcast``).

The handle travels as a task argument. The first message to a worker process that holds a
handle carries its value (its arrays as bulk frames); the worker keeps it in ``store`` and
every later message carries the key only. Workers are told apart by the token of their
handshake, so a worker that restarts (or joins later) gets the value again on first use.
``release()`` (or leaving the ``with`` block, or the pool's shutdown) drops the value here and
on every worker that got it.
"""
from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Callable

log = logging.getLogger(__name__)
WAIT = 60.0  # seconds a message waits for another one carrying the same value to the same worker


class Broadcast:
    """A handle to a value kept on the workers; pass it as a task argument, the task gets the value.

    Use as a context manager to release the value at the end of the block.
    """

    def __init__(self, value: Any, releaser: Callable[[str, list[str]], None] | None = None) -> None:
        self.key = uuid.uuid4().hex
        self._value = value
        self._releaser = releaser
        self._lock = threading.Lock()
        self._peers: dict[str, str] = {}  # worker token -> URI
        self._sending: dict[str, threading.Event] = {}  # worker token -> set once that message is out
        self._released = False

    def value(self) -> Any:
        """The value (on the client).

        Raises:
            ValueError: the handle was released.
        """
        if self._released:
            raise ValueError(f"broadcast {self.key} was released; broadcast the value again to use it in new tasks")
        return self._value

    def wanted_by(self, peer: tuple[str, str] | None) -> bool:
        """Whether a message to ``peer`` (token, URI) must carry the value: it has not got it yet.

        While another message carries it to the same worker, wait (up to ``WAIT`` seconds) for
        that one to be sent, so that a worker gets the value once. A True answer must be
        followed by ``finished(peer, ok)``.
        """
        self.value()  # a released handle is refused before anything is sent
        if peer is None:
            return True
        while True:
            with self._lock:
                if peer[0] in self._peers:
                    return False
                sending = self._sending.get(peer[0])
                if sending is None:
                    self._sending[peer[0]] = threading.Event()
                    return True
            if not sending.wait(WAIT):
                with self._lock:
                    if self._sending.get(peer[0]) is sending:
                        del self._sending[peer[0]]  # that message never finished: carry it here

    def finished(self, peer: tuple[str, str], ok: bool) -> None:
        """A message that carried the value to ``peer`` was sent (``ok``) or was not."""
        with self._lock:
            sending = self._sending.pop(peer[0], None)
            if ok:
                self._peers[peer[0]] = peer[1]
        if sending is not None:
            sending.set()

    @property
    def workers(self) -> int:
        """How many worker processes were sent the value."""
        with self._lock:
            return len(self._peers)

    def release(self) -> None:
        """Drop the value here and on every worker that holds it. It is safe to call this several times."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self._value = None
            uris = sorted(set(self._peers.values()))
            self._peers.clear()
        if self._releaser is not None and uris:
            self._releaser(self.key, uris)

    def __enter__(self) -> Broadcast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"on {self.workers} worker(s)"
        return f"<Broadcast {self.key[:8]} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a broadcast handle travels only as a task argument of the pool that made it")


def values_of(value: Any, depth: int = 0) -> Any:
    """``value`` with every handle in it (in lists, tuples and dict values) replaced by its value.

    For a chunk run in the process whose pool made its handles: no wire resolves them there.
    """
    kind = type(value)
    if kind is Broadcast:
        return value.value()
    if depth > 32 or kind not in (list, tuple, dict):
        return value
    if kind is dict:
        return {k: values_of(v, depth + 1) for k, v in value.items()}
    items = [values_of(v, depth + 1) for v in value]
    return items if kind is list else tuple(items)
