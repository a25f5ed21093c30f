"""LocalCluster's own contract: what it accepts as a worker count, and that it starts nothing otherwise."""
from __future__ import annotations

import os

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
