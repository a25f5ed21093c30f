"""Pool(dashboard=URL): a pool in another process reports to a standalone dashboard."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyro_compute.cluster import LocalCluster
from pyro_compute.config import Settings
from pyro_compute.dashboard import DashboardServer
from pyro_compute.errors import ConfigError
from pyro_compute.pool import Pool
from test_dashboard_reports import runs, wait_until

SCRIPT = """
import sys, remote_tasks
from pyro_compute import Pool
with Pool(dashboard=sys.argv[1]) as pool:
    print(sum(pool.map(remote_tasks.square, (i for i in range(90)), chunksize=3, timeout=120)))
    print(pool.dashboard_url == sys.argv[1], type(pool.dashboard_run).__name__)
"""


def test_pool_in_a_subprocess_reports_to_the_dashboard_by_url(cluster: LocalCluster) -> None:
    env = {**os.environ, **cluster.settings.as_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    with DashboardServer(cluster.settings, port=0).start() as server:
        done = subprocess.run([sys.executable, "-c", SCRIPT, server.url], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        [shown] = wait_until("the subprocess's run finished on the dashboard", lambda: [
            r for r in runs(server.url) if r["finished"] is not None])
    assert done.stdout.split() == [str(sum(i * i for i in range(90))), "True", "RemoteRun"]
    assert shown["title"].startswith("pool, pid ") and shown["title"] != f"pool, pid {os.getpid()}"
    assert shown["counts"] == {"done": 90, "queued": 0, "running": 0} and shown["progress"] is None
    assert shown["task_count"] == 30 and shown["dropped"] == 0
    assert {t["worker"] for t in shown["tasks"]} <= set(cluster.registered())


def test_pool_refuses_a_dashboard_url_it_cannot_use(cluster: LocalCluster) -> None:
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        Pool(cluster=cluster, dashboard="ftp://127.0.0.1:8787")
