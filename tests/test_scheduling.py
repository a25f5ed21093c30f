"""Scheduling against real processes: no head-of-line blocking, hung and restarted workers,
hung name servers, and the Executor contract items of issue 9 (signals, restarts on one port)."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any, Iterator

import numpy as np
import Pyro4
import Pyro4.errors
import pytest
import remote_tasks
from conftest import TESTS

from pyro_compute import Pool, WorkerUnavailableError
from pyro_compute.cluster import LocalCluster

T = 60


def make_cluster(n: int) -> LocalCluster:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return LocalCluster(n, allow_modules=["remote_tasks"], env=env)


def answers(uri: str, cluster: LocalCluster) -> bool:
    """Whether a worker completes a handshake (the test's own probe, independent of the pool)."""
    try:
        with Pyro4.Proxy(uri) as proxy:
            proxy._pyroHmacKey = cluster.settings.hmac_bytes
            proxy._pyroTimeout = 1.0
            proxy._pyroBind()
        return True
    except Pyro4.errors.CommunicationError:
        return False


def worker_tasks(cluster: LocalCluster) -> int:
    """Tasks the cluster's workers ran so far (from their stats)."""
    total = 0
    for uri in cluster.registered().values():
        with Pyro4.Proxy(uri) as proxy:
            proxy._pyroHmacKey = cluster.settings.hmac_bytes
            proxy._pyroTimeout = 10
            total += proxy.stats()["tasks"]
    return total


def gaps(results: Iterator[Any], n: int) -> tuple[list[Any], float]:
    """Consume ``n`` results; return them and the longest wait between two of them."""
    got, longest, last = [], 0.0, time.monotonic()
    for _ in range(n):
        got.append(next(results))
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return got, longest


# -- item 1: no head-of-line blocking ----------------------------------------------------------

def test_short_tasks_never_wait_behind_a_long_one(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        # Teach the pool that sleep_then is short: the worst case for pipelining behind it.
        assert list(pool.map(remote_tasks.sleep_then, [0.0] * 50, range(50), timeout=T)) == list(range(50))
        slow = pool.submit(remote_tasks.sleep_then, 4.0, "slow")
        time.sleep(0.1)
        started = time.monotonic()
        fs = [pool.submit(remote_tasks.sleep_then, 0.0, i) for i in range(20)]
        done, _ = cf.wait(fs, timeout=T)
        elapsed = time.monotonic() - started
        print(f"item 1: 20 tasks of 0 s beside a running 4 s task finished in {elapsed * 1000:.1f} ms")
        assert [f.result(timeout=0) for f in fs] == list(range(20))
        assert not slow.done()
        assert elapsed < 1.5  # 0.2 s on a quiet machine; generous for a loaded one
        assert slow.result(timeout=T) == "slow"


def test_a_task_queued_behind_busy_workers_is_not_running_and_can_be_cancelled(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        slow = [pool.submit(remote_tasks.sleep_then, 2.0, i) for i in range(2)]
        time.sleep(0.5)
        queued = pool.submit(remote_tasks.sleep_then, 0.0, "queued")
        time.sleep(0.2)
        assert all(f.running() for f in slow)
        assert not queued.running()
        assert queued.cancel()
        assert [f.result(timeout=T) for f in slow] == [0, 1]
        assert queued.cancelled()


# -- item 2: a hung worker costs seconds ---------------------------------------------------------

def test_a_stopped_worker_costs_seconds_and_is_used_again_after_sigcont() -> None:
    counts = [3 * 10**7] * 240
    with make_cluster(2) as c, Pool(cluster=c) as pool:  # shipped defaults
        reference: list[int] = list(pool.map("pi_hits", counts, seed=99, chunksize=1, timeout=T))
        stopped = c.workers[0]
        results: Iterator[int] = pool.map("pi_hits", counts, seed=99, chunksize=1, timeout=T)
        try:
            got, _ = gaps(results, 20)
            stopped.send_signal(signal.SIGSTOP)
            rest, stall = gaps(results, len(counts) - 20)
            print(f"item 2: longest wait for a result with one worker stopped: {stall:.2f} s")
            assert got + rest == reference
            assert stall < 15
            assert len(pool.workers) == 1
        finally:
            stopped.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        while stopped.pid not in {f.result(timeout=T) for f in
                                  [pool.submit(remote_tasks.slow_pid, 0.05) for _ in range(8)]}:
            assert time.monotonic() - resumed < 10, "the resumed worker was not used again within 10 s"
        print(f"item 2: resumed worker used again after {time.monotonic() - resumed:.2f} s")


# -- item 3: restarted workers are used again -----------------------------------------------------

def test_workers_restarted_on_the_same_name_and_port_are_picked_up() -> None:
    with make_cluster(2) as c, Pool(cluster=c) as pool:
        assert pool.submit(remote_tasks.add, 1, 2).result(timeout=T) == 3
        places = {name.removeprefix("pyro_compute.evaluator."): Pyro4.URI(uri)
                  for name, uri in c.registered().items()}
        for w in list(c.workers):
            w.kill()
            w.wait(timeout=10)
        future = pool.submit(remote_tasks.add, 2, 3)  # fails over both dead workers, then waits
        time.sleep(1.0)
        assert not future.done() and pool.workers == []
        for name, uri in places.items():
            c.start_worker("--name", name, "--port", str(uri.port), wait=False)
        uris = [str(u) for u in places.values()]
        while not all(answers(u, c) for u in uris):
            time.sleep(0.02)
        back = time.monotonic()
        assert future.result(timeout=T) == 5
        pickup = time.monotonic() - back
        print(f"item 3: restarted workers picked up {pickup:.2f} s after they answered "
              f"(discovery interval {pool.settings.discovery_interval} s)")
        assert pickup < pool.settings.discovery_interval + 3
        assert list(pool.map(remote_tasks.square, range(50), timeout=T)) == [i * i for i in range(50)]


# -- item 4: nothing hangs ---------------------------------------------------------------------------

def test_a_stopped_name_server_fails_pool_creation_within_seconds(cluster: LocalCluster) -> None:
    with make_cluster(1) as c:
        assert c.nameserver is not None
        c.nameserver.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(WorkerUnavailableError, match=f"name server at {c.ns}"):
                Pool(cluster=c)
            elapsed = time.monotonic() - started
            print(f"item 4: Pool() with a stopped name server failed after {elapsed:.2f} s")
            assert elapsed < 15
        finally:
            c.nameserver.send_signal(signal.SIGCONT)


def test_a_running_pool_keeps_working_while_the_name_server_is_stopped() -> None:
    with make_cluster(2) as c, Pool(cluster=c) as pool:
        assert c.nameserver is not None
        c.nameserver.send_signal(signal.SIGSTOP)
        try:
            assert list(pool.map(remote_tasks.square, range(300), timeout=T)) == [i * i for i in range(300)]
            time.sleep(pool.settings.discovery_interval * 2)
            assert len(pool.workers) == 2
        finally:
            c.nameserver.send_signal(signal.SIGCONT)
        pool.shutdown()


def test_a_map_with_every_worker_dead_raises_instead_of_hanging() -> None:
    with make_cluster(2) as c:
        settings = c.settings.__class__(**{**vars(c.settings), "worker_wait": 2.0})
        with Pool(settings=settings) as pool:
            for w in c.workers:
                w.kill()
                w.wait(timeout=10)
            started = time.monotonic()
            with pytest.raises(WorkerUnavailableError, match=f"not answering: .*{c.registered().popitem()[0]}"):
                list(pool.map(remote_tasks.square, range(20), timeout=T))
            assert time.monotonic() - started < 20


def test_shutdown_after_a_map_timed_out_on_stopped_workers_returns_promptly() -> None:
    with make_cluster(2) as c:
        pool = Pool(cluster=c)
        assert pool.submit(remote_tasks.add, 1, 1).result(timeout=T) == 2
        for w in c.workers:
            w.send_signal(signal.SIGSTOP)
        try:
            results = pool.map(remote_tasks.square, range(100), timeout=1.0)
            with pytest.raises(cf.TimeoutError):
                list(results)
            started = time.monotonic()
            pool.shutdown()
            elapsed = time.monotonic() - started
            print(f"item 4: shutdown after a timed-out map took {elapsed:.2f} s")
            assert elapsed < 10
        finally:
            for w in c.workers:
                w.send_signal(signal.SIGCONT)


# -- item 5: map survives shutdown ------------------------------------------------------------------

def test_map_results_survive_the_with_block_and_shutdown_without_wait(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        results = pool.map(remote_tasks.square, range(100), chunksize=1)
    assert list(results) == [i * i for i in range(100)]
    pool = Pool(cluster=cluster)
    results = pool.map(remote_tasks.sleep_then, [0.001] * 100, range(100), chunksize=1)
    pool.shutdown(wait=False)
    assert list(results) == list(range(100))


# -- item 6: the interpreter waits for pending futures ----------------------------------------------

def run_script(cluster: LocalCluster, body: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYRO")},
           "PYRO_COMPUTE_NS": cluster.ns, "PYRO_COMPUTE_HMAC_KEY": cluster.settings.hmac_key,
           "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env, text=True,
                          capture_output=True, timeout=T)


def test_the_interpreter_does_not_exit_while_futures_are_pending(cluster: LocalCluster) -> None:
    proc = run_script(cluster, """
        import remote_tasks
        from pyro_compute import Pool
        pool = Pool()
        future = pool.submit(remote_tasks.sleep_then, 1.0, 42)
        future.add_done_callback(lambda f: print("ran", f.result(), flush=True))
        print("main done", flush=True)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["main", "done", "ran", "42"]


def test_submit_from_an_atexit_hook_raises_runtime_error(cluster: LocalCluster) -> None:
    proc = run_script(cluster, """
        import atexit
        @atexit.register
        def run_last():
            try:
                pool.submit(id, None)
            except RuntimeError as e:
                print("runtime-error:", e, flush=True)
        import remote_tasks
        from pyro_compute import Pool
        pool = Pool()
        print(pool.submit(remote_tasks.add, 40, 2).result(timeout=60), flush=True)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "42"
    assert "runtime-error: cannot schedule new tasks after interpreter shutdown" in proc.stdout


# -- item 7: closing a map cancels what has not started ---------------------------------------------

def test_closing_a_map_or_its_timeout_cancels_every_unstarted_task(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        before = worker_tasks(cluster)
        results = pool.map(remote_tasks.sleep_then, [0.3] * 40, range(40), chunksize=1)
        assert next(results) == 0
        results.close()  # type: ignore[attr-defined]
        time.sleep(1.0)
        ran = worker_tasks(cluster) - before
        assert ran <= 6, f"{ran} of 40 tasks ran after the map was closed"
        before = worker_tasks(cluster)
        results = pool.map(remote_tasks.sleep_then, [0.3] * 40, range(40), chunksize=1, timeout=1.0)
        with pytest.raises(cf.TimeoutError):
            list(results)
        time.sleep(1.0)
        ran = worker_tasks(cluster) - before
        assert ran <= 14, f"{ran} of 40 tasks ran after the map timed out"


def test_map_timeout_counts_from_the_map_call(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        results = pool.map(remote_tasks.sleep_then, [3.0], [1], timeout=1.0)
        time.sleep(1.5)
        started = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert time.monotonic() - started < 0.5


# -- item 8: no stale references; a dropped pool stops its threads ----------------------------------

def collected(ref: weakref.ref[Any], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return ref() is None


def test_arguments_and_results_of_finished_tasks_are_released(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        arg = np.arange(1000.0)
        arg_ref = weakref.ref(arg)
        future = pool.submit(remote_tasks.identity, arg)
        result = future.result(timeout=T)
        result_ref = weakref.ref(result)
        del arg, future, result
        assert collected(arg_ref) and collected(result_ref)
        arrays = [np.full(10, i) for i in range(30)]
        refs = [weakref.ref(a) for a in arrays]
        assert sum(int(a[0]) for a in pool.map(remote_tasks.identity, arrays, timeout=T)) == 435
        del arrays
        assert all(collected(r) for r in refs)


def test_the_by_value_cache_does_not_keep_every_lambda(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster, by_value=True) as pool:
        fn = lambda x: x + 1  # noqa: E731
        ref = weakref.ref(fn)
        with pytest.raises(Exception, match="by value"):  # these workers refuse code by value
            pool.submit(fn, 1).result(timeout=T)
        del fn
        assert collected(ref)


def test_a_pool_dropped_without_shutdown_stops_its_threads(cluster: LocalCluster) -> None:
    before = set(threading.enumerate())
    pool = Pool(cluster=cluster)
    assert pool.submit(remote_tasks.add, 1, 2).result(timeout=T) == 3
    mine = [t for t in threading.enumerate() if t not in before]
    assert mine and all(t.name.startswith("pool-") for t in mine)
    del pool
    gc.collect()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in mine):
        assert time.monotonic() < deadline, [t.name for t in mine if t.is_alive()]
        time.sleep(0.05)


# -- item 9: an input that raises ------------------------------------------------------------------

def failing_input(k: int) -> Iterator[int]:
    yield from range(k)
    raise ZeroDivisionError(f"input broke at {k}")


@pytest.mark.parametrize("chunksize", [None, 1, 5, 100])
def test_results_before_an_input_error_are_delivered_then_the_error(cluster: LocalCluster,
                                                                     chunksize: int | None) -> None:
    with Pool(cluster=cluster) as pool:
        got: list[int] = []
        with pytest.raises(ZeroDivisionError, match="at 7"):
            for value in pool.map(remote_tasks.square, failing_input(7), chunksize=chunksize, timeout=T):
                got.append(value)
        assert got == [i * i for i in range(7)]
        unordered: list[int] = []
        with pytest.raises(ZeroDivisionError):
            for value in pool.map_as_completed(remote_tasks.square, failing_input(7), chunksize=chunksize,
                                               timeout=T):
                unordered.append(value)
        assert sorted(unordered) == [i * i for i in range(7)]


# -- a worker that closes an idle connection is reconnected to, not given up on ---------------------

class Relay:
    """A TCP relay in front of a worker that can drop every connection, as an idle timeout does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the worker has gone (the cluster is stopping): refuse as it would
                client.close()
                continue
            self.accepted += 1
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other direction closed it
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
            s.close()

    def drop_all(self) -> None:
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self.conns = []

    def close(self) -> None:
        self.drop_all()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.server.close()
        time.sleep(0.2)  # let the pumps close their sockets


def test_a_worker_closing_idle_connections_is_reconnected_not_given_up() -> None:
    with make_cluster(1) as c:
        name, uri = next(iter(c.registered().items()))
        target = Pyro4.URI(uri)
        relay = Relay((target.host, target.port))
        try:
            relayed = f"{name}.relayed"
            with Pyro4.locateNS(*c.settings.ns_address, hmac_key=c.settings.hmac_bytes) as ns:
                ns.register(relayed, f"PYRO:{target.object}@127.0.0.1:{relay.port}")
            with Pool(cluster=c) as pool:
                assert sorted(pool.workers) == sorted([name, relayed])
                tasks = [0.005] * 200
                assert list(pool.map(remote_tasks.sleep_then, tasks, range(200), chunksize=1,
                                     timeout=T)) == list(range(200))
                before = relay.accepted
                relay.drop_all()  # the worker "closed" every connection the pool had through it
                time.sleep(0.2)
                assert list(pool.map(remote_tasks.sleep_then, tasks, range(200), chunksize=1,
                                     timeout=T)) == list(range(200))
                assert relay.accepted > before  # the pool reconnected through the relay...
                assert relayed in pool.workers  # ...and did not count the worker as lost
        finally:
            relay.close()


def test_done_callbacks_may_use_the_pool_when_shutdown_cancels_their_futures(cluster: LocalCluster) -> None:
    pool = Pool(cluster=cluster)
    blockers = [pool.submit(remote_tasks.sleep_then, 0.5, i) for i in range(2)]
    time.sleep(0.2)
    queued = [pool.submit(remote_tasks.sleep_then, 0.0, i) for i in range(5)]
    seen: list[list[str]] = []
    for f in queued:
        f.add_done_callback(lambda _: seen.append(pool.workers))  # takes the scheduler's lock
    stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    stopper.join(T)
    assert not stopper.is_alive(), "shutdown deadlocked in a done callback"
    assert all(f.cancelled() for f in queued) and len(seen) == 5
    assert [f.result(timeout=T) for f in blockers] == [0, 1]


# -- issue 12 item 4: a lone caller sends its own call ---------------------------------------------

def test_a_lone_caller_sends_its_own_call_and_the_executor_contract_holds(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        inline = pool._scheduler.inline
        assert pool.submit(remote_tasks.add, 0, 0).result(timeout=T) == 0  # measured from now on
        before = inline.sent
        assert [pool.submit(remote_tasks.add, i, 1).result(timeout=T) for i in range(50)] == list(range(1, 51))
        sent = inline.sent - before
        print(f"item 4: {sent} of 50 sequential submit().result() calls sent by the calling thread")
        assert sent >= 25  # the rest lost the race to a dispatcher (1 ms later) on a loaded machine
        # A lone submit nobody asks the result of still runs promptly (the waker hands it over).
        started = time.monotonic()
        lone = pool.submit(remote_tasks.add, 2, 2)
        assert cf.wait([lone], timeout=T).done == {lone}
        assert time.monotonic() - started < 1.0 and lone.result(timeout=0) == 4
        assert next(cf.as_completed([pool.submit(remote_tasks.add, 3, 3)], timeout=T)).result(timeout=0) == 6
        # result(timeout) shorter than the task's measured time never sends the call itself.
        assert pool.submit(remote_tasks.sleep_then, 1.0, "x").result(timeout=T) == "x"
        slow = pool.submit(remote_tasks.sleep_then, 1.0, "y")
        started = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0.2)
        assert time.monotonic() - started < 0.8
        assert slow.result(timeout=T) == "y"
        # Errors and cancellation are the same as through a dispatcher.
        with pytest.raises(ValueError, match="remote failure"):
            pool.submit(remote_tasks.fail, "remote failure").result(timeout=T)
        assert pool.submit(remote_tasks.fail, "again").exception(timeout=T).args == ("again",)


def worker_listening_on(c: LocalCluster, port: int) -> subprocess.Popen[bytes]:
    """The cluster's worker process whose daemon listens on ``port``."""
    import psutil
    for w in c.workers:
        if any(s.laddr.port == port and s.status == psutil.CONN_LISTEN
               for s in psutil.Process(w.pid).net_connections(kind="tcp")):
            return w
    raise AssertionError(f"no worker listens on port {port}")


def test_a_worker_hung_during_a_call_sent_by_its_caller_costs_seconds() -> None:
    with make_cluster(2) as c, Pool(cluster=c) as pool:
        sched = pool._scheduler
        assert pool.submit(remote_tasks.slow_pid, 0.5).result(timeout=T) > 0  # measured: 0.5 s
        for _attempt in range(5):  # until the call is caught being sent by its caller
            got: list[int] = []
            caller = threading.Thread(target=lambda: got.append(pool.submit(remote_tasks.slow_pid, 0.5)
                                                                  .result(timeout=T)))
            caller.start()
            deadline = time.monotonic() + 5
            while not sched.inline.lent and caller.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)
            with sched.lock:
                lent = [d.link for d in sched.inline.lent]
            if lent:
                break
            caller.join(T)
        assert lent, "no call was sent by its caller in 5 tries"
        stopped = worker_listening_on(c, Pyro4.URI(lent[0].uri).port)
        stopped.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            caller.join(T)
            elapsed = time.monotonic() - started
            print(f"item 4: a call sent by its caller to a stopped worker finished elsewhere after {elapsed:.2f} s")
            assert not caller.is_alive() and got and got[0] != stopped.pid
            assert elapsed < 15
        finally:
            stopped.send_signal(signal.SIGCONT)


# -- issue 11 item 6 / issue 12 item 6: chunk sizing and the cost per chunk ---------------------------

def test_chunk_sizes_follow_task_times_weighted_by_tasks_per_call() -> None:
    from pyro_compute import Settings
    from pyro_compute.scheduler import MAX_CHUNK, Scheduler
    sched = Scheduler(Settings())
    sched.ok = 2
    assert sched.chunk_size("t", 20_000) == 1  # unmeasured
    sched.record("t", 0.001, 2500)  # 0.4 µs per task
    for _ in range(30):  # the tail of a map: one-task calls whose fixed cost dominates
        sched.record("t", 0.00001, 1)
    assert sched.per_item["t"] < 1e-6
    assert 2500 <= sched.chunk_size("t", 20_000) <= MAX_CHUNK  # 4 or 5 calls, not 64
    assert sched.chunk_size("t", 20_000) == sched.chunk_size("t", 9)  # no shrinking below 2 ms of work
    sched.record("s", 0.1003, 1)  # sleep(0.1)
    assert sched.chunk_size("s", None) == 2
    assert sched.chunk_size("s", 100) == 2 and sched.chunk_size("s", 3) == 1  # guided at the end
    sched.record("m", 0.0101, 1)  # 10 ms tasks: about 0.2 s per call
    assert 15 <= sched.chunk_size("m", None) <= 25


def test_dispatchers_behind_long_calls_are_parked_out_of_the_wake_up_scan(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        sched = pool._scheduler
        assert pool.submit(remote_tasks.sleep_then, 0.5, 0).result(timeout=T) == 0  # measured: long
        results = pool.map(remote_tasks.sleep_then, [0.5] * 8, range(8), timeout=T)
        time.sleep(0.25)
        with sched.lock:
            busy = [link for link in sched.links.values() if link.calls]
            siblings = {d for link in busy for d in link.dispatchers if d.slot not in link.calls}
            parked, idle = set(sched.parked), set(sched.idle)
        assert len(busy) == 2 and siblings and siblings <= parked and not siblings & idle
        assert list(results) == list(range(8))
        with sched.lock:
            assert not sched.parked and all(not link.calls for link in sched.links.values())
