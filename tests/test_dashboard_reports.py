"""Pools in other processes report their runs to a standalone dashboard (issue 13 item 1's task stream).

A ``RemoteRun`` (pyro_compute.dashboard_client) is what such a pool reports to: it batches the events
and POSTs them as JSON with a token derived from the secret, from a ``pool-`` thread, dropping and
counting what a slow or dead dashboard cannot take.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import remote_tasks
from pyro_compute.cluster import LocalCluster
from pyro_compute.config import Settings
from pyro_compute.dashboard import DashboardServer
from pyro_compute.dashboard_client import RemoteRun
from pyro_compute.dashboard_state import RunBoard, dashboard_token, report_token
from pyro_compute.errors import ConfigError
from pyro_compute.pool import Pool
from test_dashboard import ARTIFACTS, browser, get, page, wait_until

__all__ = ["browser"]  # the fixture, imported for the page test


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` to ``/api/report`` of the dashboard at ``url``; return status and answer."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/api/report", body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def runs(url: str) -> list[dict[str, Any]]:
    """The runs the dashboard at ``url`` shows."""
    code, _, body = get(url, "/api/runs")
    assert code == 200
    reported: list[dict[str, Any]] = json.loads(body)["runs"]
    return reported


@pytest.fixture
def hung() -> Iterator[str]:
    """The address of a 'dashboard' that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_reports_carry_a_derived_token_and_never_the_secret() -> None:
    secret = "s3cret-" + "x" * 20
    settings = Settings.from_env({}, ns="127.0.0.1:9", hmac_key=secret)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with RemoteRun(url, settings, "capture", interval=0.05) as remote:
            remote.task("w1", 1.0, 2.0, "square")
            remote.progress(1, None, queued=0, running=0)
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request or not request.rstrip().endswith(b"}"):
                    request += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json"
                             b"\r\n\r\n{\"taken\":2}")
            listener.close()  # the final report (finish) on close() is refused: dropped, not a hang
    head, body = request.split(b"\r\n\r\n", 1)
    assert secret.encode() not in request
    assert f"x-pyro-compute-token: {report_token(secret.encode())}".encode() in head.lower()
    assert report_token(secret.encode()) != dashboard_token(secret.encode())  # page token can't report
    report = json.loads(body)
    assert report["title"] == "capture" and report["dropped"] == 0
    assert report["events"] == [["task", "w1", 1.0, 2.0, "square"], ["progress", 1, None, 0, 0]]
    assert remote.sent == 2


def test_dashboard_addresses_are_read_as_printed() -> None:
    settings = Settings.from_env({}, ns="127.0.0.1:9")
    for url, where in (("127.0.0.1:8787", ("127.0.0.1", 8787, "/api/report")),
                       ("http://10.0.0.5:9000/?token=abc", ("10.0.0.5", 9000, "/api/report")),
                       ("http://[::1]:8787/behind/proxy/", ("::1", 8787, "/behind/proxy/api/report"))):
        remote = RemoteRun(url, settings)  # not started: no thread
        assert (remote.host, remote.port, remote.path) == where
    for bad in ("https://127.0.0.1:8787", "http://:8787", "http://127.0.0.1:port"):
        with pytest.raises(ConfigError, match="http://HOST:PORT"):
            RemoteRun(bad, settings)


def test_dashboard_takes_only_well_formed_reports_with_the_token(cluster: LocalCluster) -> None:
    token = report_token(cluster.settings.hmac_bytes)
    good = {"Content-Type": "application/json", "X-Pyro-Compute-Token": token}
    report = {"run": "r1", "title": "by hand", "events": [["task", "w", 1.0, 2.0, "f"], ["finish"]]}
    with DashboardServer(cluster.settings, port=0).start() as server:
        body = json.dumps(report).encode()
        assert post(server.url, body, {"Content-Type": "application/json"})[0] == 403
        assert post(server.url, body, {**good, "X-Pyro-Compute-Token": "0" * 32})[0] == 403
        assert post(server.url, body, {**good, "Content-Type": "text/plain"})[0] == 400
        assert post(server.url, b"{not json", good)[0] == 400
        for bad in ({"run": "../x", "events": []}, {"run": "r2", "events": [["exec", "rm -rf"]]},
                    {"run": "r2", "events": [["task", "w", float("nan"), 2.0, ""]]},
                    {"run": "r2", "events": [["progress", -1, None, None, None]]}, [1, 2]):
            code, answer = post(server.url, json.dumps(bad).encode(), good)
            assert code == 400 and b"refused" in answer, (bad, answer)
        assert runs(server.url) == []
        assert post(server.url, body, good) == (200, b'{"taken": 2}')
        [shown] = runs(server.url)
        assert shown["title"] == "by hand" and shown["finished"] is not None and shown["task_count"] == 1
    with DashboardServer(cluster.settings, "127.0.0.2", 0).start() as server:  # token for the page
        page_token = dashboard_token(cluster.settings.hmac_bytes or b"")
        assert post(server.url, body, {**good, "X-Pyro-Compute-Token": page_token})[0] == 403
        assert post(server.url, body, good)[0] == 200


def test_board_keeps_a_bounded_number_of_runs_forgetting_finished_ones_first() -> None:
    board = RunBoard(limit=3)
    for key in ("a", "b", "c"):
        board.apply({"run": key, "title": key, "events": [["progress", 1, None, None, None]]})
        time.sleep(0.01)
    board.apply({"run": "a", "events": [["finish"]]})  # a is finished, b the quietest running one
    board.apply({"run": "d", "title": "d", "events": []})
    assert [r["id"] for r in board.snapshots()] == ["b", "c", "d"]
    board.apply({"run": "e", "title": "e", "events": []})
    assert [r["id"] for r in board.snapshots()] == ["c", "d", "e"]


def test_a_pool_reports_a_generator_map_to_a_standalone_dashboard(cluster: LocalCluster) -> None:
    """Tasks done/queued/running of an unknown-length map, with no total made up."""
    with DashboardServer(cluster.settings, port=0).start() as server:
        remote = RemoteRun(server.url, cluster.settings, "generator map", interval=0.1).start()
        try:
            with Pool(cluster=cluster, dashboard=remote) as pool:
                squares = pool.map(remote_tasks.square, (i for i in range(60)), chunksize=3, timeout=120)
                assert list(squares) == [i * i for i in range(60)]
                [live] = wait_until("the run's 60 tasks on the dashboard", lambda: [
                    r for r in runs(server.url) if (r["counts"] or {}).get("done") == 60])
        finally:
            remote.close()
        [shown] = runs(server.url)
    assert live["progress"] is None and live["finished"] is None
    assert shown["counts"] == {"done": 60, "queued": 0, "running": 0}
    assert shown["task_count"] == 20 and shown["finished"] is not None and shown["dropped"] == 0
    assert {t["worker"] for t in shown["tasks"]} <= set(cluster.registered())
    assert all(t["label"].endswith("square x3") and t["start"] <= t["end"] for t in shown["tasks"])
    assert remote.lost == 0 and remote.failures == 0


def test_close_sends_the_backlog_in_batches_then_the_finish_mark(cluster: LocalCluster) -> None:
    with DashboardServer(cluster.settings, port=0).start() as server:
        remote = RemoteRun(server.url, cluster.settings, "backlog", interval=3600, timeout=20).start()
        for i in range(7000):  # several batches, none sent before close()
            remote.task(f"w{i % 3}", float(i), i + 0.5, "f")
        remote.progress(7000, None, queued=0, running=0)
        remote.close()
        [shown] = runs(server.url)
    assert remote.sent == 7000 + 2 and remote.lost == 0 and remote.failures == 0
    assert shown["task_count"] == 7000 and shown["finished"] is not None
    assert shown["counts"] == {"done": 7000, "queued": 0, "running": 0}


def test_a_dead_dashboard_costs_the_reports_only(hung: str) -> None:
    """Nothing listening: every event is dropped and counted; reporting stays an append."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        remote = RemoteRun(dead, Settings.from_env({}, ns="127.0.0.1:9"), interval=0.01,
                           queue_size=1000).start()
        started = time.perf_counter()
        for i in range(100_000):
            remote.task("w", float(i), i + 1.0, "f")
        reporting = time.perf_counter() - started
        remote.close()
    assert remote.sent == 0 and remote.lost == 100_000 and remote.failures >= 1
    assert reporting < 10.0, f"100,000 reports took {reporting:.1f} s"  # ~0.3 s measured


def test_a_hung_dashboard_neither_slows_nor_stops_a_run(cluster: LocalCluster, hung: str) -> None:
    remote = RemoteRun(hung, cluster.settings, interval=0.05, timeout=1.0, queue_size=20).start()
    try:
        with Pool(cluster=cluster, dashboard=remote) as pool:
            assert list(pool.map(remote_tasks.square, range(300), chunksize=1, timeout=120)) == [
                i * i for i in range(300)]
    finally:
        started = time.perf_counter()
        remote.close()
        closing = time.perf_counter() - started
    assert remote.sent == 0 and remote.lost > 0 and remote.failures >= 1
    assert closing < 2 * remote.timeout + 5
    assert remote.snapshot()["counts"]["done"] == 300  # the local view saw every call


def test_pi_in_another_process_reports_to_the_standalone_dashboard(cluster: LocalCluster) -> None:
    env = {**os.environ, **cluster.settings.as_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    with DashboardServer(cluster.settings, port=0).start() as server:
        done = subprocess.run(
            [sys.executable, "-m", "pyro_compute", "pi", "--ns", cluster.ns, "--samples", "1e8",
             "--seed", "5", "--json", "--dashboard-url", server.url],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        [shown] = wait_until("the pi run finished on the dashboard", lambda: [
            r for r in runs(server.url) if r["finished"] is not None])
    result = json.loads(done.stdout)
    assert shown["title"] == "pi, 1e+08 samples, seed 5"
    assert shown["progress"] == {"done": 10**8, "total": 10**8}
    assert shown["pi"][-1]["samples"] == 10**8 and shown["pi"][-1]["estimate"] == result["pi"]
    assert shown["pi"][-1]["low"] < result["pi"] < shown["pi"][-1]["high"]
    assert shown["counts"]["done"] >= 1 and shown["task_count"] >= 1 and shown["dropped"] == 0
    assert {t["worker"] for t in shown["tasks"]} <= set(cluster.registered())


def endless(pool: Pool, stop: threading.Event) -> None:
    """Map over an endless generator until told to stop."""
    results = pool.map(remote_tasks.slow_pid, itertools.repeat(0.02), chunksize=2)
    try:
        for _ in results:
            if stop.is_set():
                break
    finally:
        results.close()  # type: ignore[attr-defined]


def test_page_shows_runs_reported_from_elsewhere(cluster: LocalCluster, browser: Any,
                                                 tmp_path: Path) -> None:
    stop = threading.Event()
    with DashboardServer(cluster.settings, port=0).start() as server:
        remote = RemoteRun(server.url, cluster.settings, "endless generator", interval=0.2).start()
        try:
            with Pool(cluster=cluster, dashboard=remote) as pool:
                browser.get(server.url)
                worker = threading.Thread(target=endless, args=(pool, stop))
                worker.start()
                try:
                    text = wait_until("the reported run on the page", lambda: page(
                        browser, "window.pcDash.runs.length && window.pcDash.runs[0].counts"))
                    assert "total unknown" in text and "queued" in text and "running" in text, text
                    assert page(browser, "document.querySelectorAll('.run .progress.unknown').length") == 1
                    assert page(browser, "document.getElementById('pi-panel').hidden") is True  # no π here
                    lanes = wait_until("task stream lanes", lambda: page(browser, "window.pcDash.lanes"))
                    assert set(lanes) <= set(cluster.registered()), lanes
                    shot = tmp_path / "dashboard-reports.png"
                    assert browser.save_screenshot(str(shot))
                finally:
                    stop.set()
                    worker.join(timeout=60)
        finally:
            remote.close()
        wait_until("the run shown finished", lambda: page(
            browser, "window.pcDash.runs.length && window.pcDash.runs[0].finished"))
        assert page(browser, "document.querySelectorAll('.run .progress.unknown').length") == 0
        after = page(browser, "window.pcDash.runs[0].counts")  # the abandoned map's chunks were cancelled
        assert after.startswith("done ") and "queued" not in after and "total unknown" not in after, after
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"the page logged errors: {errors}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard-reports.png")


def test_cli_run_reports_a_script_to_the_standalone_dashboard(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pyro_compute import cli

    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    script = tmp_path / "tiny.py"
    script.write_text("import remote_tasks\nfrom pyro_compute import futures\n"
                      "print('total', sum(futures.map(remote_tasks.square, range(12))))\n")
    with DashboardServer(cluster.settings, port=0).start() as server:
        assert cli.main(["run", "--dashboard-url", server.url, "--ns", cluster.ns, str(script)]) == 0
        [shown] = runs(server.url)
    assert "total 506" in capsys.readouterr().out
    assert shown["title"] == f"run {script}" and shown["finished"] is not None
    assert shown["counts"]["done"] == 12 and shown["dropped"] == 0
    assert cli.main(["pi", "--ns", cluster.ns, "--dashboard-url", "https://x:1"]) == 1
    assert "http://HOST:PORT" in capsys.readouterr().err
