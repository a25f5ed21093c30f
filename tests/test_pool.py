"""Pool against a real LocalCluster: ordering, streaming, futures, errors, seeds."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import operator
import os

import numpy as np
import pytest
import remote_tasks

from pyro_compute import KernelError, Pool, RemoteTraceback, WorkerUnavailableError
from pyro_compute.cluster import LocalCluster, free_port
from pyro_compute.config import Settings

T = 30  # seconds any single result may take here


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster) -> Pool:
    with Pool(cluster=cluster) as p:
        yield p


def test_map_keeps_input_order_when_later_tasks_finish_first(pool: Pool) -> None:
    delays = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    assert list(pool.map(remote_tasks.sleep_then, delays, range(6), chunksize=1, timeout=T)) == list(range(6))


def test_map_zips_several_iterables_and_stops_at_the_shortest(pool: Pool) -> None:
    assert list(pool.map(operator.add, range(5), range(10, 100), timeout=T)) == [10, 12, 14, 16, 18]


def test_map_streams_an_endless_generator(pool: Pool) -> None:
    results = pool.map(remote_tasks.square, itertools.count())
    assert list(itertools.islice(results, 2000)) == [i * i for i in range(2000)]
    results.close()


def test_map_of_many_tiny_tasks_loses_nothing(pool: Pool) -> None:
    assert list(pool.map(operator.neg, range(20000), timeout=T)) == [-i for i in range(20000)]


def test_map_as_completed_yields_fast_results_first(pool: Pool) -> None:
    delays = [1.0, 0.0, 0.0, 0.0]
    order = list(pool.map_as_completed(remote_tasks.sleep_then, delays, ["slow", "a", "b", "c"],
                                       chunksize=1, timeout=T))
    assert sorted(order) == ["a", "b", "c", "slow"]
    # No task waits behind the slow one: the other worker runs all three meanwhile.
    assert order[-1] == "slow"


def test_map_reduce_folds_a_generator(pool: Pool) -> None:
    total = pool.map_reduce(remote_tasks.square, operator.add, (i for i in range(1000)), timeout=T)
    assert total == sum(i * i for i in range(1000))


def test_map_reduce_of_nothing_raises_like_reduce(pool: Pool) -> None:
    with pytest.raises(TypeError):
        pool.map_reduce(remote_tasks.square, operator.add, [])


def test_submit_works_with_wait_and_as_completed(pool: Pool) -> None:
    fs = [pool.submit(remote_tasks.sleep_then, 0.05 * i, i) for i in range(6)]
    done, not_done = cf.wait(fs, timeout=T)
    assert not not_done
    assert sorted(f.result(timeout=0) for f in cf.as_completed(fs, timeout=T)) == list(range(6))


def test_submit_passes_keyword_arguments(pool: Pool) -> None:
    assert pool.submit(remote_tasks.call_args, 1, x="y").result(timeout=T) == [[1], {"x": "y"}]


def test_tasks_spread_over_every_worker(pool: Pool, cluster: LocalCluster) -> None:
    futures = [pool.submit(remote_tasks.sleep_then, 0.02, None) for _ in range(20)]
    futures += [pool.submit(remote_tasks.pid) for _ in range(40)]
    pids = {f.result(timeout=T) for f in futures[20:]}
    assert pids <= {p.pid for p in cluster.workers}
    assert len(pids) == 2


def test_remote_exception_keeps_type_args_and_traceback(pool: Pool) -> None:
    future = pool.submit(remote_tasks.fail, "boom")
    with pytest.raises(ValueError) as info:
        future.result(timeout=T)
    assert info.value.args == ("boom",)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "REMOTE-MARKER" in str(info.value.__cause__)


def test_map_raises_a_task_error_where_it_stands(pool: Pool) -> None:
    results = pool.map(remote_tasks.fail_with_args, ["x"], timeout=T)
    with pytest.raises(ValueError, match="x"):
        next(results)
    values = pool.map(operator.truediv, [1, 1, 1], [1, 0, 2], timeout=T)
    assert next(values) == 1.0
    with pytest.raises(ZeroDivisionError):
        next(values)


def test_kernels_by_name_and_functions_by_reference(pool: Pool) -> None:
    hits = pool.submit("pi_hits", 100_000, seed=3).result(timeout=T)
    assert 0.75 < hits / 100_000 < 0.82
    assert pool.submit(abs, -4).result(timeout=T) == 4
    assert pool.submit("pyro_compute.tasks:increment", 1).result(timeout=T) == 2


def test_disallowed_function_is_refused_with_a_clear_error(pool: Pool) -> None:
    with pytest.raises(KernelError, match="not allowed"):
        pool.submit(os.getcwd).result(timeout=T)
    with pytest.raises(KernelError, match="unknown kernel"):
        pool.submit("no_such_kernel", 1).result(timeout=T)


def test_lambdas_cannot_be_sent_by_reference(pool: Pool) -> None:
    with pytest.raises(TypeError, match="top level"):
        pool.submit(lambda: 1)


def test_seed_gives_each_task_its_own_seed_sequence_child(pool: Pool) -> None:
    got = list(pool.map(remote_tasks.call_args, range(3), seed=42, timeout=T))
    expected = [int(np.random.SeedSequence(42, spawn_key=(i,)).generate_state(1, np.uint64)[0])
                for i in range(3)]
    assert [kw["seed"] for _, kw in got] == expected


def test_same_seed_same_answer_however_many_workers(pool: Pool) -> None:
    counts = [10**6] * 12
    reference = list(pool.map("pi_hits", counts, seed=11, timeout=T))
    assert list(pool.map("pi_hits", counts, seed=11, chunksize=5, timeout=T)) == reference
    assert list(pool.map("pi_hits", counts, seed=12, timeout=T)) != reference
    for n in (1, 3):
        with LocalCluster(n) as c, Pool(cluster=c) as p:
            assert len(p.workers) == n
            assert list(p.map("pi_hits", counts, seed=11, timeout=T)) == reference


def test_numpy_values_cross_the_wire_both_ways(pool: Pool) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = pool.submit(remote_tasks.identity, a).result(timeout=T)
    assert back.dtype == np.float32 and np.array_equal(back, a)
    assert list(pool.map(remote_tasks.type_name, [np.float64(1.5), 2], timeout=T)) == [
        "numpy.float64", "builtins.int"]
    assert type(pool.submit(remote_tasks.identity, np.int16(3)).result(timeout=T)) is np.int16


def test_map_timeout_raises_timeout_error(pool: Pool) -> None:
    results = pool.map(remote_tasks.sleep_then, [2.0], [0], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(results)


def test_shutdown_cancels_pending_and_refuses_new_work(cluster: LocalCluster) -> None:
    p = Pool(cluster=cluster)
    fs = [p.submit(remote_tasks.sleep_then, 0.2, i) for i in range(20)]
    p.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in fs)
    assert all(f.done() for f in fs)
    assert [f.result(timeout=0) for f in fs if not f.cancelled()] == [
        i for i, f in enumerate(fs) if not f.cancelled()]
    with pytest.raises(RuntimeError, match="shut down"):
        p.submit(remote_tasks.identity, 1)
    p.shutdown()  # twice is fine


def test_wrong_name_server_fails_fast() -> None:
    settings = Settings(ns=f"127.0.0.1:{free_port()}")
    with pytest.raises(WorkerUnavailableError, match="cannot reach the name server"):
        Pool(settings=settings)


def test_progress_bar_when_asked(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    assert sum(pool.map(remote_tasks.square, range(100), progress=True, timeout=T)) == 328350
    assert "100task" in capsys.readouterr().err.replace(" ", "")


def test_packed_args_are_refused_over_serpent(cluster: LocalCluster) -> None:
    import marshal

    import Pyro4
    uri = next(iter(cluster.registered().values()))
    with Pyro4.Proxy(uri) as proxy:
        proxy._pyroHmacKey = cluster.settings.hmac_bytes
        with pytest.raises(TypeError, match="only over the marshal serializer"):
            proxy.batch("pyro_compute.tasks:increment", marshal.dumps([(1,)]))
        proxy._pyroSerializer = "marshal"
        reply = proxy.batch("pyro_compute.tasks:increment", marshal.dumps([(1,), (2,)]))
        assert marshal.loads(reply["packed"]) == [2, 3]
        with pytest.raises(TypeError, match="not valid marshal data"):
            proxy.batch("pyro_compute.tasks:increment", b"\xff\x00garbage")


def test_a_result_the_wire_cannot_carry_fails_only_its_task(pool: Pool) -> None:
    pairs = [[("ok", 1)], [(None, 2)], [("ok", 3)]]
    results = pool.map(dict, pairs, chunksize=3, timeout=T)
    assert next(results) == {"ok": 1}
    with pytest.raises(TypeError, match="cannot be sent back: dict key None"):
        next(results)
    assert list(pool.map(dict, [pairs[2]], timeout=T)) == [{"ok": 3}]


# -- issue 12 items 4 and 6: flat chunks, remembered references ----------------------------------

def test_a_map_over_one_iterable_passes_each_item_whole(pool: Pool) -> None:
    items = [(1, 2), [3], "s", None, {"k": (4,)}, np.int64(5), np.arange(3)]
    got = list(pool.map(remote_tasks.identity, items, timeout=T))
    assert got[:5] == items[:5] and type(got[0]) is tuple
    assert got[5] == 5 and type(got[5]) is np.int64 and got[6].tolist() == [0, 1, 2]
    tiny = list(pool.map(remote_tasks.square, range(5000), chunksize=700, timeout=T))
    assert tiny == [i * i for i in range(5000)]
    seeded = [kw["seed"] for _, kw in pool.map(remote_tasks.call_args, range(4), seed=3, timeout=T)]
    again = [kw["seed"] for _, kw in pool.map(remote_tasks.call_args, [9, 8, 7, 6], seed=3, timeout=T)]
    assert seeded == again and len(set(seeded)) == 4  # seeds follow the task index, not the item


def test_a_flat_map_raises_the_failed_item_where_it_stands(pool: Pool) -> None:
    results = pool.map(remote_tasks.square, [1, 2, "x", 4], chunksize=4, timeout=T)
    assert next(results) == 1 and next(results) == 4
    with pytest.raises(TypeError):
        next(results)


def test_a_function_rebound_in_its_module_is_refused_after_being_sent(pool: Pool) -> None:
    original = remote_tasks.square
    assert pool.submit(original, 3).result(timeout=T) == 9  # its reference is remembered now
    remote_tasks.square = remote_tasks.identity  # type: ignore[assignment]
    try:
        with pytest.raises(TypeError, match="names another object"):
            pool.submit(original, 3)
    finally:
        remote_tasks.square = original
    assert pool.submit(original, 4).result(timeout=T) == 16
