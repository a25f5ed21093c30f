"""Small maps spread: no call queues behind a busy worker while another worker has none."""
from __future__ import annotations

import remote_tasks
from polling import wait_until
from pyro_compute import LocalCluster, Pool

T = 60


def test_two_short_tasks_on_two_idle_workers_run_on_both(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        wait_until(lambda: len(pool.workers) == 2, T, "the pool to see both workers")
        list(pool.map(remote_tasks.slow_pid, [0.03] * 8, timeout=T))  # the pool learns the task is short
        for _ in range(12):
            pids = list(pool.map(remote_tasks.slow_pid, [0.03, 0.03], timeout=T))
            assert len(set(pids)) == 2, "both tasks of a 2-task map ran on one worker while the other idled"
