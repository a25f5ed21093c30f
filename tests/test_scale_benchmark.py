"""benchmarks.scale (issue 11 item 6) at a tiny size: it measures, and it leaves no process behind."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import psutil

from launch_helpers import REPO, child_env, wait_until

TINY = ["--workers", "4", "--task-seconds", "0.01", "--short-row", "none"]


def run_scale(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.scale", *TINY, *args], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())


def started_pids(log: str) -> list[int]:
    found = re.search(r"registered in [\d.]+ s; pids \[([\d, ]+)\]", log)
    assert found, f"the benchmark did not report its processes:\n{log}"
    return [int(p) for p in found.group(1).split(",")]


def gone(pids: list[int]) -> bool:
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return not any(alive(p) for p in pids)


def test_scale_benchmark_measures_four_workers_and_stops_them() -> None:
    proc = run_scale("--tasks-per-worker", "5", "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = json.loads(out)["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["workers"] == 4 and row["tasks"] == 20 and row["workers_used"] == 4, row
    assert row["ideal"] == 20 * 0.01 / 4
    assert 0 < row["efficiency"] <= 1.05 and row["seconds"] >= 0.05 * 0.95, row
    assert 0 < row["startup"] < 120
    assert row["threads"] >= 2 * 4, "the client's dispatcher threads are counted"
    assert row["sockets"] >= 4, "the client's connections to the workers are counted"
    assert row["pss_mib"] > 4 and row["cpu_per_task"] >= 0 and row["worker_cpu_per_task"] >= 0
    pids = started_pids(err)
    assert len(pids) == 6, "name server, supervisor and four forked workers"
    wait_until(lambda: gone(pids), 10, lambda: f"processes left running: {pids}")


def test_scale_benchmark_stops_everything_on_ctrl_c() -> None:
    proc = run_scale("--tasks-per-worker", "100000")
    assert proc.stderr is not None
    log = ""
    deadline = time.monotonic() + 90
    while "registered in" not in log and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log += line
    pids = started_pids(log)
    time.sleep(0.5)  # into the timed map
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=90)
    assert proc.returncode == 130, log + rest
    assert "interrupted" in rest and "Traceback" not in rest, rest
    wait_until(lambda: gone(pids), 10, lambda: f"processes left running after Ctrl-C: {pids}")
