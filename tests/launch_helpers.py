"""Helpers shared by the launcher tests: a real name server, lookups, waiting, process trees."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import psutil
import Pyro4
import Pyro4.constants
import Pyro4.errors

from pyro_compute.config import NAME_PREFIX

TESTS = Path(__file__).parent
REPO = TESTS.parent
T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without PYRO*, with this checkout and tests/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    env.update(extra)
    return env


class NameServer:
    """A Pyro4 name server subprocess with a secret, on ``host`` and a free port."""

    def __init__(self, key: str, host: str = "127.0.0.1", log: Path | None = None) -> None:
        self.key, self.host, self.port = key, host, free_port(host)
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "Pyro4.naming", "-n", host, "-p", str(self.port), "-x"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=child_env(PYRO_HMAC_KEY=key, PYRO_SERIALIZERS_ACCEPTED="serpent"))
        if log:
            out.close()  # type: ignore[union-attr]
        wait_until(lambda: self.answers(), 30, "the name server did not start")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def answers(self) -> bool:
        try:
            with self._proxy() as ns:
                ns.ping()
            return True
        except Pyro4.errors.PyroError:
            return False

    def _proxy(self) -> Pyro4.Proxy:
        p = Pyro4.Proxy(f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{self.host}:{self.port}")
        p._pyroHmacKey = self.key.encode()
        p._pyroTimeout = 5
        return p

    def registered(self, prefix: str = NAME_PREFIX) -> dict[str, str]:
        with self._proxy() as ns:
            return dict(ns.list(prefix=prefix))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> NameServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ns_names(address: str, key: str) -> dict[str, str]:
    """Worker names and URIs in the name server at HOST:PORT."""
    host, _, port = address.rpartition(":")
    with Pyro4.Proxy(f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{host}:{port}") as ns:
        ns._pyroHmacKey = key.encode()
        ns._pyroTimeout = 5
        return dict(ns.list(prefix=NAME_PREFIX))


def wait_until(check: Callable[[], T], timeout: float, what: str | Callable[[], str], interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} within {timeout:.0f} s")
        time.sleep(interval)


def call(uri: str, key: str, method: str) -> Any:
    with Pyro4.Proxy(uri) as p:
        p._pyroHmacKey = key.encode()
        p._pyroTimeout = 10
        return getattr(p, method)()


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def with_marker(marker: str) -> list[psutil.Process]:
    """Live processes anywhere on the machine whose command line or environment holds ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or ()) and _alive(p):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def kill_all(procs: Iterator[psutil.Process] | list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue


def pss(procs: list[psutil.Process]) -> int:
    """Proportional set size of the processes together, in bytes."""
    return sum(p.memory_full_info().pss for p in procs)


def package_attribute(name: str) -> str:
    """A task: the type name of ``pyro_compute.NAME``, looked up on the package as user code does."""
    import pyro_compute
    return type(getattr(pyro_compute, name)).__name__


def env_var(name: str) -> str | None:
    """A task: the value of environment variable ``name`` in the worker."""
    return os.environ.get(name)
