"""LocalCluster: a name server and N compute-worker processes on 127.0.0.1, for one run.

::

    LocalCluster ─┬─ name server    bootstrap.py pyro_compute.naming (no package __init__, no NumPy)
                  └─ fork server    bootstrap.py pyro_compute.worker -n N --status-fd FD: NumPy, Pyro4
                       │            (Numba and the kernels too with warm_kernels; else each worker
                       │            loads them on its first kernel call)
                       ├─ worker .0     forked: shares the fork server's memory copy-on-write
                       └─ worker .1     ...      ``workers`` holds a Popen-like ForkedWorker for each

Workers added later with ``start_worker`` are separate ``compute-worker`` processes, as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import Pyro4
import Pyro4.errors

from .config import NAME_PREFIX, Settings
from .errors import ClusterError, WorkerUnavailableError
from .diagnose import connect_ns
from .forked import ForkedWorker, ForkServer, WorkerProcess

LOCALHOST = "127.0.0.1"
POLL = 0.01  # seconds between looks at the name server while the cluster starts
log = logging.getLogger(__name__)
# The name server and the fork server run through bootstrap.py, without the package's __init__
# (the client API: the pool, tqdm, ...); the name server then never imports NumPy either.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """Start a Pyro4 name server and ``n_workers`` workers as child processes; stop them on close.

    The workers are forked from one process that loaded NumPy and Pyro4 once (and Numba with the
    kernels, with ``warm_kernels``); each
    has a handle in ``workers`` (``pid``, ``poll``, ``wait``, ``terminate``, ``kill``,
    ``send_signal``, as ``subprocess.Popen``). A worker that dies is not restarted.

    Args:
        n_workers: how many worker processes (default: one per core).
        hmac_key: shared secret; a random one is generated when None.
        script: a script whose functions the workers may run as ``__main__``.
        allow_modules: further modules whose functions the workers may run.
        env: extra environment variables for every child. Workers get ``OMP_NUM_THREADS``,
            ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` = cores // n_workers unless set here
            or in the environment.
        startup_timeout: seconds to wait until every worker is registered.
        by_value: let workers accept cloudpickled functions (``--allow-by-value``).
        warm_kernels: load Numba and the kernels in the fork server before forking, so the workers
            share them copy-on-write (~60 MiB less per worker once kernels ran; start-up 0.3 s
            later). By default each worker loads them on its first kernel call (0.3 s then), and a
            cluster that runs only tasks never loads Numba.

    Raises:
        ValueError: n_workers is zero or negative.
        TypeError: n_workers is not an integer.
        ClusterError: a child failed to start or did not register in time.
    """

    def __init__(self, n_workers: int | None = None, *, hmac_key: str | None = None,
                 script: str | None = None, allow_modules: Sequence[str] = (),
                 env: dict[str, str] | None = None, startup_timeout: float = 60.0,
                 by_value: bool = False, warm_kernels: bool = False) -> None:
        self.n_workers = _worker_count(n_workers)
        from .wire import register_wire  # here: NumPy's hooks, which importing this module need not load
        register_wire()  # our own name-server lookups refuse pickle before any Pool exists
        self.settings = Settings.from_env(
            {}, ns=f"{LOCALHOST}:{free_port()}",
            hmac_key=secrets.token_hex(16) if hmac_key is None else hmac_key,
            allow_modules=",".join(allow_modules))
        self.script = os.path.abspath(script) if script else None
        self.startup_timeout = startup_timeout
        self.by_value = by_value
        self.warm_kernels = warm_kernels
        self._env = dict(env or {})
        self._logdir = tempfile.TemporaryDirectory(prefix="pyro-compute-")
        self.nameserver: subprocess.Popen[bytes] | None = None
        self.workers: list[WorkerProcess] = []
        self._ns_procs: list[subprocess.Popen[bytes]] = []
        self._stoppable: list[WorkerProcess] = []  # the fork server, then every worker
        self._forked: ForkServer | None = None
        self._count = 0
        self._started = False  # the first n_workers have registered
        # Our children stop by themselves once this process is gone, however it ends (lifeline.py):
        # the write end stays here, non-inheritable, and closes with the cluster or the process.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._finalizer = weakref.finalize(self, _stop_all, self._stoppable, self._ns_procs,
                                           (self._lifeline_r, self._lifeline_w))
        try:
            self._start_fork_server()  # first: its import and warm-up are the longest part
            self.start_nameserver(wait=False)  # up long before the first worker registers
            self._wait_for_nameserver()
            self.wait_for_workers(self.n_workers)
            self._started = True
            log.info("local cluster up: name server %s, %d workers", self.ns, self.n_workers)
        except BaseException:
            self.close()
            raise

    @property
    def ns(self) -> str:
        """The name server address as HOST:PORT."""
        return self.settings.ns

    def start_nameserver(self, wait: bool = True) -> None:
        """Start (or restart) the name server on the cluster's port; wait until it answers."""
        host, port = self.settings.ns_address
        # pyro_compute.naming: Pyro4's name server on the guarded transport (strangers held in
        # one select loop with a pre-auth budget), serpent only.
        env = {"PYRO_HMAC_KEY": self.settings.hmac_key,
               "PYRO_MAX_MESSAGE_SIZE": str(self.settings.max_message_size)}
        self.nameserver = self._spawn("nameserver", [sys.executable, _BOOTSTRAP, "pyro_compute.naming",
                                                     "-n", host, "-p", str(port)], env)
        self._ns_procs.append(self.nameserver)
        if wait:
            self._wait_for_nameserver()

    def _wait_for_nameserver(self) -> None:
        assert self.nameserver is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with connect_ns(self.settings) as ns:
                    ns.ping()
                return
            except (Pyro4.errors.PyroError, WorkerUnavailableError):
                self._check_alive(self.nameserver, "the name server")
                if time.monotonic() > deadline:
                    raise ClusterError(f"the name server did not answer on {self.ns} within "
                                       f"{self.startup_timeout:.0f} s") from None
                time.sleep(POLL)

    def stop_nameserver(self, sig: int = signal.SIGTERM) -> None:
        """Stop the name server (workers keep serving); for tests of name server loss."""
        if self.nameserver is not None and self.nameserver.poll() is None:
            self.nameserver.send_signal(sig)
            self.nameserver.wait(timeout=10)

    def _start_fork_server(self) -> None:
        """Start the one process that warms up and forks the first ``n_workers`` workers."""
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, _BOOTSTRAP, "pyro_compute.worker", "--ns", self.ns, "--name",
               f"local.{os.getpid()}", "-n", str(self.n_workers), "--status-fd", str(write_fd),
               *self._worker_options()]
        try:
            server = self._spawn("workers", cmd, self._worker_env(), pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._forked = ForkServer(server, read_fd)
        self._stoppable.append(server)
        self._count = self.n_workers

    def start_worker(self, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start one more worker (extra ``compute-worker`` arguments in ``args``)."""
        name = f"local.{os.getpid()}.{self._count}"
        self._count += 1
        cmd = [sys.executable, "-m", "pyro_compute.worker", "--ns", self.ns, "--name", name, *args,
               *self._worker_options()]
        proc = self._spawn(name, cmd, self._worker_env())
        self.workers.append(proc)
        self._stoppable.append(proc)
        if wait:
            self.wait_for_workers(len(self.registered()) + 1)
        return proc

    def _worker_options(self) -> list[str]:
        return ((["--script", self.script] if self.script else [])
                + (["--allow-by-value"] if self.by_value else [])
                + ([] if self.warm_kernels else ["--lazy-kernels"]))

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.settings.as_env().items()
               if k in ("PYRO_COMPUTE_HMAC_KEY", "PYRO_COMPUTE_ALLOW_MODULES")}
        # The workers share the cores already: BLAS/OpenMP threads sized for the whole machine in
        # each would oversubscribe them (Dask's workers do the same); creating them also costs
        # every NumPy import ~0.03 CPU-s. A value the caller or the environment sets wins.
        threads = str(max(1, _cores() // self.n_workers))
        for var in _THREAD_VARS:
            if var not in os.environ and var not in self._env:
                env[var] = threads
        return env

    def _collect_forked(self) -> list[ForkedWorker]:
        """Add a handle to ``workers`` for each worker the fork server reported since the last look."""
        new = self._forked.new_workers() if self._forked is not None else []
        self.workers.extend(new)
        self._stoppable.extend(new)
        return new

    def registered(self) -> dict[str, str]:
        """Worker names and URIs currently in the name server."""
        host, port = self.settings.ns_address
        with Pyro4.locateNS(host, port, hmac_key=self.settings.hmac_bytes) as ns:
            return dict(ns.list(prefix=NAME_PREFIX))

    def wait_for_workers(self, count: int) -> None:
        """Block until at least ``count`` workers are registered.

        Raises:
            ClusterError: a worker exited or the startup timeout passed.
        """
        deadline = time.monotonic() + self.startup_timeout
        self._collect_forked()
        # Every process while the cluster starts (the fork server may fail before the name server
        # answers); later, not those stopped before (tests stop workers, then start more).
        watched = [p for p in self._stoppable if not self._started or p.poll() is None]
        while True:
            new = self._collect_forked()
            # Until the fork server has forked them all, its pipe says more than the name server
            # and asking costs nothing (each name server poll is a connection that competes for CPU).
            if self._forked_all() and len(self.registered()) >= count:
                return
            for proc in [*watched, *new]:
                self._check_alive(proc, "a worker")
            if time.monotonic() > deadline:
                raise ClusterError(f"only {len(self.registered())} of {count} workers registered "
                                   f"within {self.startup_timeout:.0f} s; logs in {self._logdir.name}")
            if self._forked is not None and not self._forked_all() and self._forked.process.poll() is None:
                self._forked.read(timeout=5 * POLL)  # back at once when a line arrives
            else:
                time.sleep(POLL)

    def _forked_all(self) -> bool:
        """Whether every worker of the fork server has its handle in ``workers``."""
        return self._forked is None or self._forked.count >= self.n_workers

    def close(self) -> None:
        """Stop every worker, then the name server; kill what does not stop in 10 s. Idempotent."""
        if self._finalizer.alive:
            log.info("stopping local cluster at %s", self.ns)
        self._finalizer()
        if self._forked is not None:
            self._forked.close()
        self._logdir.cleanup()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _spawn(self, label: str, cmd: list[str], env: dict[str, str],
               pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        full_env.update(self._env)
        full_env.update(env)
        log = open(Path(self._logdir.name) / f"{label}.log", "wb")
        with log:
            return subprocess.Popen([*cmd, "--lifeline-fd", str(self._lifeline_r)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    pass_fds=(*pass_fds, self._lifeline_r))

    def _check_alive(self, proc: WorkerProcess, what: str) -> None:
        if proc.poll() is None or proc.returncode in (-signal.SIGTERM, -signal.SIGKILL):
            return
        if isinstance(proc, ForkedWorker) and self._forked is not None and not self._started:
            # A child that fails to start is reported before the fork server logs why, then exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._forked.process.wait(timeout=5)
        logs = sorted(Path(self._logdir.name).glob("*.log"))
        tail = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.stat().st_size)
        raise ClusterError(f"{what} exited with status {proc.returncode} while starting:\n{tail}")


def _cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _worker_count(n_workers: int | None) -> int:
    """``n_workers`` checked, or one per core when None."""
    if n_workers is None:
        return os.cpu_count() or 1
    if isinstance(n_workers, bool) or not isinstance(n_workers, int):
        raise TypeError(f"n_workers must be an integer or None, not {type(n_workers).__name__}")
    if n_workers < 1:
        raise ValueError(f"a cluster needs at least one worker, not {n_workers}; pass a positive "
                         "count, or None for one worker per core")
    return n_workers


def _stop_all(workers: Sequence[WorkerProcess], nameservers: Sequence[subprocess.Popen[bytes]],
              lifeline: tuple[int, int]) -> None:
    """``terminate``, then close the lifeline (its children are stopped already)."""
    try:
        terminate(workers, nameservers)
    finally:
        for fd in lifeline:
            with contextlib.suppress(OSError):
                os.close(fd)


def terminate(workers: Sequence[WorkerProcess], nameservers: Sequence[subprocess.Popen[bytes]],
              timeout: float = 10.0) -> None:
    """Workers first (so they can unregister), then name servers; kill stragglers."""
    for group in (workers, nameservers):
        for proc in group:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in group:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
