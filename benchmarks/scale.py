"""Scale benchmark (issue 11 item 6): one ``Pool`` driving 16 ... 256 forked workers on loopback.

``python -m benchmarks.scale [--workers 16,32,64,128,256] [--task-seconds 0.1] [--tasks-per-worker N]``

For each worker count: a fresh name server (``python -m pyro_compute.naming``) and ONE
supervisor (``compute-worker -n N``); start-up is the time from launching the supervisor until
all N names are registered. Then one ``Pool`` runs one untimed round of N tasks (imports,
connections, the chunk-size estimate) and one timed ``map`` of ``sleep_for(task_seconds)``.
Reported per row: efficiency (ideal / measured, ideal = tasks × task_seconds / N), start-up, the
client's threads and TCP sockets, its CPU seconds per task (the whole process, every thread), the
workers' CPU seconds per task (supervisor and workers: on loopback they share the client's cores),
the PSS of the supervisor and its workers, and how many cores other processes kept busy meanwhile.
Every process started here is in its own session and is stopped at the end, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime
import json
import io
import math
import pstats
import threading
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import psutil
import Pyro4
import Pyro4.constants
import Pyro4.errors

from pyro_compute import Pool, Settings
from pyro_compute.config import NAME_PREFIX

from .harness import REPO_ROOT, OtherLoad, log
from .workloads import sleep_for

BASE_NAME = "scale"
STARTUP_TIMEOUT = 600.0  # seconds for N workers to register on a loaded 2-core machine
STOP_TIMEOUT = 60.0      # seconds the supervisor has to drain and unregister before SIGKILL


@dataclasses.dataclass
class Result:
    """One row of the table: one worker count and task length."""

    workers: int
    task_seconds: float
    tasks: int
    seconds: float
    startup: float
    threads: int
    sockets: int
    cpu_per_task: float
    worker_cpu_per_task: float
    pss_mib: float
    workers_used: int
    other_cores: float
    loadavg: float
    runs: list[float] = dataclasses.field(default_factory=list)  # efficiency of every repetition

    @property
    def ideal(self) -> float:
        """Seconds the tasks need on N workers with no overhead at all."""
        return self.tasks * self.task_seconds / self.workers

    @property
    def efficiency(self) -> float:
        """Ideal time ÷ measured time."""
        return self.ideal / self.seconds

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {**dataclasses.asdict(self), "ideal": self.ideal, "efficiency": self.efficiency}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without PYRO*, with the repository root importable (benchmarks.workloads)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


class Fleet:
    """A name server and one ``compute-worker -n N`` supervisor, each in its own session."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.key = secrets.token_hex(16)
        self.address = f"127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.labels: dict[int, str] = {}  # pid: module it runs

    def _spawn(self, cmd: list[str], **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=child_env(**env), start_new_session=True)
        self.procs.append(proc)
        self.labels[proc.pid] = cmd[2]
        return proc

    def start(self) -> float:
        """Start both; return seconds from launching the supervisor until all N are registered."""
        host, _, port = self.address.rpartition(":")
        self._spawn([sys.executable, "-m", "pyro_compute.naming", "-n", host, "-p", port],
                    PYRO_HMAC_KEY=self.key)
        self._wait(lambda: self.registered() >= 0, 60, "the name server did not answer")
        began = time.perf_counter()
        self.supervisor = self._spawn(
            [sys.executable, "-m", "pyro_compute.worker", "-n", str(self.count), "--ns", self.address,
             "--name", BASE_NAME, "--allow-module", "benchmarks.workloads"],
            PYRO_COMPUTE_HMAC_KEY=self.key)
        self._wait(lambda: self.registered() == self.count, STARTUP_TIMEOUT,
                   f"{self.count} workers did not register")
        return time.perf_counter() - began

    def registered(self) -> int:
        """How many of this fleet's workers are in the name server; -1 if it does not answer."""
        host, _, port = self.address.rpartition(":")
        try:
            with Pyro4.Proxy(f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{host}:{port}") as ns:
                ns._pyroHmacKey = self.key.encode()
                ns._pyroTimeout = 10
                return len(ns.list(prefix=f"{NAME_PREFIX}{BASE_NAME}."))
        except Pyro4.errors.PyroError:
            return -1

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: {self.labels[dead[0].pid]} exited with status {dead[0].returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:.0f} s")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """Every process of the fleet alive now: name server, supervisor, forked workers."""
        found = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                found += [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        return found

    def worker_cpu_seconds(self) -> float:
        """CPU seconds the supervisor and its live workers have used."""
        assert self.supervisor is not None
        root = psutil.Process(self.supervisor.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def pss_mib(self) -> float:
        """PSS of the supervisor and its forked workers, in MiB."""
        assert self.supervisor is not None
        root = psutil.Process(self.supervisor.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_full_info().pss
        return total / 2**20

    def stop(self) -> None:
        """SIGTERM the supervisor (its workers drain and unregister), then the name server; SIGKILL what is left."""
        for proc in reversed(self.procs):  # supervisor first, while the name server can unregister
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its session still there
            proc.wait()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_snapshot() -> tuple[int, int]:
    """This process's threads and open TCP connections."""
    me = psutil.Process()
    return me.num_threads(), len(me.net_connections(kind="tcp"))


def cpu_seconds() -> float:
    """CPU seconds this process (every thread) has used."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


@contextlib.contextmanager
def thread_profiles(path: str | None) -> Iterator[None]:
    """Profile this thread and every thread started meanwhile by CPU time (not wall time); save to ``path``.

    Each new thread enables its own ``cProfile.Profile(time.thread_time)`` from its first profile
    event, so blocked time in ``recv`` or ``Condition.wait`` does not count, only CPU spent.
    """
    if path is None:
        yield
        return
    profiles = [cProfile.Profile(time.thread_time)]

    def hook(*_: Any) -> None:
        profiles.append(cProfile.Profile(time.thread_time))
        profiles[-1].enable()  # replaces this hook in the new thread

    threading.setprofile(hook)
    profiles[0].enable()
    try:
        yield
    finally:
        profiles[0].disable()
        threading.setprofile(None)
        stats = pstats.Stats(*profiles)
        stats.dump_stats(path)
        out = io.StringIO()
        pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(30)
        log(f"client CPU profile (every thread, by own CPU time) saved to {path}:\n{out.getvalue()}")


@contextlib.contextmanager
def open_pool(settings: Settings) -> Iterator[Pool]:
    """A Pool that cancels what is still queued when left by an exception (Ctrl-C), then waits."""
    pool = Pool(settings=settings)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def measure(count: int, task_seconds: float, tasks: int, profile: str | None = None) -> Result:
    """Start a fleet of ``count`` workers, run ``tasks`` tasks through one Pool, stop the fleet."""
    with Fleet(count) as fleet:
        startup = fleet.start()
        log(f"  {count} workers registered in {startup:.1f} s; pids {fleet.pids()}")
        settings = Settings(ns=fleet.address, hmac_key=fleet.key)
        timeout = max(120.0, 20 * tasks * task_seconds / count)
        with thread_profiles(profile), open_pool(settings) as pool:
            list(pool.map(sleep_for, [task_seconds] * count, timeout=timeout))  # untimed round
            with OtherLoad() as others:
                cpu, remote, began = cpu_seconds(), fleet.worker_cpu_seconds(), time.perf_counter()
                served = list(pool.map(sleep_for, [task_seconds] * tasks, timeout=timeout))
                seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
                remote = fleet.worker_cpu_seconds() - remote
            threads, sockets = client_snapshot()
            pss = fleet.pss_mib()
        if len(served) != tasks:
            raise RuntimeError(f"{tasks} tasks gave {len(served)} results")
        return Result(count, task_seconds, tasks, seconds, startup, threads, sockets, cpu / tasks,
                      remote / tasks, pss, len(set(served)), others.cores, os.getloadavg()[0])


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    header = ["workers", "task", "tasks", "ideal s", "measured s", "efficiency", "runs", "start-up s",
              "client threads", "client TCP sockets", "client CPU/task", "workers' CPU/task",
              "workers' PSS",
              "workers used", "other cores busy", "load 1 min"]
    lines = [header]
    for r in results:
        lines.append([str(r.workers), f"{r.task_seconds * 1e3:g} ms", f"{r.tasks:,}", f"{r.ideal:.2f}",
                      f"{r.seconds:.2f}", f"{r.efficiency:.1%}", spread(r.runs), f"{r.startup:.1f}", str(r.threads),
                      str(r.sockets), f"{r.cpu_per_task * 1e3:.3f} ms",
                      f"{r.worker_cpu_per_task * 1e3:.3f} ms", f"{r.pss_mib:,.0f} MiB",
                      str(r.workers_used), f"{r.other_cores:.2f}", f"{r.loadavg:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ["-" * w for w in widths])
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines)


def spread(runs: list[float]) -> str:
    """Efficiency range over the repetitions, e.g. ``93.1–96.0% (3)``."""
    if len(runs) < 2:
        return "1"
    return f"{min(runs):.1%}–{max(runs):.1%} ({len(runs)})"


def median_run(count: int, secs: float, tasks: int, repeat: int, profile: str | None) -> Result:
    """Measure a row ``repeat`` times (a fresh fleet each time); the run of median efficiency, with all runs' figures."""
    runs = []
    for i in range(repeat):
        runs.append(measure(count, secs, tasks, profile=profile if i == repeat - 1 else None))
        log(f"  efficiency {runs[-1].efficiency:.1%}")
    runs.sort(key=lambda r: r.efficiency)
    chosen = runs[(len(runs) - 1) // 2]
    chosen.runs = [r.efficiency for r in runs]
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="16,32,64,128,256", help="comma-separated worker counts")
    p.add_argument("--task-seconds", type=float, default=0.1, help="each task sleeps this long")
    p.add_argument("--tasks-per-worker", type=int, default=None,
                   help="tasks per worker in the timed map (default: enough for 5 s of ideal time, so "
                        "that one task more or less on the slowest worker moves efficiency by 2 %%)")
    p.add_argument("--short-row", default="32:0.01", metavar="WORKERS:SECONDS",
                   help="one more row with short tasks (default %(default)s; 'none' to skip)")
    p.add_argument("--repeat", type=int, default=1, help="runs per row (median shown, range beside it)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--profile", metavar="FILE", help="cProfile the client's threads by CPU time (last row) "
                   "into FILE (pstats) and print the top functions on stderr; slows the client")
    args = p.parse_args(argv)
    try:
        args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
        args.short = None if args.short_row == "none" else tuple(
            f(x) for f, x in zip((int, float), args.short_row.split(":"), strict=True))
    except ValueError:
        p.error("give --workers as numbers such as 16,32 and --short-row as WORKERS:SECONDS such as 32:0.01")
    if not args.workers or min(args.workers) < 1 or args.task_seconds <= 0 or args.repeat < 1:
        p.error("give at least one worker count of 1 or more, a positive --task-seconds and --repeat")
    return args


def tasks_for(count: int, task_seconds: float, per_worker: int | None) -> int:
    """Tasks of the timed map: ``per_worker`` each, or enough for 5 s of ideal time."""
    return count * (per_worker or max(1, math.ceil(5.0 / task_seconds)))


def main(argv: list[str] | None = None) -> int:
    """Run every row and print the table (or JSON); processes are stopped even on Ctrl-C or SIGTERM."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    plan = [(n, args.task_seconds, tasks_for(n, args.task_seconds, args.tasks_per_worker)) for n in args.workers]
    if args.short:
        n, secs = args.short
        plan.append((n, secs, tasks_for(n, secs, None)))
    started, load = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()
    results: list[Result] = []
    try:
        for i, (count, secs, tasks) in enumerate(plan):
            log(f"{count} workers, {tasks} tasks of {secs * 1e3:g} ms ...")
            results.append(median_run(count, secs, tasks, args.repeat,
                                      args.profile if i == len(plan) - 1 else None))
    except KeyboardInterrupt:
        log("interrupted; every process started here was stopped")
        return 130
    if args.json:
        log(table(results))
        print(json.dumps({"date": started.isoformat(timespec="seconds"), "cores": os.cpu_count(),
                          "loadavg_start": load, "loadavg_end": os.getloadavg(),
                          "rows": [r.as_dict() for r in results]}, indent=2))
    else:
        print(f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average at start "
              f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
