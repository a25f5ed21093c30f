"""CPython's Lib/test/test_concurrent_futures (3.13) translated to Pool against a LocalCluster.

Each test keeps its CPython name and says which file it comes from. Tasks run on remote
workers, so ``time.sleep``, ``mul``, ``capture`` ... come from tests/sched_tasks.py; output a
task prints appears on the worker, so subprocess tests print from a done callback instead.
Tests that cannot apply to a remote pool are listed at the end with a one-line reason each.
"""
from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Iterator

import numpy as np
import pytest
import sched_tasks
from conftest import TESTS

from pyro_compute import Pool, as_completed, wait
from pyro_compute.cluster import LocalCluster

T = 60


def create_future(state: str = PENDING, exception: BaseException | None = None,
                  result: Any = None) -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    f._state = state  # type: ignore[attr-defined,unused-ignore]
    f._exception = exception  # type: ignore[attr-defined,unused-ignore]
    f._result = result  # type: ignore[attr-defined,unused-ignore]
    return f


PENDING_FUTURE = create_future(state=PENDING)
RUNNING_FUTURE = create_future(state=RUNNING)
CANCELLED_FUTURE = create_future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = create_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = create_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = create_future(state=FINISHED, result=42)


@pytest.fixture(scope="module")
def cpy_cluster() -> Iterator[LocalCluster]:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    with LocalCluster(2, allow_modules=["remote_tasks", "sched_tasks"], env=env) as c:
        yield c


@pytest.fixture
def executor(cpy_cluster: LocalCluster) -> Iterator[Pool]:
    """util.py ExecutorMixin: a fresh executor per test, shut down (with wait) afterwards."""
    started = time.monotonic()
    pool = Pool(cluster=cpy_cluster)
    yield pool
    pool.shutdown(wait=True)
    assert time.monotonic() - started < 120, "synchronization issue: test lasted too long"


def run_python(cluster: LocalCluster, body: str) -> subprocess.CompletedProcess[str]:
    """script_helper.assert_python_ok with the cluster's address and secret in the environment."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYRO")},
           "PYRO_COMPUTE_NS": cluster.ns, "PYRO_COMPUTE_HMAC_KEY": cluster.settings.hmac_key,
           "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env, text=True,
                          capture_output=True, timeout=T)


def pool_threads_end(threads: list[threading.Thread], timeout: float = 15) -> None:
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"{t.name} still runs"


def own_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    mine = [t for t in threading.enumerate() if t not in before]
    assert mine and all(t.name.startswith("pool-") for t in mine)
    return mine


# -- executor.py: ExecutorTest ---------------------------------------------------------------------

def test_submit(executor: Pool) -> None:
    assert executor.submit(pow, 2, 8).result(timeout=T) == 256


def test_submit_keyword(executor: Pool) -> None:
    assert executor.submit(sched_tasks.mul, 2, y=8).result(timeout=T) == 16
    future = executor.submit(sched_tasks.capture, 1, self=2, fn=3)
    assert future.result(timeout=T) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=sched_tasks.capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: Pool) -> None:
    assert list(executor.map(pow, range(10), range(10), timeout=T)) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3, timeout=T)) == list(
        map(pow, range(10), range(10)))


def test_map_exception(executor: Pool) -> None:
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], timeout=T)
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor: Pool) -> None:
    results: list[Any] = []
    with pytest.raises(cf.TimeoutError):
        for i in executor.map(sched_tasks.sleep, [0, 0, 3], timeout=1.5):
            results.append(i)
    assert results == [None, None]


def test_shutdown_race_issue12456(executor: Pool) -> None:
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_no_stale_references(executor: Pool) -> None:
    # CPython submits my_object.my_method; a bound method does not travel by reference (issue 9
    # item 11), so the object travels as the argument instead.
    my_object = np.arange(10)
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda _: collected.set())
    executor.submit(sched_tasks.mul, my_object, 2)  # deliberately discarding the future
    del my_object
    deadline = time.monotonic() + 30
    while not collected.wait(0.1) and time.monotonic() < deadline:
        gc.collect()
    assert collected.is_set(), "Stale reference not collected within timeout."
    assert ref() is None


def test_free_reference(executor: Pool) -> None:
    for obj in executor.map(sched_tasks.make_dummy_object, range(10), timeout=T):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


# -- test_shutdown.py: ExecutorShutdownTest and the thread-pool tests ------------------------------

def test_run_after_shutdown(executor: Pool) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 5)


def test_interpreter_shutdown(cpy_cluster: LocalCluster) -> None:
    proc = run_python(cpy_cluster, """
        import sched_tasks
        from pyro_compute import Pool
        if __name__ == "__main__":
            t = Pool()
            f = t.submit(sched_tasks.sleep_and_print, 1.0, "apple")
            f.add_done_callback(lambda f: print(f.result(), flush=True))
        """)
    assert not proc.stderr
    assert proc.stdout.strip() == "apple"


def test_submit_after_interpreter_shutdown(cpy_cluster: LocalCluster) -> None:
    proc = run_python(cpy_cluster, """
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        from pyro_compute import Pool
        if __name__ == "__main__":
            t = Pool()
            t.submit(abs, -42).result(timeout=60)
        """)
    assert "RuntimeError: cannot schedule new tasks after interpreter shutdown" in proc.stderr
    assert proc.stdout.strip() == "runtime-error"


def test_hang_issue12364(executor: Pool) -> None:
    fs = [executor.submit(sched_tasks.sleep, 0.1) for _ in range(50)]
    executor.shutdown()
    for f in fs:
        f.result(timeout=T)


def test_cancel_futures(executor: Pool) -> None:
    fs = [executor.submit(sched_tasks.sleep, 0.1) for _ in range(50)]
    # Worker threads start at once; our dispatchers may lag the 50 submits on a loaded machine.
    deadline = time.monotonic() + 10
    while not fs[0].running() and time.monotonic() < deadline:
        time.sleep(0.001)
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    for f in others:
        assert f.done()
        assert f.exception(timeout=0) is None
    assert len(others) > 0


def test_hang_gh83386(cpy_cluster: LocalCluster) -> None:
    """shutdown(wait=False) doesn't hang at exit with running futures (and loses none)."""
    proc = run_python(cpy_cluster, """
        import sched_tasks
        from pyro_compute import Pool
        if __name__ == "__main__":
            t = Pool()
            f = t.submit(sched_tasks.sleep_and_print, 1.0, "apple")
            f.add_done_callback(lambda f: print(f.result(), flush=True))
            t.shutdown(wait=False)
        """)
    assert not proc.stderr
    assert proc.stdout.strip() == "apple"


def test_hang_gh94440(cpy_cluster: LocalCluster) -> None:
    """shutdown(wait=True) doesn't hang when a future was cancelled right before it."""
    executor = Pool(cluster=cpy_cluster)
    executor.submit(int).result(timeout=T)
    started = time.monotonic()
    executor.submit(int).cancel()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 5


def test_threads_terminate(cpy_cluster: LocalCluster) -> None:
    before = set(threading.enumerate())
    executor = Pool(cluster=cpy_cluster)
    for _ in range(3):
        executor.submit(sched_tasks.sleep, 0.2)
    threads = own_threads(before)
    executor.shutdown()
    pool_threads_end(threads)


def test_context_manager_shutdown(cpy_cluster: LocalCluster) -> None:
    before = set(threading.enumerate())
    with Pool(cluster=cpy_cluster) as e:
        assert list(e.map(abs, range(-5, 5), timeout=T)) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        threads = own_threads(before)
    pool_threads_end(threads)


def test_del_shutdown(cpy_cluster: LocalCluster) -> None:
    # Differs from CPython in one step: a lazy map's iterator keeps its pool alive (it may still
    # read its input), so the threads end once the results are read and the iterator dropped.
    before = set(threading.enumerate())
    executor = Pool(cluster=cpy_cluster)
    res = executor.map(abs, range(-5, 5), timeout=T)
    threads = own_threads(before)
    del executor
    assert all(r == abs(v) for r, v in zip(res, range(-5, 5)))
    del res
    gc.collect()
    pool_threads_end(threads)


def test_shutdown_no_wait(cpy_cluster: LocalCluster) -> None:
    before = set(threading.enumerate())
    executor = Pool(cluster=cpy_cluster)
    res = executor.map(abs, range(-5, 5), timeout=T)
    threads = own_threads(before)
    executor.shutdown(wait=False)
    pool_threads_end(threads)
    assert all(r == abs(v) for r, v in zip(res, range(-5, 5)))


def test_thread_names_default(cpy_cluster: LocalCluster) -> None:
    before = set(threading.enumerate())
    executor = Pool(cluster=cpy_cluster)
    list(executor.map(abs, range(-5, 5), timeout=T))
    threads = own_threads(before)
    del executor
    gc.collect()
    for t in threads:
        assert t.name.startswith("pool-")
    pool_threads_end(threads)


def test_cancel_futures_wait_false(cpy_cluster: LocalCluster) -> None:
    proc = run_python(cpy_cluster, """
        import sched_tasks
        from pyro_compute import Pool
        if __name__ == "__main__":
            t = Pool()
            f = t.submit(sched_tasks.sleep_and_print, .1, "apple")
            f.add_done_callback(lambda f: f.cancelled() or print(f.result(), flush=True))
            t.shutdown(wait=False, cancel_futures=True)
        """)
    assert not proc.stderr
    assert proc.stdout.strip() in ["apple", ""]


# -- test_wait.py: WaitTests ----------------------------------------------------------------------

def test_20369(executor: Pool) -> None:
    future = executor.submit(sched_tasks.sleep, 1.5)
    done, not_done = wait([future, future], timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_first_completed(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.mul, 21, 2)
    future2 = executor.submit(sched_tasks.sleep, 1.5)
    done, not_done = wait([CANCELLED_FUTURE, future1, future2], timeout=T, return_when=cf.FIRST_COMPLETED)
    assert done == {future1}
    assert not_done == {CANCELLED_FUTURE, future2}


def test_first_completed_some_already_completed(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.sleep, 1.5)
    finished, pending = wait([CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, future1], timeout=T,
                             return_when=cf.FIRST_COMPLETED)
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future1}


def test_first_exception(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.mul, 2, 21)
    future2 = executor.submit(sched_tasks.sleep_and_raise, 1.5)
    future3 = executor.submit(sched_tasks.sleep, 3)
    finished, pending = wait([future1, future2, future3], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert finished == {future1, future2}
    assert pending == {future3}


def test_first_exception_some_already_complete(executor: Pool) -> None:
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(sched_tasks.sleep, 1.5)
    finished, pending = wait([SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE,
                              future1, future2], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1}
    assert pending == {CANCELLED_FUTURE, future2}


def test_first_exception_one_already_failed(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.sleep, 2)
    finished, pending = wait([EXCEPTION_FUTURE, future1], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert finished == {EXCEPTION_FUTURE}
    assert pending == {future1}


def test_all_completed(executor: Pool) -> None:
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(sched_tasks.mul, 2, 21)
    finished, pending = wait([SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE,
                              future1, future2], timeout=T, return_when=cf.ALL_COMPLETED)
    assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, future1, future2}
    assert pending == set()


def test_timeout(executor: Pool) -> None:
    short_timeout = 0.050
    future = executor.submit(sched_tasks.sleep, short_timeout * 10)
    finished, pending = wait([CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future],
                             timeout=short_timeout, return_when=cf.ALL_COMPLETED)
    assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    assert pending == {future}


# -- test_as_completed.py: AsCompletedTests --------------------------------------------------------

def test_no_timeout(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.mul, 2, 21)
    future2 = executor.submit(sched_tasks.mul, 7, 6)
    completed = set(as_completed([CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE,
                                  future1, future2], timeout=T))
    assert completed == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future1, future2}


@pytest.mark.parametrize("timeout", [0, 0.100])
def test_future_times_out(executor: Pool, timeout: float) -> None:
    already_completed = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    completed_futures = set()
    future = executor.submit(sched_tasks.sleep, 1.0)
    with pytest.raises(cf.TimeoutError):
        for f in as_completed(already_completed | {future}, timeout):
            completed_futures.add(f)
    assert completed_futures == already_completed


def test_duplicate_futures(executor: Pool) -> None:
    future1 = executor.submit(sched_tasks.sleep, 2)
    completed = list(as_completed(itertools.repeat(future1, 3), timeout=T))
    assert len(completed) == 1


def test_free_reference_yielded_future() -> None:
    futures_list: list[cf.Future[Any]] = [cf.Future() for _ in range(8)]
    futures_list.append(create_future(state=CANCELLED_AND_NOTIFIED))
    futures_list.append(create_future(state=FINISHED, result=42))
    with pytest.raises(cf.TimeoutError):
        for future in as_completed(futures_list, timeout=0):
            futures_list.remove(future)
            wr = weakref.ref(future)
            del future
            gc.collect()
            assert wr() is None
    futures_list[0].set_result("test")
    for future in as_completed(futures_list, timeout=T):
        futures_list.remove(future)
        wr = weakref.ref(future)
        del future
        gc.collect()
        assert wr() is None
        if futures_list:
            futures_list[0].set_result("test")


def test_correct_timeout_exception_msg() -> None:
    futures_list = [CANCELLED_AND_NOTIFIED_FUTURE, PENDING_FUTURE, RUNNING_FUTURE, SUCCESSFUL_FUTURE]
    with pytest.raises(cf.TimeoutError) as info:
        list(as_completed(futures_list, timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"


# -- test_future.py: FutureTests on the futures a pool returns --------------------------------------

def test_done_callback_with_result(executor: Pool) -> None:
    got: list[Any] = []
    f = executor.submit(sched_tasks.sleep, 0.2)
    f.add_done_callback(lambda fut: got.append(fut.result()))
    wait([f], timeout=T)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [None]


def test_done_callback_with_exception(executor: Pool) -> None:
    got: list[BaseException | None] = []
    f = executor.submit(sched_tasks.sleep_and_raise, 0.1)
    f.add_done_callback(lambda fut: got.append(fut.exception()))
    wait([f], timeout=T)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got[0] is not None and got[0].args == ("this is an exception",)


def test_done_callback_with_cancel_and_already_cancelled(executor: Pool) -> None:
    blockers = [executor.submit(sched_tasks.sleep, 1.0) for _ in range(2)]
    time.sleep(0.3)
    f = executor.submit(sched_tasks.sleep, 0)
    was_cancelled: list[bool] = []
    f.add_done_callback(lambda fut: was_cancelled.append(fut.cancelled()))
    assert f.cancel()
    assert was_cancelled == [True]
    f.add_done_callback(lambda fut: was_cancelled.append(fut.cancelled()))
    assert was_cancelled == [True, True]
    wait(blockers, timeout=T)


def test_done_callback_already_successful_and_failed(executor: Pool) -> None:
    ok, bad = executor.submit(sched_tasks.mul, 2, 3), executor.submit(divmod, 1, 0)
    wait([ok, bad], timeout=T)
    got: list[Any] = []
    ok.add_done_callback(lambda fut: got.append(fut.result()))
    bad.add_done_callback(lambda fut: got.append(type(fut.exception())))
    assert got == [6, ZeroDivisionError]


def test_cancel_running_done(executor: Pool) -> None:
    running = executor.submit(sched_tasks.sleep, 1.0)
    other = executor.submit(sched_tasks.sleep, 1.0)
    time.sleep(0.3)
    queued = executor.submit(sched_tasks.sleep, 0)
    time.sleep(0.1)
    assert running.running() and not running.done()
    assert not running.cancel()  # a started task cannot be cancelled
    assert not queued.running() and not queued.done()
    assert queued.cancel() and queued.cancelled() and queued.done()
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    assert running.result(timeout=T) is None and other.result(timeout=T) is None
    assert running.done() and not running.running() and not running.cancelled()


def test_result_with_timeout(executor: Pool) -> None:
    f = executor.submit(sched_tasks.sleep, 1.0)
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0)
    assert f.result(timeout=T) is None


def test_exception_with_success(executor: Pool) -> None:
    f = executor.submit(sched_tasks.mul, 6, 7)
    assert f.exception(timeout=T) is None
    assert f.result(timeout=0) == 42


# -- Not applicable to a remote pool (one line each) ------------------------------------------------
# executor.py test_max_workers_negative: Pool has no max_workers; its size is the cluster's
#   (LocalCluster(0) raising ValueError is issue 9 item 10, tested with LocalCluster).
# test_shutdown.py test_thread_names_assigned: Pool has no thread_name_prefix option; every
#   pool thread is named pool-* (test_thread_names_default checks it).
# test_shutdown.py test_processes_terminate and the ProcessPool variants: the pool starts no
#   processes; workers are long-lived servers that outlive any pool.
# test_wait.py test_pending_calls_race: it blocks tasks on a threading.Event of the caller's
#   process, which a remote worker cannot see.
# test_future.py test_repr, test_multiple_set_result/exception, test_done_callback_raises*,
#   test_cancelled/test_done/test_running on hand-made states: they test the stdlib Future class,
#   which Pool returns unchanged; the tests above check those methods on pool futures instead.
# test_deadlock.py, test_init.py, test_process_pool.py: process-pool internals (pickling
#   failures in the call queue, initializer=, max_tasks_per_child) with no remote equivalent.
