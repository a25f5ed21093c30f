"""LocalCluster's own contract: what it accepts as a worker count, and that it starts nothing otherwise."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil
import pytest

import launch_helpers
from conftest import children
from launch_helpers import child_env
from pyro_compute import Pool
from pyro_compute.cli import main
from pyro_compute.cluster import LocalCluster


@pytest.mark.parametrize("count", [0, -1, -8])
def test_zero_or_negative_workers_is_a_value_error_and_starts_nothing(count: int) -> None:
    before = {p.pid for p in children()}
    with pytest.raises(ValueError, match="at least one worker"):
        LocalCluster(count)
    assert {p.pid for p in children()} == before


@pytest.mark.parametrize("count", [1.5, "2", True])
def test_a_count_that_is_no_integer_is_a_type_error(count: object) -> None:
    with pytest.raises(TypeError, match="n_workers must be an integer"):
        LocalCluster(count)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", ["0", "-2"])
def test_cli_refuses_zero_or_negative_workers(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pi", "--samples", "10", "-n", count])
    assert info.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_one_worker_starts_and_stops() -> None:
    with LocalCluster(1) as c:
        assert len(c.registered()) == 1 and len(c.workers) == 1
        assert c.workers[0].poll() is None
    assert c.workers[0].poll() is not None


def test_workers_get_one_blas_thread_per_core_they_share_unless_the_caller_says_otherwise() -> None:
    cores = len(os.sched_getaffinity(0))
    with LocalCluster(2, allow_modules=["launch_helpers"], env=child_env()) as c, Pool(cluster=c) as pool:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            got = pool.submit(launch_helpers.env_var, var).result(timeout=60)
            assert got == os.environ.get(var, str(max(1, cores // 2))), var
    with LocalCluster(1, allow_modules=["launch_helpers"], env=child_env(OPENBLAS_NUM_THREADS="3")) as c, \
            Pool(cluster=c) as pool:
        assert pool.submit(launch_helpers.env_var, "OPENBLAS_NUM_THREADS").result(timeout=60) == "3"


OWNER = """
import sys, time, psutil
from pyro_compute import LocalCluster, Pool, tasks
cluster = LocalCluster(2)
cluster.start_worker()
cluster.wait_for_workers(3)
with Pool(cluster=cluster) as pool:
    pool.submit(tasks.noop).result()
print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
time.sleep(600)
"""


def test_a_killed_owner_leaves_no_cluster_process_behind() -> None:
    """SIGKILL the process that made a LocalCluster: its name server, fork server and workers all stop."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) >= 5, pids  # name server, fork server, its 2 workers, the extra worker
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.05)
        left = [pid for pid in pids if _running(pid)]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        if owner.stdout is not None:
            owner.stdout.close()
    for pid in left:  # do not leave them to the next test either
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"still running 20 s after their owner was killed: {left}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
