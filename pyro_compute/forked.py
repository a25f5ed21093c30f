"""Popen-like handles of the workers LocalCluster's fork server forked (client side: no Numba)."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
import weakref
from typing import Union


class ForkServer:
    """LocalCluster's end of the fork server's status pipe: which workers it forked, how each ended."""

    def __init__(self, process: subprocess.Popen[bytes], fd: int) -> None:
        self.process = process
        self.count = 0  # workers reported so far
        self.exits: dict[int, int] = {}
        self._fd = fd
        self._buffer = b""
        self._new: list[ForkedWorker] = []
        self._lock = threading.Lock()  # handles may be polled from several threads
        os.set_blocking(fd, False)
        self._finalizer = weakref.finalize(self, _close_fd, fd)

    def new_workers(self) -> list[ForkedWorker]:
        """Handles of the workers forked since the last call."""
        self.read()
        new, self._new = self._new, []
        return new

    def read(self, timeout: float = 0.0) -> None:
        """Take in the status lines written so far, waiting up to ``timeout`` for the first."""
        if not self._finalizer.alive:
            return
        if timeout > 0:
            with contextlib.suppress(OSError):  # closed meanwhile by another thread: nothing to wait for
                select.select([self._fd], [], [], timeout)
        with self._lock:
            if not self._finalizer.alive:
                return
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self._fd, 4096):
                    self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._parse(line.decode(errors="replace").split())

    def _parse(self, words: list[str]) -> None:
        if len(words) == 3 and words[0] == "fork":
            self._new.append(ForkedWorker(words[1], int(words[2]), self))
            self.count += 1
        elif len(words) == 3 and words[0] == "exit":
            self.exits[int(words[1])] = int(words[2])

    def status(self, pid: int) -> int | None:
        """The exit code of worker ``pid``, or None while it runs."""
        self.read()
        if pid in self.exits:
            return self.exits[pid]
        if self.process.poll() is not None and not _exists(pid):
            return -signal.SIGTERM  # the fork server died first; Linux sent the worker SIGTERM
        return None

    def close(self) -> None:
        """Close the pipe (idempotent)."""
        with self._lock:
            self._finalizer()


class ForkedWorker:
    """A worker the fork server forked, with the parts of ``subprocess.Popen`` that callers use."""

    def __init__(self, name: str, pid: int, server: ForkServer) -> None:
        self.name = name
        self.pid = pid
        self.args = ["pyro_compute.worker", "--name", name]
        self.returncode: int | None = None
        self._server = server

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        if self.returncode is None:
            self.returncode = self._server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it has exited; return its exit code.

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._server.read(timeout=0.05)
        return code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` unless it has exited already."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited; its status is on the way
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM: it drains, unregisters and exits."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<ForkedWorker {self.name} pid {self.pid} returncode {self.returncode}>"


WorkerProcess = Union["subprocess.Popen[bytes]", ForkedWorker]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # closed already
        os.close(fd)
