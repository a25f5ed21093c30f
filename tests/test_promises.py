"""Values, not shapes: the promises that are numbers, checked against known work on real workers.

status figures after a known amount of work; ``Pool(seed=S)`` drawing new child seeds per call;
every SCOOP function's round trip; ``max_retries=2`` meaning two workers; a SIGTERM'd worker
finishing its running batch (no retry); π identical when results arrive out of order.
"""
from __future__ import annotations

import dataclasses
import json
import operator
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import promise_tasks
import pytest
import remote_tasks
from conftest import TESTS

from pyro_compute import Pool, WorkerUnavailableError, estimate_pi, futures
from pyro_compute.cli import main
from pyro_compute.cluster import LocalCluster

T = 60


def fresh_cluster(n: int) -> LocalCluster:
    """A cluster of its own (for counts and kills), whose workers may run the test task modules."""
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return LocalCluster(n, allow_modules=["remote_tasks", "promise_tasks"], env=env)


def fast_pool(cluster: LocalCluster, **settings: Any) -> Pool:
    return Pool(settings=dataclasses.replace(cluster.settings, **{"discovery_interval": 0.3, **settings}))


def seeds_of(results: Iterator[list[Any]]) -> list[int]:
    return [kwargs["seed"] for _, kwargs in results]


# -- status -------------------------------------------------------------------------------------

def test_status_figures_after_known_work(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    with fresh_cluster(2) as c:
        with Pool(cluster=c) as pool:
            assert sum(pool.map("pi_hits", [10**6] * 10, seed=1, timeout=T)) == 7852960
            assert pool.submit("integrate", "ball", 10**5, seed=2).result(timeout=T)["n"] == 10**5
            assert list(pool.map(remote_tasks.sleep_then, [0.25] * 4, range(4), chunksize=1,
                                 timeout=T)) == [0, 1, 2, 3]
            with pytest.raises(ValueError):
                pool.submit(remote_tasks.fail, "counted").result(timeout=T)
        monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", c.settings.hmac_key)
        assert main(["status", "--ns", c.ns, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        elapsed = time.monotonic() - started
        pids = sorted(p.pid for p in c.workers)
    assert sorted(r["pid"] for r in rows) == pids and all(r["reachable"] for r in rows)
    assert sum(r["tasks"] for r in rows) == 10 + 1 + 4 + 1
    assert sum(r["samples"] for r in rows) == 10 * 10**6 + 10**5
    assert sum(r["errors"] for r in rows) == 1
    busy = sum(r["busy_seconds"] for r in rows)
    assert busy >= 4 * 0.25, "four 0.25 s sleeps ran, so the workers were busy at least 1 s"
    for r in rows:
        assert 0 < r["uptime"] <= elapsed
        assert 0 <= r["busy_seconds"] <= r["uptime"]
        assert r["busy_percent"] == pytest.approx(100 * r["busy_seconds"] / r["uptime"], rel=1e-9)
        # Judged against this test's own clock too, not only the row's uptime.
        assert r["busy_percent"] >= 100 * r["busy_seconds"] / elapsed
        if r["busy_seconds"] > 0:
            assert r["samples_per_second"] == pytest.approx(r["samples"] / r["busy_seconds"], rel=1e-9)
    assert sum(r["busy_percent"] for r in rows) >= 100 * 1.0 / elapsed


# -- seeds --------------------------------------------------------------------------------------

def test_pool_seed_gives_each_map_call_its_own_child_seeds(cluster: LocalCluster) -> None:
    def three_calls(seed: int) -> list[list[int]]:
        with Pool(cluster=cluster, seed=seed) as p:
            return [seeds_of(p.map(remote_tasks.call_args, range(3), timeout=T)),
                    seeds_of(p.map(remote_tasks.call_args, range(3), timeout=T)),
                    seeds_of(p.map_as_completed(remote_tasks.call_args, range(1), timeout=T))]

    first = three_calls(123)
    assert len({s for call in first for s in call}) == 7, f"calls share seeds: {first}"
    assert three_calls(123) == first, "a new Pool with the same seed draws the same sequence"
    other = three_calls(124)
    assert not {s for call in other for s in call} & {s for call in first for s in call}
    with Pool(cluster=cluster, seed=123) as p, Pool(cluster=cluster) as plain:
        # An explicit map seed wins over the pool's and means the same on any pool.
        assert seeds_of(p.map(remote_tasks.call_args, range(3), seed=5, timeout=T)) == \
            seeds_of(plain.map(remote_tasks.call_args, range(3), seed=5, timeout=T))


# -- SCOOP's API ----------------------------------------------------------------------------------

@pytest.fixture
def default_pool(cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=cluster) as pool:
        futures.set_default_pool(pool)
        try:
            yield pool
        finally:
            futures.set_default_pool(None)


def test_every_scoop_function_round_trips_values(default_pool: Pool) -> None:
    assert list(futures.map(remote_tasks.square, range(10))) == [i * i for i in range(10)]
    assert list(futures.map(operator.add, range(4), [10, 20, 30, 40, 50])) == [10, 21, 32, 43]
    # Input order even when later tasks finish first.
    delays = [0.3, 0.0, 0.2, 0.0]
    assert list(futures.map(remote_tasks.sleep_then, delays, "abcd", chunksize=1, timeout=T)) == list("abcd")
    done = list(futures.map_as_completed(remote_tasks.sleep_then, delays, "abcd", chunksize=1, timeout=T))
    assert sorted(done) == list("abcd") and done.index("a") >= 2
    assert futures.mapReduce(remote_tasks.square, operator.add, range(100)) == 328350
    assert futures.mapReduce(operator.mul, operator.add, [1, 2, 3], [4, 5, 6]) == 32
    f = futures.submit(remote_tasks.call_args, 1, "two", three=3, four=[4])
    assert f.result(timeout=T) == [[1, "two"], {"three": 3, "four": [4]}]
    fs = [futures.submit(remote_tasks.sleep_then, 0.05 * (3 - i), i) for i in range(4)]
    assert sorted(x.result(timeout=0) for x in futures.as_completed(fs, timeout=T)) == [0, 1, 2, 3]
    done_set, not_done = futures.wait(fs, timeout=T)
    assert done_set == set(fs) and not not_done
    first, _ = futures.wait([futures.submit(remote_tasks.sleep_then, 0.0, "fast"),
                             futures.submit(remote_tasks.sleep_then, 1.0, "slow")],
                            timeout=T, return_when=futures.FIRST_COMPLETED)
    assert [x.result(timeout=0) for x in first] == ["fast"]


def test_futures_submit_passes_keyword_arguments(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        futures.set_default_pool(pool)
        try:
            f = futures.submit("integrate", "sum_squares", samples=77, seed=2**64 - 1,
                               lower=[-1.0, 0.0], upper=[2.0, 0.5], dims=2)
            assert f.result(timeout=T) == {"n": 77, "sum": 125.80634037342008, "sumsq": 436.5633744972035}
        finally:
            futures.set_default_pool(None)


# -- faults -------------------------------------------------------------------------------------

def test_max_retries_2_means_two_workers() -> None:
    with fresh_cluster(3) as c, fast_pool(c, max_retries=2) as pool:
        names = set(c.registered())
        with pytest.raises(WorkerUnavailableError) as info:
            pool.submit(remote_tasks.crash).result(timeout=T)
        message = str(info.value)
        tried = {n for n in names if n in message}
        assert len(tried) == 2, f"the error should name the two workers that were tried: {message}"
        deadline = time.monotonic() + 10
        while sum(w.poll() is not None for w in c.workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a third attempt, if any, would kill the last worker by now
        assert sum(w.poll() is None for w in c.workers) == 1, "exactly two workers ran the task"
        assert pool.submit(remote_tasks.pid).result(timeout=T) in {w.pid for w in c.workers if w.poll() is None}


def test_a_sigtermed_worker_finishes_its_running_batch(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with fresh_cluster(2) as c, fast_pool(c) as pool:
        future = pool.submit(promise_tasks.logged_sleep, str(log), 1.5)
        deadline = time.monotonic() + T
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        pid = int(log.read_text().split()[1])
        worker = next(w for w in c.workers if w.pid == pid)
        worker.terminate()
        assert future.result(timeout=T) == pid
        assert worker.wait(timeout=30) == 0
        assert log.read_text().splitlines() == [f"start {pid}", f"end {pid}"], "the task ran again"
        assert len(c.registered()) == 1


def test_pi_is_identical_when_results_arrive_out_of_order(cluster: LocalCluster) -> None:
    """One worker stopped for 3 s holds early tasks while the other finishes later ones first."""
    samples, seed, tol, stop = 2**25, 77, 1.6e-4, 3.0  # tol reached after ~20 tasks of 2**25
    with Pool(cluster=cluster) as pool:
        started = time.monotonic()
        reference = estimate_pi(pool, samples, seed, tol)
        undisturbed = time.monotonic() - started
    stalled = cluster.workers[0]
    resume = threading.Timer(stop, stalled.send_signal, args=(signal.SIGCONT,))
    with Pool(cluster=cluster) as pool:
        try:
            stalled.send_signal(signal.SIGSTOP)
            resume.start()
            started = time.monotonic()
            shuffled = estimate_pi(pool, samples, seed, tol)
            elapsed = time.monotonic() - started
        finally:
            resume.cancel()
            stalled.send_signal(signal.SIGCONT)
    assert (shuffled.hits, shuffled.samples, shuffled.pi) == (reference.hits, reference.samples, reference.pi)
    assert shuffled.stderr == reference.stderr
    # The stopped worker did hold a task the estimate needed (else the schedule was not forced):
    # that task waited at least until the pool found the worker hung (over 1 s) and ran it elsewhere.
    assert elapsed >= undisturbed + 0.8, f"the estimate took {elapsed:.2f} s: no early task waited"
