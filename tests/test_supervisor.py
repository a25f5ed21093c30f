"""``compute-worker -n N`` (pyro_compute.supervisor): forked workers, restarts, clean stop, shared memory."""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

import remote_tasks
from launch_helpers import NameServer, call, child_env, pss, tree, wait_until
from pyro_compute import Pool, Settings
from pyro_compute.config import NAME_PREFIX
from pyro_compute.supervisor import available_cores, worker_count


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[NameServer]:
    with NameServer(secrets.token_hex(16), log=tmp_path / "ns.log") as server:
        yield server


def start(ns: NameServer, log: Path, *args: str, module: str = "pyro_compute.worker") -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--ns", ns.address,
                                 "--allow-module", "remote_tasks", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(PYRO_COMPUTE_HMAC_KEY=ns.key))


def names_of(ns: NameServer, base: str) -> dict[str, str]:
    return {k.removeprefix(NAME_PREFIX): v for k, v in ns.registered().items()
            if k.startswith(NAME_PREFIX + base + ".")}


def stop(proc: subprocess.Popen[bytes], timeout: float = 45) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_worker_count_parses_numbers_and_auto() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == available_cores() >= 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="give"):
            worker_count(bad)


def test_forked_workers_serve_restart_and_stop(ns: NameServer, tmp_path: Path) -> None:
    log = tmp_path / "sup.log"
    sup = start(ns, log, "-n", "2", "--name", "sup")
    try:
        names = wait_until(lambda: len(n := names_of(ns, "sup")) == 2 and n, 60,
                           lambda: f"2 forked workers did not register\n{log.read_text()}")
        assert set(names) == {"sup.0", "sup.1"}
        children = {p.pid for p in psutil.Process(sup.pid).children()}
        pids = {name: call(uri, ns.key, "info")["pid"] for name, uri in names.items()}
        assert set(pids.values()) == children, "each worker is a forked child of the supervisor"

        settings = Settings(ns=ns.address, hmac_key=ns.key, discovery_interval=0.5)
        with Pool(settings=settings) as pool:
            served = set(pool.map(remote_tasks.slow_pid, [0.05] * 40, timeout=60))
            assert served == children, "the pool used both forked workers"

            os.kill(pids["sup.0"], signal.SIGKILL)
            again = wait_until(lambda: (u := names_of(ns, "sup").get("sup.0")) and u != names["sup.0"] and u,
                               30, lambda: f"the killed worker was not restarted and registered again\n{log.read_text()}")
            new_pid = call(again, ns.key, "info")["pid"]
            assert new_pid != pids["sup.0"] and psutil.Process(new_pid).ppid() == sup.pid
            assert pool.submit(remote_tasks.add, 2, 3).result(timeout=30) == 5

        assert stop(sup) == 0
        assert names_of(ns, "sup") == {}, "SIGTERM unregisters every worker"
        assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
        assert "was killed by signal 9" in log.read_text()
    finally:
        stop(sup)


def test_workers_die_with_a_killed_supervisor(ns: NameServer, tmp_path: Path) -> None:
    sup = start(ns, tmp_path / "sup.log", "-n", "2", "--name", "orphans")
    try:
        wait_until(lambda: len(names_of(ns, "orphans")) == 2, 60, "the workers did not register")
        children = tree(sup.pid)[1:]
        assert len(children) == 2
        sup.kill()
        sup.wait(timeout=10)
        wait_until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
                   30, "forked workers outlived their killed supervisor")
    finally:
        for c in tree(sup.pid):
            c.kill()


def test_a_worker_that_cannot_start_fails_the_command_with_the_reason(ns: NameServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = start(ns, tmp_path / "sup.log", "-n", "2", "--name", "busy", "--port", str(port))
        assert sup.wait(timeout=60) == 2
    text = (tmp_path / "sup.log").read_text()
    assert "worker busy.0 cannot start" in text and "in use" in text, text
    assert "Traceback" not in text
    assert names_of(ns, "busy") == {}


def test_two_forked_workers_take_less_memory_than_two_separate_ones(ns: NameServer, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        began = time.monotonic()
        procs.append(start(ns, tmp_path / "forked.log", "-n", "2", "--name", "forked"))
        wait_until(lambda: len(names_of(ns, "forked")) == 2, 60, "the forked workers did not register")
        forked_start = time.monotonic() - began
        began = time.monotonic()
        for i in range(2):
            procs.append(start(ns, tmp_path / f"separate{i}.log", "--name", f"separate.{i}",
                               module="pyro_compute.worker"))
        wait_until(lambda: len(names_of(ns, "separate")) == 2, 60, "the separate workers did not register")
        separate_start = time.monotonic() - began
        # Both measured while all five processes run: shared libraries count the same for both.
        forked = pss(tree(procs[0].pid))
        separate = pss([psutil.Process(p.pid) for p in procs[1:]])
        print(f"\nPSS: supervisor + 2 forked workers {forked / 2**20:.1f} MiB, 2 separate workers "
              f"{separate / 2**20:.1f} MiB; start-up {forked_start:.2f} s vs {separate_start:.2f} s")
        assert forked < 0.8 * separate, (forked, separate)
    finally:
        for p in procs:
            stop(p)
