"""pool.broadcast (issue 12 item 3) against real workers: tasks get the value, each worker is sent
it once, release (method, with block, shutdown) empties the workers' stores, and a worker that
joins later gets the value on first use."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import array_tasks
from polling import wait_until
from pyro_compute import LocalCluster, Pool, bulk
from pyro_compute.links import new_proxy
from pyro_compute.wire import register_wire

TESTS = Path(__file__).parent
T = 120
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}


@pytest.fixture(scope="module")
def bcluster() -> Iterator[LocalCluster]:
    with LocalCluster(2, allow_modules=["array_tasks"], env=ENV) as c:
        yield c


def held(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    """Each registered worker's broadcast store: how many values, how many bytes, how many received."""
    register_wire()
    out = {}
    for name, uri in cluster.registered().items():
        with new_proxy(uri, "marshal", cluster.settings, T) as p:
            out[name] = p.held()
    return out


def test_tasks_get_the_value_and_each_worker_is_sent_it_once(bcluster: LocalCluster) -> None:
    data = np.random.default_rng(1).random(1 << 18)  # 2 MiB
    with Pool(cluster=bcluster) as pool:
        h = pool.broadcast(data)
        before = bulk.sent_bytes
        got = list(pool.map(array_tasks.pid_and_sum, [h] * 60, [0.005] * 60, timeout=T))
        assert bulk.sent_bytes - before < 2 * data.nbytes + 256 * 1024  # at most once per worker
        assert all(total == float(data.sum()) for _, total in got)
        pids = {pid for pid, _ in got}
        assert 1 <= h.workers == len(pids) <= 2
        stores = held(bcluster)
        holding = [s for s in stores.values() if s["broadcasts"]]
        assert len(holding) == len(pids)
        assert all(s["bytes"] == data.nbytes and s["received"] == 1 for s in holding), stores
        # kwargs and submit take handles too; a second broadcast is a second value
        with pool.broadcast({"offset": 2.0, "scale": np.arange(3)}) as other:
            assert pool.submit(array_tasks.identity, other).result(timeout=T)["offset"] == 2.0
            assert pool.submit(array_tasks.scaled_sum, h, factor=2.0).result(timeout=T) == 2 * float(data.sum())
        h.release()
    assert all(s["broadcasts"] == 0 for s in held(bcluster).values())


def test_release_empties_the_workers_and_a_released_handle_is_refused(bcluster: LocalCluster) -> None:
    with Pool(cluster=bcluster) as pool:
        h = pool.broadcast(np.ones(100_000))
        assert sum(pool.map(array_tasks.scaled_sum, [h] * 10, [1.0] * 10, timeout=T)) == 10 * 100_000
        assert sum(s["broadcasts"] for s in held(bcluster).values()) == h.workers >= 1
        h.release()
        h.release()  # twice is fine
        assert sum(s["broadcasts"] for s in held(bcluster).values()) == 0
        with pytest.raises(ValueError, match="was released"):
            pool.submit(array_tasks.scaled_sum, h, 1.0).result(timeout=T)
        assert pool.submit(array_tasks.scaled_sum, np.ones(4), 1.0).result(timeout=T) == 4.0  # still serving


def test_with_block_and_pool_shutdown_release(bcluster: LocalCluster) -> None:
    with Pool(cluster=bcluster) as pool:
        with pool.broadcast(np.arange(50_000.0)) as h:
            assert pool.submit(array_tasks.scaled_sum, h, 1.0).result(timeout=T) == float(np.arange(50_000.0).sum())
            assert sum(s["broadcasts"] for s in held(bcluster).values()) == 1
        assert sum(s["broadcasts"] for s in held(bcluster).values()) == 0
        kept = pool.broadcast(np.arange(10.0))
        assert list(pool.map(array_tasks.scaled_sum, [kept] * 4, [1.0] * 4, timeout=T)) == [45.0] * 4
        assert sum(s["broadcasts"] for s in held(bcluster).values()) >= 1
    assert sum(s["broadcasts"] for s in held(bcluster).values()) == 0


def test_values_the_wire_cannot_carry_are_refused_at_once(bcluster: LocalCluster) -> None:
    with Pool(cluster=bcluster) as pool:
        with pytest.raises(TypeError, match="cannot be broadcast"):
            pool.broadcast(object())
        with pytest.raises(TypeError, match="cannot cross the wire"):
            pool.submit(array_tasks.identity, pool.broadcast(np.array([None], dtype=object))).result(timeout=T)


def test_a_worker_that_joins_later_gets_the_value_on_first_use() -> None:
    data = np.random.default_rng(2).random(1 << 17)
    with LocalCluster(1, allow_modules=["array_tasks"], env=ENV) as c:
        with Pool(cluster=c) as pool:
            h = pool.broadcast(data)
            first = {pid for pid, _ in pool.map(array_tasks.pid_and_sum, [h] * 4, timeout=T)}
            assert len(first) == 1 and h.workers == 1
            c.start_worker()
            wait_until(lambda: len(pool.workers) == 2, 60, "the pool to find the second worker")
            got = list(pool.map(array_tasks.pid_and_sum, [h] * 40, [0.05] * 40, chunksize=1, timeout=T))
            assert all(total == float(data.sum()) for _, total in got)
            pids = {pid for pid, _ in got}
            assert len(pids) == 2, "the new worker ran none of the tasks"
            assert h.workers == 2
            stores = held(c)
            assert [s["received"] for s in stores.values()] == [1, 1], stores
        assert all(s["broadcasts"] == 0 for s in held(c).values())
