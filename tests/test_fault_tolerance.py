"""Workers dying, stalling, joining and leaving, and the name server restarting, mid-run."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any, Iterator

import Pyro4
import pytest
import remote_tasks
from conftest import TESTS

from pyro_compute import Pool, WorkerUnavailableError
from pyro_compute.cluster import LocalCluster

T = 60


def make_cluster(n: int, **worker_env: str) -> LocalCluster:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **worker_env}
    return LocalCluster(n, allow_modules=["remote_tasks"], env=env)


def make_pool(cluster: LocalCluster, **settings: Any) -> Pool:
    fast = {"discovery_interval": 0.3, **settings}
    return Pool(settings=dataclasses.replace(cluster.settings, **fast))


def take(results: Iterator[Any], n: int) -> list[Any]:
    return [next(results) for _ in range(n)]


def test_worker_killed_mid_map_changes_nothing() -> None:
    counts = [6 * 10**7] * 80
    with make_cluster(2) as c, make_pool(c) as pool:
        reference = list(pool.map("pi_hits", counts, seed=2024, chunksize=1, timeout=T))
        results = pool.map("pi_hits", counts, seed=2024, chunksize=1, timeout=T)
        got = take(results, 10)
        os.kill(c.workers[0].pid, signal.SIGKILL)
        got += list(results)
        assert got == reference
        assert len(pool.workers) == 1


def test_worker_joining_mid_map_gets_work() -> None:
    with make_cluster(1) as c, make_pool(c) as pool:
        results = pool.map(remote_tasks.slow_pid, [0.05] * 120, chunksize=1, timeout=T)
        first = take(results, 5)
        newcomer = c.start_worker()
        rest = list(results)
        assert set(first) == {c.workers[0].pid}
        assert newcomer.pid in rest


def test_worker_leaving_on_sigterm_loses_nothing() -> None:
    with make_cluster(3) as c, make_pool(c) as pool:
        results = pool.map(remote_tasks.sleep_then, [0.02] * 150, range(150), chunksize=1, timeout=T)
        got = take(results, 10)
        c.workers[0].terminate()
        got += list(results)
        assert got == list(range(150))
        assert c.workers[0].wait(timeout=10) == 0
        assert len(c.registered()) == 2


def test_name_server_restart_mid_run() -> None:
    with make_cluster(2, PYRO_COMPUTE_DISCOVERY_INTERVAL="0.3") as c, make_pool(c) as pool:
        results = pool.map(remote_tasks.slow_pid, [0.02] * 200, chunksize=1, timeout=T)
        got = take(results, 20)
        c.stop_nameserver(signal.SIGKILL)
        got += take(results, 60)  # the pool keeps using the workers it knows
        c.start_nameserver()
        got += list(results)
        assert len(got) == 200 and set(got[20:80]) == {w.pid for w in c.workers}
        deadline = time.monotonic() + 20
        while len(c.registered()) < 2:
            assert time.monotonic() < deadline, "workers did not register again"
            time.sleep(0.1)
        with Pool(cluster=c) as fresh:
            assert fresh.submit(remote_tasks.add, 1, 2).result(timeout=T) == 3


def test_stopped_worker_is_detected_without_waiting_for_the_call_timeout() -> None:
    with make_cluster(2) as c, make_pool(c) as pool:  # call_timeout stays 300 s
        stalled = c.workers[0]
        try:
            results = pool.map(remote_tasks.sleep_then, [0.01] * 300, range(300), chunksize=1, timeout=T)
            got = take(results, 20)
            stalled.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            got += list(results)
            assert got == list(range(300))
            assert len(pool.workers) == 1
            assert time.monotonic() - started < 30
        finally:
            stalled.send_signal(signal.SIGCONT)


def test_all_workers_gone_fails_pending_work_with_a_clear_error() -> None:
    with make_cluster(2) as c, make_pool(c, worker_wait=1.0) as pool:
        for w in c.workers:
            w.kill()
            w.wait(timeout=10)
        future = pool.submit(remote_tasks.add, 1, 2)
        with pytest.raises(WorkerUnavailableError, match="no worker was reachable"):
            future.result(timeout=T)


def test_a_task_that_kills_workers_is_given_up_after_max_retries() -> None:
    with make_cluster(3) as c, make_pool(c, max_retries=3) as pool:
        with pytest.raises(WorkerUnavailableError) as info:
            pool.submit(remote_tasks.crash).result(timeout=T)
        message = str(info.value)
        assert "remote_tasks:crash" in message and "3 workers" in message
        assert all(name in message for name in c.registered())  # killed ones stay registered


def test_user_errors_are_not_retried(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        before = _error_count(cluster)
        with pytest.raises(ValueError):
            pool.submit(remote_tasks.fail, "once").result(timeout=T)
        assert _error_count(cluster) == before + 1


def test_cancelled_tasks_never_run(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        fs = [pool.submit(remote_tasks.sleep_then, 0.3, i) for i in range(8)]
        assert fs[-1].cancel() and fs[-2].cancel()
        assert [f.result(timeout=T) for f in fs[:6]] == list(range(6))
        assert fs[-1].cancelled() and fs[-2].cancelled()


def _error_count(cluster: LocalCluster) -> int:
    total = 0
    for uri in cluster.registered().values():
        with Pyro4.Proxy(uri) as proxy:
            proxy._pyroHmacKey = cluster.settings.hmac_bytes
            total += proxy.stats()["errors"]
    return total
