"""Issue 11 item 5: status shows the busy share of the last 10 s and tasks in flight, --watch
refreshes it, and 'run --ns' runs any script on by-value workers without restarting them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import remote_tasks
from pyro_compute import Pool
from pyro_compute.activity import Activity
from pyro_compute.cluster import LocalCluster
from pyro_compute.status import cluster_status

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_activity_counts_only_the_last_window() -> None:
    clock = Clock()
    a = Activity(window=10.0, clock=clock)
    clock.now += 30
    with a.busy():
        clock.now += 4           # busy 130..134
    clock.now += 8               # now 142: the window 132..142 holds 2 s of it
    assert a.snapshot()["recent_busy"] == pytest.approx(2.0)
    assert a.snapshot()["recent_window"] == 10.0
    with a.busy(), a.busy():     # nested blocks count once; the running one counts up to now
        clock.now += 3
        assert a.snapshot()["recent_busy"] == pytest.approx(3.0)
    clock.now += 20
    assert a.snapshot()["recent_busy"] == 0.0


def test_activity_counts_tasks_in_flight_until_they_finish() -> None:
    a = Activity()
    with a.waiting(5):
        with a.waiting(2):
            assert a.snapshot()["in_flight"] == 7
        assert a.snapshot()["in_flight"] == 5
    assert a.snapshot()["in_flight"] == 0


@pytest.fixture(scope="module")
def one_worker() -> Iterator[LocalCluster]:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    with LocalCluster(1, allow_modules=["remote_tasks"], env=env, startup_timeout=120) as c:
        yield c


def row(cluster: LocalCluster) -> dict[str, Any]:
    rows = cluster_status(cluster.settings)
    assert len(rows) == 1 and rows[0]["reachable"], rows
    return rows[0]


def test_status_busy_share_is_recent_not_lifetime(one_worker: LocalCluster) -> None:
    with Pool(cluster=one_worker) as pool:
        futures = [pool.submit(remote_tasks.sleep_then, 2.0, i) for i in range(3)]
        time.sleep(1.5)
        busy = row(one_worker)
        assert busy["in_flight"] >= 1
        assert busy["recent_busy_percent"] > 5.0
        assert [f.result(timeout=120) for f in futures] == [0, 1, 2]
    time.sleep(0.5)
    done = row(one_worker)
    assert done["in_flight"] == 0
    # 6 s of sleeping within the last ~10 s: the recent share is high.
    assert done["recent_busy_percent"] > 30.0, done
    time.sleep(11)  # one full window of idleness later
    idle = row(one_worker)
    assert idle["recent_busy_percent"] == 0.0, idle
    assert idle["busy_percent"] > 0.0  # the lifetime share still remembers the work


def test_status_watch_prints_again_until_ctrl_c(one_worker: LocalCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env.update(PYTHONPATH=str(ROOT), PYRO_COMPUTE_HMAC_KEY=one_worker.settings.hmac_key)
    p = subprocess.Popen([sys.executable, "-m", "pyro_compute", "status", "--ns", one_worker.ns,
                          "--watch", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while sum("in flight" in line for line in lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 130
    reader.join(timeout=10)
    assert p.stderr is not None
    err = p.stderr.read()
    p.stdout.close()  # type: ignore[union-attr]
    p.stderr.close()
    assert sum("in flight" in line for line in lines) >= 3, lines
    assert "Traceback" not in err


SCRIPT = """
from pyro_compute import futures


def {name}(x):
    import os
    return (x * {factor}, os.getpid())


if __name__ == "__main__":
    results = list(futures.map({name}, range(12)))
    print("values", sum(v for v, _ in results))
    print("pids", " ".join(sorted({{str(p) for _, p in results}})))
"""


def test_run_ns_sends_script_functions_to_by_value_workers(tmp_path: Path) -> None:
    """Two different scripts run on the same by-value workers: no restart, no --script."""
    with LocalCluster(2, by_value=True, startup_timeout=120) as c:
        pids = {str(w.pid) for w in c.workers}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        env.update(PYTHONPATH=str(ROOT), PYRO_COMPUTE_HMAC_KEY=c.settings.hmac_key)
        for name, factor in (("double", 2), ("triple", 3)):
            script = tmp_path / f"{name}.py"
            script.write_text(SCRIPT.format(name=name, factor=factor))
            r = subprocess.run([sys.executable, "-m", "pyro_compute", "run", "--ns", c.ns, str(script)],
                               capture_output=True, text=True, timeout=120, env=env)
            assert r.returncode == 0, r.stderr
            assert f"values {factor * sum(range(12))}" in r.stdout
            used = set(r.stdout.split("pids", 1)[1].split())
            assert used and used <= pids, (used, pids)
        assert {str(w.pid) for w in c.workers if w.poll() is None} == pids
