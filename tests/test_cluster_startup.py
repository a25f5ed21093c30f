"""LocalCluster's start-up shape (issue 12 item 5, B7): one warmed process forks the workers, a light
name server, worker handles that behave like ``subprocess.Popen``, a fast and complete stop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import children
from launch_helpers import child_env
import remote_tasks
from pyro_compute import Pool
from pyro_compute.cluster import ForkedWorker, LocalCluster
from pyro_compute.errors import ClusterError

T = 60  # seconds for any one result: a 2-core machine shared with other test runs


def _mapped(pid: int, part: str) -> bool:
    """Whether process ``pid`` has a file whose path contains ``part`` mapped (a loaded library)."""
    return any(part in m.path for m in psutil.Process(pid).memory_maps(grouped=True))


def test_workers_are_forked_from_one_warmed_process_and_share_its_memory(cluster: LocalCluster) -> None:
    forked = [w for w in cluster.workers if isinstance(w, ForkedWorker)]
    assert len(forked) >= 2
    parents = {psutil.Process(w.pid).ppid() for w in forked}
    assert len(parents) == 1, "every worker comes from the same fork server"
    server = psutil.Process(parents.pop())
    assert server.ppid() == os.getpid() and "pyro_compute.worker" in " ".join(server.cmdline())
    assert _mapped(server.pid, "llvmlite"), "the fork server warmed the kernels before forking"
    for w in forked:
        mem = psutil.Process(w.pid).memory_full_info()
        # A separately started worker holds ~70 MiB of its own (USS); a forked one shares most.
        assert mem.uss < 0.5 * mem.rss, (w, mem)


def test_the_name_server_loads_neither_numpy_nor_numba(cluster: LocalCluster) -> None:
    assert cluster.nameserver is not None
    for library in ("numpy", "numba", "llvmlite"):
        assert not _mapped(cluster.nameserver.pid, library), library


def test_a_forked_worker_handle_behaves_like_popen() -> None:
    with LocalCluster(2, allow_modules=["remote_tasks"], env=child_env()) as c, Pool(cluster=c) as pool:
        first, second = c.workers
        assert isinstance(first, ForkedWorker) and first.poll() is None and first.returncode is None
        with pytest.raises(subprocess.TimeoutExpired):
            first.wait(timeout=0.1)
        first.kill()
        assert first.wait(timeout=T) == -signal.SIGKILL == first.returncode
        second.terminate()  # drains and unregisters: a clean exit
        assert second.wait(timeout=T) == 0
        time.sleep(1.0)  # a worker that died stays dead: LocalCluster's workers are not restarted
        assert [w.poll() for w in c.workers] == [-signal.SIGKILL, 0]
        more = c.start_worker()  # later workers are separate processes, as before
        assert pool.submit(remote_tasks.pid).result(timeout=T) == more.pid
        first.send_signal(signal.SIGTERM)  # to a worker that is gone: nothing happens
    assert more.poll() is not None


def test_close_stops_every_process_quickly() -> None:
    before = {p.pid for p in children()}
    c = LocalCluster(2)
    started = [p for p in children() if p.pid not in before]
    assert len(started) == 4, started  # name server, fork server, two workers
    t = time.monotonic()
    c.close()
    assert time.monotonic() - t < 10  # ~0.15 s on a quiet machine; generous for a loaded one
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    c.close()  # idempotent


def test_workers_that_cannot_start_fail_the_cluster_at_once_with_their_reason() -> None:
    before = {p.pid for p in children()}
    t = time.monotonic()
    with pytest.raises(ClusterError, match="cannot listen on 192.0.2.7"):
        LocalCluster(2, env={"PYRO_COMPUTE_HOST": "192.0.2.7"})  # TEST-NET: no address of ours
    assert time.monotonic() - t < 30  # the error, not the 60 s start-up timeout
    assert {p.pid for p in children()} == before


WARM = """
import sys
import numba
import numpy as np
from pyro_compute import kernels
kernels.warm_up()
assert "scipy.linalg" not in sys.modules, "the BLAS probe was skipped"

@numba.njit
def user_code(a, b):
    return np.dot(a, b), np.correlate(a, b)[0], np.linalg.det(np.eye(2) * a[0])

print(user_code(np.arange(1.0, 4.0), np.ones(3)))
"""


def test_warm_up_skips_scipy_yet_njit_code_with_blas_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True, timeout=300,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(6.0, 6.0, 1.0)"
