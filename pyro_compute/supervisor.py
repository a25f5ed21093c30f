"""``compute-worker -n N``: warm the kernels once, fork N workers from that process, keep them serving.

::

    supervisor (warm kernels, no sockets, no threads)
      ├── fork → Worker NAME.0   (its own daemon, registered as pyro_compute.evaluator.NAME.0)
      ├── fork → Worker NAME.1
      └── ...    a child that dies is forked again under the same name; SIGTERM stops them all

The children share the warm parent's memory copy-on-write (Numba's compiled kernels, NumPy,
Pyro4), so N workers cost much less than N separately started ones and come up without compiling.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Iterable, NoReturn

import Pyro4.errors

from . import kernels
from .config import NAME_PREFIX, Settings
from .errors import ComputeError, ConfigError
from .worker import Worker, locate_ns

log = logging.getLogger(__name__)
READY_TIMEOUT = 120.0  # seconds a forked child has to build its daemon (it may import a script)
MAX_RESTART_DELAY = 30.0
STEADY_AFTER = 10.0  # a child that served this long before dying is restarted without delay growth
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask: taskset, cgroups, Slurm), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def worker_count(text: str) -> int:
    """Parse ``-n``: a whole number of at least 1, or ``auto`` for one worker per available core."""
    if text.strip().lower() == "auto":
        return available_cores()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers; give a whole "
                                         "number such as 4, or 'auto' for one per core") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} workers cannot serve anything; give at least 1, "
                                         "or 'auto' for one per core")
    return value


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``-n/--workers N|auto`` to a ``compute-worker`` style parser, unless it has it already."""
    try:
        parser.add_argument("-n", "--workers", type=worker_count, metavar="N|auto",
                            help="serve N workers from one warmed, forked process (auto: one per core; "
                                 "default 1, or under srun one per core of the task); each registers "
                                 "as NAME.0 ... NAME.N-1")
    except argparse.ArgumentError:
        return  # worker.build_parser has it once -n is wired into compute-worker itself


@dataclasses.dataclass
class _Slot:
    """One supervised child: its stable name and the process serving it now."""

    index: int
    name: str
    port: int
    pid: int = 0
    started: float = 0.0
    delay: float = 0.0
    restart_at: float = 0.0
    uri: str = ""


class Supervisor:
    """Fork ``count`` workers from this (warmed) process and keep each one serving until stopped.

    Args:
        settings: the settings every worker uses (name server, secret, bind host, ...).
        count: how many workers.
        name: base name; worker i registers as ``pyro_compute.evaluator.NAME.i`` (default HOST.PID).
        port: first port; worker i binds ``port + i`` (0: any free port for each).
        script: a script whose functions callers may run, as for ``compute-worker --script``.
        by_value: let the workers accept functions by value (needs a secret).
        restart_delay: seconds before a crashed child is forked again; doubles while it keeps crashing.
        restart: False leaves a child that died dead (LocalCluster: tests kill workers on purpose).
        report: called with ``fork NAME PID`` and ``exit PID CODE`` as children come and go.
        warm: load Numba and the kernels before forking, so every child shares them copy-on-write;
            False forks at once and each child loads them on its first kernel call.
        lifeline: the read end of LocalCluster's lifeline (``lifeline.py``): all stop once it says
            the cluster's owner is gone; -1 for none.
    """

    def __init__(self, settings: Settings, count: int, name: str | None = None, port: int = 0,
                 script: str | None = None, by_value: bool = False, restart_delay: float = 0.5,
                 restart: bool = True, report: Callable[[str], None] | None = None,
                 warm: bool = True, lifeline: int = -1) -> None:
        if count < 1:
            raise ConfigError(f"a supervisor needs at least one worker, not {count}")
        base = name or f"{socket.gethostname()}.{os.getpid()}"
        self.settings = settings
        self.script = script
        self.by_value = by_value
        self.restart_delay = restart_delay
        self.restart = restart
        self.warm = warm
        self._report = report or (lambda _: None)
        self.slots = [_Slot(i, f"{base}.{i}", port + i if port else 0, delay=restart_delay)
                      for i in range(count)]
        # A plain flag, not an Event: a signal handler that takes an Event's lock while the main
        # thread holds it (a second SIGTERM inside the first handler) deadlocks.
        self._stopping = False
        self._parent = os.getpid()
        self._wake_r, self._wake_w = os.pipe()  # stop() wakes run() at once, not after its 0.2 s nap
        os.set_blocking(self._wake_w, False)
        self._lifeline = lifeline  # readable once the LocalCluster that started us is gone (lifeline.py)
        self._poller = select.poll()  # not select.select: the lifeline's descriptor may exceed FD_SETSIZE
        for fd in (self._wake_r, lifeline):
            if fd >= 0:
                self._poller.register(fd, select.POLLIN)

    def start(self) -> None:
        """Warm the kernels, fork every worker and wait until each has built its daemon.

        Raises:
            ComputeError: a worker could not start (its reason is in the message); the others are stopped.
        """
        if self.warm:
            kernels.warm_up()
        pipes: list[int] = []
        try:
            pipes += [self._fork(slot) for slot in self.slots]
            for slot, fd in zip(self.slots, pipes):
                self._await_ready(slot, fd)
        except BaseException:
            self.shutdown()
            raise
        finally:
            for fd in pipes:
                _close_quietly(fd)
        log.info("supervisor %d serves %d workers", os.getpid(), len(self.slots))

    def run(self, watch: Callable[[float], bool] | None = None) -> None:
        """Restart children that die until ``stop()``; then stop them all (they drain and unregister).

        Args:
            watch: called with a timeout each round instead of sleeping; returning True stops.
        """
        wait = watch or self._nap
        try:
            while not self._stopping and not wait(0.2):
                now = time.monotonic()
                for slot in self.slots:
                    if slot.pid and self._reaped(slot):
                        self._schedule_restart(slot, now)
                    elif not slot.pid and self.restart and now >= slot.restart_at:
                        self._restart(slot)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask ``run()`` to finish; safe from a signal handler and to call twice."""
        self._stopping = True
        with contextlib.suppress(OSError):  # full: a wake-up is pending already
            os.write(self._wake_w, b"x")

    def _nap(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until ``stop()``; True once the lifeline says our owner is gone."""
        ready = {fd for fd, _ in self._poller.poll(seconds * 1000)}
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        if self._lifeline in ready:
            log.warning("the process that started these workers exited; stopping them")
            return True
        return False

    @property
    def pids(self) -> list[int]:
        """Process ids of the children alive now."""
        return [slot.pid for slot in self.slots if slot.pid]

    def shutdown(self, timeout: float | None = None) -> None:
        """SIGTERM every child, wait for them to drain and unregister, kill those that do not."""
        self._stopping = True
        if timeout is None:
            timeout = min(self.settings.call_timeout, 30.0) + 10.0
        for slot in self.slots:
            if slot.pid:
                _signal(slot.pid, signal.SIGTERM)
        deadline, nap = time.monotonic() + timeout, 0.002
        while self.pids and time.monotonic() < deadline:
            for slot in self.slots:
                if slot.pid:
                    self._reaped(slot)
            if self.pids:  # idle children stop in ~10 ms; one finishing a batch may take seconds
                time.sleep(nap)
                nap = min(nap * 2, 0.05)
        for slot in self.slots:
            if slot.pid:
                log.warning("worker %s (pid %d) did not stop in %.0f s; killing it", slot.name, slot.pid, timeout)
                _signal(slot.pid, signal.SIGKILL)
                os.waitpid(slot.pid, 0)
                self._report(f"exit {slot.pid} {-signal.SIGKILL}")
                slot.pid = 0
                self._unregister_dead(slot)

    def _reaped(self, slot: _Slot) -> bool:
        """Whether the slot's child has exited (and was reaped); logs an unexpected exit."""
        try:
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = slot.pid, 0
        if pid == 0:
            return False
        code = os.waitstatus_to_exitcode(status)
        self._report(f"exit {slot.pid} {code}")
        if not self._stopping and self.restart:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            log.warning("worker %s (pid %d) %s after %.1f s; starting it again", slot.name, slot.pid,
                        how, time.monotonic() - slot.started)
        slot.pid = 0
        return True

    def _schedule_restart(self, slot: _Slot, now: float) -> None:
        """Restart soon; back off while the child keeps dying young."""
        if now - slot.started >= STEADY_AFTER:
            slot.delay = self.restart_delay
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, MAX_RESTART_DELAY)

    def _restart(self, slot: _Slot) -> None:
        self._unregister_dead(slot)
        try:
            fd = self._fork(slot)
            try:
                self._await_ready(slot, fd)
            finally:
                _close_quietly(fd)
            log.info("worker %s serves again (pid %d)", slot.name, slot.pid)
        except (ComputeError, OSError) as e:
            log.warning("worker %s did not restart: %s", slot.name, e)
            if slot.pid:
                _signal(slot.pid, signal.SIGKILL)
                os.waitpid(slot.pid, 0)
                slot.pid = 0
            self._schedule_restart(slot, time.monotonic())

    def _fork(self, slot: _Slot) -> int:
        """Fork one child serving ``slot``; return the read end of its readiness pipe."""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: a SIGTERM meant for the child must reach its own handler,
        # not the supervisor's that it inherits until it installs one.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                self._child(slot, write_fd, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        slot.pid, slot.started, slot.uri = pid, time.monotonic(), ""
        self._report(f"fork {slot.name} {pid}")
        return read_fd

    def _await_ready(self, slot: _Slot, fd: int) -> None:
        """Read the child's ``ready URI`` or ``error TEXT`` line.

        Raises:
            ComputeError: the child reported an error, exited, or said nothing in time.
        """
        line, deadline = b"", time.monotonic() + READY_TIMEOUT
        # In short steps, so that a SIGTERM does not wait for a child that hangs while starting.
        while not line.endswith(b"\n") and not self._stopping and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                line += chunk
        kind, _, text = line.decode(errors="replace").strip().partition(" ")
        if kind == "ready":
            slot.uri = text
            return
        if self._stopping:
            return  # asked to stop meanwhile: run() stops this child with the others
        if kind == "error":
            raise ComputeError(text)
        raise ComputeError(f"worker {slot.name} (pid {slot.pid}) exited or did not start within "
                           f"{READY_TIMEOUT:.0f} s; see its log above")

    def _child(self, slot: _Slot, fd: int, mask: Iterable[int]) -> NoReturn:
        """Serve ``slot`` in the forked child; never returns."""
        code = 1
        try:
            _die_with_parent(self._parent)
            _close_quietly(self._wake_r)
            _close_quietly(self._wake_w)
            worker = _ChildWorker(self.settings, slot, self.script, self.by_value, mask, self.warm)
            os.write(fd, f"ready {worker.worker.uri}\n".encode())
            os.close(fd)
            fd = -1
            print(f"ready {worker.worker.name} {worker.worker.uri}", flush=True)
            worker.serve()
            code = 0
        except SystemExit:
            code = 0  # stopped before it served
        except (ComputeError, OSError) as e:
            if fd < 0:
                log.error("worker %s failed: %s", slot.name, e)
            else:
                os.write(fd, f"error worker {slot.name} cannot start: {e}\n".encode())
            code = 2
        except BaseException:  # the child must never return into the supervisor's code
            log.exception("worker %s failed", slot.name)
        finally:
            _flush_quietly()
            os._exit(code)

    def _unregister_dead(self, slot: _Slot) -> None:
        """Remove a dead child's name from the name server if it still points at that child."""
        if not slot.uri:
            return
        try:
            with locate_ns(self.settings) as ns:
                if str(ns.lookup(NAME_PREFIX + slot.name)) == slot.uri:
                    ns.remove(NAME_PREFIX + slot.name)
        except Pyro4.errors.PyroError as e:
            log.debug("cannot remove the stale registration of %s: %s", slot.name, e)


class _ChildWorker:
    """The Worker of one forked child, with SIGTERM/SIGINT handlers that stop it."""

    def __init__(self, settings: Settings, slot: _Slot, script: str | None, by_value: bool,
                 mask: Iterable[int], warm: bool) -> None:
        self._stopping = False
        _handle_signals(self._on_signal)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM that came meanwhile lands here
        self.worker = Worker(settings, name=slot.name, port=slot.port, script=script, by_value=by_value,
                             warm=warm)
        if self._stopping:
            raise SystemExit(0)

    def _on_signal(self, *_: Any) -> None:
        # Slurm signals every process of a step and the supervisor forwards the same SIGTERM: a
        # second handler inside the first one's Event.set would wait for that Event's lock forever.
        if self._stopping:
            return
        self._stopping = True
        worker: Worker | None = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()

    def serve(self) -> None:
        self.worker.serve()


def _handle_signals(handler: Callable[..., Any]) -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, handler)


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGTERM this child when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before the prctl took effect
        raise SystemExit(0)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own; waitpid collects it
        os.kill(pid, sig)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # closed already
        os.close(fd)


def _flush_quietly() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()


def serve_many(settings: Settings, count: int, name: str | None = None, port: int = 0,
               script: str | None = None, by_value: bool = False,
               watch: Callable[[float], bool] | None = None, **options: Any) -> int:
    """Serve ``count`` forked workers until SIGTERM/SIGINT (or ``watch`` says stop); return the exit status.

    Pyro4 must already be configured (``worker.configure_pyro``). Returns 2 when a worker cannot
    start (the reason goes to stderr), 0 after a clean stop. ``watch`` is as for ``Supervisor.run``;
    ``options`` go to ``Supervisor``.
    """
    supervisor = Supervisor(settings, count, name=name, port=port, script=script, by_value=by_value,
                            **options)
    _handle_signals(lambda *_: supervisor.stop())
    try:
        supervisor.start()
    except ComputeError as e:
        print(f"compute-worker: error: {e}", file=sys.stderr)
        return 2
    supervisor.run(watch)
    return 0
