"""The dashboard: windowed rates, its JSON, the token rule, the CLI, and the page in headless Chromium.

The browser test drives Debian's ``chromium`` through Selenium and ``chromedriver`` (installed by
``.ci/browser``); it saves a screenshot to its tmp_path and copies it to tests/artifacts/dashboard.png.
"""
from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import Pyro4
import pytest

import remote_tasks
from pyro_compute import cli
from pyro_compute.cluster import LocalCluster
from pyro_compute.config import Settings
from pyro_compute.dashboard import DashboardServer, dashboard_token, serve_for_run
from pyro_compute.dashboard_state import ClusterMonitor, DashboardRun, RunReporter, windowed
from pyro_compute.errors import ConfigError
from pyro_compute.pool import Pool
from pyro_compute.status import cluster_status

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1400")
STATIC = ("/", "/static/dashboard.js", "/static/dashboard.css", "/static/vendor/uPlot.iife.min.js",
          "/static/vendor/uPlot.min.css")


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from the server at ``url``; return status, headers and body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


def row(tasks: int, samples: int, busy: float, uptime: float, pid: int = 1) -> dict[str, Any]:
    """A worker's counters as cluster_status reports them."""
    return {"pid": pid, "tasks": tasks, "samples": samples, "busy_seconds": busy, "uptime": uptime}


def test_windowed_rates_come_from_counter_deltas() -> None:
    got = windowed(row(10, 1000, 1.0, 100.0), row(30, 5000, 4.0, 104.0))
    assert got == {"busy_share": 0.75, "tasks_per_second": 5.0, "samples_per_second_window": 1000.0,
                   "window_seconds": 4.0}
    assert windowed(row(10, 1000, 1.0, 100.0), row(10, 1000, 9.0, 101.0))["busy_share"] == 1.0
    restarted = windowed(row(10, 1000, 1.0, 100.0), row(2, 100, 0.1, 3.0, pid=2))
    assert restarted["tasks_per_second"] == 0.0 and restarted["busy_share"] == 0.0
    assert windowed(None, row(1, 1, 1.0, 1.0))["window_seconds"] == 0.0


def test_run_reports_progress_tasks_and_pi() -> None:
    run = DashboardRun("unit")
    reporter: RunReporter = run  # what a pool or estimate_pi will be handed
    reporter.progress(3, 10, queued=5, running=2)
    reporter.task("w1", 100.0, 101.0, "pi_hits")
    reporter.task("w2", 200.0, 201.5)
    reporter.pi(3.15, 3.1, 3.2, 1000)
    run.finish()
    snap = run.snapshot(since=150.0)
    assert snap["counts"] == {"done": 3, "queued": 5, "running": 2} and snap["progress"] is None
    assert snap["tasks"] == [{"worker": "w2", "start": 200.0, "end": 201.5, "label": ""}]
    assert snap["task_count"] == 2 and snap["finished"] is not None
    assert snap["pi"][0]["low"] == 3.1 and snap["pi"][0]["samples"] == 1000


def test_run_keeps_the_callers_progress_apart_from_the_pools_task_counts() -> None:
    """estimate_pi reports samples of a total, its pool reports tasks: neither overwrites the other."""
    run = DashboardRun("pi and its pool")
    run.progress(4 * 10**6, 10**7)  # the caller: samples done of the total
    run.progress(7, None, queued=2, running=3)  # the pool: tasks, total unknown
    run.progress(5 * 10**6, 10**7)
    snap = run.snapshot()
    assert snap["progress"] == {"done": 5 * 10**6, "total": 10**7}
    assert snap["counts"] == {"done": 7, "queued": 2, "running": 3}
    open_ended = DashboardRun("a generator")
    open_ended.progress(12, None)
    assert open_ended.snapshot()["progress"] == {"done": 12, "total": None}
    assert open_ended.snapshot()["counts"] is None


def test_monitor_counts_exactly_the_samples_a_map_ran(cluster: LocalCluster) -> None:
    monitor = ClusterMonitor(cluster.settings, window=1e6)  # polled by hand: no thread
    monitor.poll()
    with Pool(cluster=cluster) as pool:
        assert len(list(pool.map("pi_hits", [10**6] * 40, seed=3, timeout=120))) == 40
    monitor.poll()
    workers = [w for w in monitor.workers() if w["reachable"]]
    counted = sum(w["samples_per_second_window"] * w["window_seconds"] for w in workers)
    assert counted == pytest.approx(40 * 10**6, rel=1e-6)
    assert sum(w["tasks_per_second"] * w["window_seconds"] for w in workers) == pytest.approx(40)
    assert all(0.0 <= w["busy_share"] <= 1.0 for w in workers)
    series = monitor.snapshot()["series"]
    assert len(series["t"]) == 2 and series["samples_per_second"][-1] > 0


def test_api_status_has_the_rows_of_status_json(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    assert cli.main(["status", "--json", "--ns", cluster.ns]) == 0
    expected = json.loads(capsys.readouterr().out)
    with DashboardServer(cluster.settings, port=0).start() as server:
        code, headers, body = get(server.url, "/api/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    rows = json.loads(body)
    assert [r["name"] for r in rows] == [r["name"] for r in expected]
    assert [sorted(r) for r in rows] == [sorted(r) for r in expected]
    assert all(r["tasks"] >= e["tasks"] for r, e in zip(rows, expected))


def test_page_and_json_never_contain_the_secret(cluster: LocalCluster) -> None:
    secret = cluster.settings.hmac_key
    run = DashboardRun("secret check")
    run.pi(3.14, 3.1, 3.2, 100)
    with DashboardServer(cluster.settings, port=0, run=run).start() as server:
        paths = (*STATIC, "/api/status", "/api/history", "/api/run")
        for path in paths:
            code, headers, body = get(server.url, path)
            assert code == 200, path
            assert secret.encode() not in body and secret not in json.dumps(headers), path
        assert get(server.url, "/static/../dashboard.py")[0] == 404
        assert get(server.url, "/static/vendor/../../dashboard.py")[0] == 404


def test_loopback_server_rejects_foreign_host_headers(cluster: LocalCluster) -> None:
    with DashboardServer(cluster.settings, port=0).start() as server:
        assert get(server.url, "/api/status", {"Host": "attacker.example:8787"})[0] == 403
        assert get(server.url, "/api/status", {"Host": "localhost:8787"})[0] == 200


def test_other_interfaces_require_the_token(cluster: LocalCluster) -> None:
    """127.0.0.2 is not one of the exempt loopback names, so the token rule applies there."""
    token = dashboard_token(cluster.settings.hmac_key.encode())
    with DashboardServer(cluster.settings, "127.0.0.2", 0).start() as server:
        assert server.url.endswith(f"/?token={token}")
        for path in ("/", "/api/status", "/api/history", "/static/dashboard.js"):
            assert get(server.url, path)[0] == 403, path
        assert get(server.url, "/api/status?token=" + "0" * len(token))[0] == 403
        assert get(server.url, "/api/status", {"Cookie": "pyro_compute_dashboard=nope"})[0] == 403
        code, headers, body = get(server.url, f"/?token={token}")
        assert code == 200 and b"pyro-compute" in body
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and cookie == f"pyro_compute_dashboard={token}"
        assert get(server.url, "/api/status", {"Cookie": cookie})[0] == 200
    with pytest.raises(ConfigError, match="shared secret"):
        DashboardServer(Settings.from_env({}, ns=cluster.ns, hmac_key=""), "127.0.0.2", 0)


def test_cli_serves_until_interrupted(cluster: LocalCluster) -> None:
    env = {**os.environ, **cluster.settings.as_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "pyro_compute.dashboard", "--port", "0"],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[1]
        code, _, body = get(url, "/api/status")
        assert code == 200 and sorted(r["name"] for r in json.loads(body)) == sorted(cluster.registered())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


# --- the page in a real browser ------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium driven by Selenium through chromedriver; quit after the test."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are not installed; run .ci/browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture
def ghost(cluster: LocalCluster) -> Iterator[str]:
    """A registration whose worker never answers: its port accepts connections but nobody serves them.

    (A refused port would be pruned from the name server within seconds, as dead workers are.)
    """
    name = "pyro_compute.evaluator.ghost-of-a-worker"
    host, port = cluster.settings.ns_address
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
            ns.register(name, f"PYRO:obj_gone@127.0.0.1:{hung.getsockname()[1]}")
        try:
            yield name
        finally:
            with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
                ns.remove(name)


def test_page_marks_unreachable_registrations(cluster: LocalCluster, ghost: str, browser: Any) -> None:
    with DashboardServer(cluster.settings, port=0).start() as server:
        rows = {r["name"]: r for r in json.loads(get(server.url, "/api/history")[2])["workers"]}
        assert rows[ghost]["reachable"] is False and rows[ghost]["error"]
        assert sum(r["reachable"] for r in rows.values()) == len(cluster.registered()) - 1
        browser.get(server.url)
        marked = wait_until("the ghost row marked unreachable", lambda: page(
            browser, "[...document.querySelectorAll('#workers tr.unreachable')].map(r => r.dataset.name)"))
        assert marked == [ghost]
        assert "unreachable" in page(browser, "document.getElementById('worker-count').textContent")


def run_pi(pool: Pool, run: DashboardRun, stop: threading.Event) -> None:
    """Estimate π until told to stop, reporting progress and the 95 % interval as a pool would."""
    hits = samples = 0
    results: Any = pool.map("pi_hits", itertools.repeat(1 << 22), seed=11)
    try:
        for done, h in enumerate(results, 1):
            hits, samples = hits + h, samples + (1 << 22)
            p = hits / samples
            half = 1.96 * 4.0 * math.sqrt(p * (1.0 - p) / samples)
            run.pi(4.0 * p, 4.0 * p - half, 4.0 * p + half, samples)
            run.progress(done, None)
            if stop.is_set():
                break
    finally:
        results.close()


def run_stream(pool: Pool, stop: threading.Event) -> None:
    """Run short tasks; the pool reports which worker ran each one, from when to when."""
    while not stop.is_set():
        pool.submit(remote_tasks.slow_pid, 0.05).result(timeout=60)


def page(drv: Any, script: str) -> Any:
    """Evaluate a JavaScript expression in the page."""
    return drv.execute_script("return " + script)


def test_page_shows_workers_throughput_and_pi_live(cluster: LocalCluster, browser: Any,
                                                   tmp_path: Path) -> None:
    workers = {r["pid"]: r["name"] for r in cluster_status(cluster.settings) if r["reachable"]}
    stop, view = threading.Event(), DashboardRun("pi, browser test")
    with serve_for_run(cluster.settings, view) as server, Pool(cluster=cluster, dashboard=view) as pool:
        browser.get(server.url)
        wait_until("the page listing every worker", lambda: sorted(page(
            browser, "[...document.querySelectorAll('#workers tbody tr:not(.unreachable)')]"
            ".map(r => r.dataset.name)"))
            == sorted(workers.values()))
        wait_until("two refreshes", lambda: page(browser, "window.pcDash.updates") >= 2)
        updates, polled = page(browser, "window.pcDash.updates"), get(server.url, "/api/history")
        time.sleep(3.0)
        assert page(browser, "window.pcDash.updates") - updates >= 3, "the page refreshes too slowly"
        assert json.loads(get(server.url, "/api/history")[2])["polled_at"] > json.loads(polled[2])["polled_at"]
        chart_before = page(browser, "document.querySelector('#tp-chart canvas').toDataURL()")
        threads = [threading.Thread(target=run_pi, args=(pool, view, stop)),
                   threading.Thread(target=run_stream, args=(pool, stop))]
        for t in threads:
            t.start()
        try:
            first = wait_until("a π interval on the page", lambda: page(
                browser, "document.getElementById('pi-interval').textContent"))
            assert first.startswith("95 % in [3.1"), first
            wait_until("the π interval changing", lambda: page(
                browser, "document.getElementById('pi-interval').textContent") != first)
            wait_until("throughput above zero in the chart", lambda: page(
                browser, "Math.max(0, ...window.pcDash.throughput.data[1].slice(-3))") > 0)
            lanes = wait_until("task stream lanes", lambda: page(browser, "window.pcDash.lanes"))
            assert set(lanes) <= set(workers.values()), lanes
            counts = page(browser, "window.pcDash.runs[0].counts")
            assert "total unknown" in counts and "tasks: done" in counts and "queued" in counts, counts
            assert page(browser, "document.getElementById('pi-panel').hidden") is False
            wait_until("a worker shown busy", lambda: page(
                browser, "document.querySelectorAll('#workers .state-busy').length") >= 1)
            shot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(shot))
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"the page logged errors: {errors}"
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert page(browser, "document.querySelector('#tp-chart canvas').toDataURL()") != chart_before
        assert page(browser, "document.getElementById('run-view').hidden") is False
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard.png")


def test_estimate_pi_reports_its_interval_and_progress(cluster: LocalCluster) -> None:
    """estimate_pi(reporter=...) feeds the run's view: progress to the end, a 95 % interval around each estimate."""
    from pyro_compute.montecarlo import TASK_SAMPLES, estimate_pi, pi_interval

    run = DashboardRun("pi")
    with Pool(cluster=cluster) as pool:
        est = estimate_pi(pool, 4 * TASK_SAMPLES, seed=3, reporter=run)
    state = run.snapshot()
    assert state["progress"]["done"] == state["progress"]["total"] == est.samples
    assert [p["samples"] for p in state["pi"]] == [TASK_SAMPLES * k for k in (1, 2, 3, 4)]
    last = state["pi"][-1]
    assert last["estimate"] == est.pi
    assert (last["low"], last["high"]) == pi_interval(est.hits, est.samples, z=1.96)
    assert last["low"] < est.low < est.pi < est.high < last["high"], "95 % is wider than one standard error"


def test_pi_dashboard_flag_serves_the_run(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`pyro-compute pi --dashboard` prints the page's address and the same estimate as without it."""
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    argv = ["pi", "--ns", cluster.ns, "--samples", "1e8", "--seed", "5", "--json"]
    with_view = cli.main([*argv, "--dashboard"])
    out, err = capsys.readouterr()
    assert with_view == 0 and "dashboard: http://127.0.0.1:" in err
    assert cli.main(argv) == 0
    assert json.loads(out)["hits"] == json.loads(capsys.readouterr().out)["hits"]


# --- a pool's own dashboard (issue 13 item 2) -----------------------------------------------------

def dashboard_threads() -> set[threading.Thread]:
    """Live threads of a dashboard server (not covered by the pool-thread leak check)."""
    return {t for t in threading.enumerate() if "dashboard" in t.name and t.is_alive()}


def refused(url: str) -> bool:
    """True when nothing listens at ``url`` any more."""
    try:
        get(url, "/api/run")
    except ConnectionRefusedError:
        return True
    return False


def test_pool_dashboard_shows_tasks_of_real_workers_and_closes(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    before = dashboard_threads()
    pool = Pool(cluster=cluster, dashboard=True)
    try:
        url = pool.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert f"pyro-compute dashboard: {url}" in capsys.readouterr().err
        n = 60
        assert list(pool.map(remote_tasks.square, range(n), chunksize=3, timeout=120)) == [
            i * i for i in range(n)]
        code, headers, body = get(url, "/api/run")
        assert code == 200 and headers["Content-Type"] == "application/json"
        snap = json.loads(body)
        assert snap["counts"] == {"done": n, "queued": 0, "running": 0} and snap["progress"] is None
        assert snap["task_count"] == n // 3  # one event per call of 3 tasks
        workers = {t["worker"] for t in snap["tasks"]}
        assert workers and workers <= set(cluster.registered())
        assert all(t["start"] <= t["end"] and "square" in t["label"] for t in snap["tasks"])
        assert snap["finished"] is None
        started = {t.name for t in dashboard_threads() - before}
        assert started >= {"pool-dashboard-http", "pool-dashboard-poll"}, started
        assert all(name.startswith("pool-") for name in started), started
    finally:
        pool.shutdown()
    assert refused(url)
    assert pool.dashboard_run is not None and pool.dashboard_run.snapshot()["finished"] is not None
    wait_until("the dashboard's threads stopping", lambda: dashboard_threads() <= before, timeout=15)
    pool.shutdown()  # twice is harmless


def test_status_probes_run_in_pool_named_threads(cluster: LocalCluster) -> None:
    """The dashboard's poll probes workers from threads named pool-* (a pool's page polls in its process)."""
    first: dict[int, str] = {}  # thread id -> name at its first call (later, exiting, it looks 'Dummy')
    threading.setprofile(lambda *_: first.setdefault(threading.get_ident(), threading.current_thread().name))
    try:
        rows = cluster_status(cluster.settings)
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    assert len(rows) == len(cluster.registered())
    names = set(first.values())
    assert names and all(name.startswith("pool-status-probe") for name in names), names


def test_pool_reports_to_a_run_it_is_given_without_serving(cluster: LocalCluster) -> None:
    run = DashboardRun("given")
    with Pool(cluster=cluster, dashboard=run) as pool:
        assert pool.dashboard_url is None and pool.dashboard_run is run
        assert sum(pool.map(remote_tasks.square, range(20), chunksize=4, timeout=120)) == sum(
            i * i for i in range(20))
    snap = run.snapshot()
    assert snap["counts"]["done"] == 20 and snap["task_count"] == 5
    assert {t["worker"] for t in snap["tasks"]} <= set(cluster.registered())
    with pytest.raises(TypeError, match="DashboardRun"):
        Pool(cluster=cluster, dashboard=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not of the form http://HOST:PORT/"):
        Pool(cluster=cluster, dashboard="yes")


def test_cli_run_dashboard_prints_the_url_and_reports_the_script(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    script = tmp_path / "tiny.py"
    script.write_text(
        "import remote_tasks\n"
        "from pyro_compute import futures\n"
        "print('total', sum(futures.map(remote_tasks.square, range(12))))\n"
        "run = futures.default_pool().dashboard_run\n"
        "print('done', run.snapshot()['counts']['done'], run.title)\n")
    assert cli.main(["run", "--dashboard", "--ns", cluster.ns, str(script)]) == 0
    out, err = capsys.readouterr()
    assert "total 506" in out and f"done 12 run {script}" in out
    lines = [line for line in err.splitlines() if line.startswith("dashboard: http://127.0.0.1:")]
    assert len(lines) == 1, err
    assert refused(lines[0].split()[1])  # served for the run only
