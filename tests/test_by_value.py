"""Functions sent by value (cloudpickle): only to workers that opted in and have a secret."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyro_compute import KernelError, LocalCluster, Pool

T = 30


@pytest.fixture(scope="module")
def by_value_cluster() -> LocalCluster:
    with LocalCluster(1, by_value=True) as c:
        yield c


def test_lambdas_and_closures_run_where_workers_allow_it(by_value_cluster: LocalCluster) -> None:
    factor = 7
    with Pool(cluster=by_value_cluster, by_value=True) as pool:
        assert list(pool.map(lambda x: x * factor, range(5), timeout=T)) == [0, 7, 14, 21, 28]

        def nested(x: int) -> int:
            return x + factor

        assert pool.submit(nested, 1).result(timeout=T) == 8
        assert pool.map_reduce(lambda x: x, lambda a, b: a + b, range(100), timeout=T) == 4950


def test_worker_without_the_flag_refuses_with_instructions(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster, by_value=True) as pool:
        with pytest.raises(KernelError, match="--allow-by-value"):
            pool.submit(lambda: 1).result(timeout=T)


def test_pool_without_by_value_explains_how_to_enable_it(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        with pytest.raises(TypeError, match="by_value=True"):
            pool.submit(lambda: 1)


def test_worker_refuses_by_value_without_a_secret() -> None:
    proc = subprocess.run([sys.executable, "-m", "pyro_compute.worker", "--allow-by-value",
                           "--ns", "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "needs a shared secret" in proc.stderr
