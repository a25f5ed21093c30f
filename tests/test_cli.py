"""The pyro-compute command line, called in-process and as the launcher subprocess."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import Pyro4
import pytest

from pyro_compute.cli import main
from pyro_compute.cluster import LocalCluster, free_port

ROOT = Path(__file__).resolve().parents[1]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_pi_on_an_existing_cluster_prints_every_field(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    out = run_json(["pi", "--samples", "1e8", "--seed", "5", "--ns", cluster.ns, "--json"], capsys)
    assert set(out) >= {"pi", "stderr", "samples", "workers", "seconds", "samples_per_second", "seed"}
    assert out["samples"] == 10**8 and out["workers"] == 2 and out["seed"] == 5
    assert abs(out["pi"] - 3.141592653589793) < 5 * out["stderr"]


def test_pi_same_seed_same_answer_on_embedded_cluster(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    shared = run_json(["pi", "--samples", "1e8", "--seed", "9", "--ns", cluster.ns, "--json"], capsys)
    monkeypatch.delenv("PYRO_COMPUTE_HMAC_KEY")
    alone = run_json(["pi", "--samples", "1e8", "--seed", "9", "--workers", "1", "--json"], capsys)
    assert alone["workers"] == 1
    assert alone["pi"] == shared["pi"] and alone["stderr"] == shared["stderr"]


def test_pi_tol_keeps_going_until_the_error_is_small(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    out = run_json(["pi", "--samples", "1e6", "--tol", "1e-4", "--seed", "1", "--ns", cluster.ns, "--json"], capsys)
    assert out["stderr"] < 1e-4
    # 16 p (1 - p) / tol² with p = π/4: about 2.70e8 samples for that error; stop within 10% of it.
    assert 2.4e8 < out["samples"] < 2.97e8


def wilson_error(hits: int, n: int) -> float:
    """Largest distance from 4 p̂ to an end of the z = 1 Wilson interval, from its closed form."""
    p = hits / n
    centre = (p + 1 / (2 * n)) / (1 + 1 / n)
    half = math.sqrt(p * (1 - p) / n + 1 / (4 * n * n)) / (1 + 1 / n)
    return 4 * max(p - (centre - half), centre + half - p)


@pytest.mark.parametrize("argv", [["--samples", "1"], ["--samples", "1", "--tol", "3e-2"],
                                  ["--samples", "1e5"]])
def test_pi_json_and_text_report_the_same_honest_error(cluster: LocalCluster, argv: list[str],
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    common = ["pi", *argv, "--seed", "4", "--ns", cluster.ns]
    out = run_json([*common, "--json"], capsys)
    assert out["stderr"] > 0 and out["stderr"] == pytest.approx(wilson_error(out["hits"], out["samples"]))
    assert out["low"] < out["high"] and out["low"] - 1e-12 <= out["pi"] <= out["high"] + 1e-12
    assert main(common) == 0
    text = capsys.readouterr().out
    assert f"pi        {out['pi']:.10f} ± {out['stderr']:.2g} (one standard error)" in text
    assert f"{out['low']:.10f} .. {out['high']:.10f}" in text
    assert f"samples   {out['samples']:,}" in text


def test_pi_one_sample_is_not_a_zero_error(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    out = run_json(["pi", "--samples", "1", "--seed", "1", "--ns", cluster.ns, "--json"], capsys)
    assert out["samples"] == 1 and out["stderr"] == pytest.approx(2.0)  # one point: π is in [2, 4] or [0, 2]
    out = run_json(["pi", "--tol", "1e-3", "--seed", "1", "--ns", cluster.ns, "--json"], capsys)
    assert out["stderr"] < 1e-3 and 2.43e6 < out["samples"] < 2.97e6  # --tol alone: no 1e9 floor


def test_pi_text_output(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    assert main(["pi", "--samples", "1e6", "--ns", cluster.ns]) == 0
    out = capsys.readouterr().out
    for label in ("pi", "samples", "seed", "workers", "time", "speed"):
        assert f"\n{label} " in "\n" + out


@pytest.mark.parametrize("bad", [["pi", "--samples", "-5"], ["pi", "--samples", "abc"],
                                 ["pi", "--samples", "1.5"], ["pi", "--tol", "0"],
                                 ["pi", "--ns", "x:1", "--workers", "2"]])
def test_bad_arguments_exit_with_a_message(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(bad)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unusable_name_server_address_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pi", "--ns", "nonsense"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


def test_config_prints_settings_without_the_secret(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", "hush")
    out = run_json(["config", "--json"], capsys)
    assert out["hmac_key"] == "(set)" and out["ns"] == "127.0.0.1:9090"


@pytest.mark.parametrize("script,expected", [
    ("scoop_pi.py", ["number of workers 3000 - number of attempts 3000", "value of pi = 3.1"]),
    ("scoop_mapreduce.py", ["executed in", "with result:332833500", "with result: 332833500"]),
])
def test_launcher_runs_the_cookbook_scripts(script: str, expected: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", "2", str(ROOT / "clients" / script)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    for text in expected:
        assert text in proc.stdout


def test_launcher_passes_arguments_and_reports_a_missing_script(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "args.py"
    script.write_text("import sys\nfrom pyro_compute import futures\n"
                      "def twice(x):\n    return 2 * x\n"
                      "if __name__ == '__main__':\n"
                      "    print(sys.argv[1:], list(futures.map(twice, [1, 2])))\n")
    assert main(["-n", "1", str(script), "a", "--b"]) == 0
    assert "['a', '--b'] [2, 4]" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.py")]) == 2
    assert "no such script" in capsys.readouterr().err


def register_ghost(cluster: LocalCluster, name: str) -> None:
    host, port = cluster.settings.ns_address
    with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
        ns.register(name, f"PYRO:{name}@127.0.0.1:{free_port()}")


@pytest.fixture
def ghost(cluster: LocalCluster) -> str:
    """A registration whose worker is gone: a URI on a port nobody listens on."""
    host, port = cluster.settings.ns_address
    name = "pyro_compute.evaluator.ghost"
    register_ghost(cluster, name)
    yield name
    with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
        ns.remove(name)


def test_status_lists_live_and_dead_workers(cluster: LocalCluster, ghost: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    rows = run_json(["status", "--ns", cluster.ns, "--json"], capsys)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {ghost, *cluster.registered()}
    assert by_name[ghost]["reachable"] is False and "nothing is listening" in by_name[ghost]["error"]
    live = [r for r in rows if r["reachable"]]
    assert sorted(r["pid"] for r in live) == sorted(w.pid for w in cluster.workers)
    assert all({"cores", "kernels", "tasks", "samples_per_second", "busy_percent", "uptime"} <= set(r) for r in live)
    register_ghost(cluster, ghost)  # again: the name server prunes it after two probe rounds (3 s apart)
    assert main(["status", "--ns", cluster.ns]) == 0
    text = capsys.readouterr().out
    assert "ghost" in text and "unreachable" in text
    assert all(str(w.pid) in text for w in cluster.workers)


@pytest.mark.parametrize("argv", [["--help"], ["pi", "--help"], ["run", "--help"], ["status", "--help"],
                                  ["config", "--help"]])
def test_every_help_reads_well(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: pyro-compute") and len(text.splitlines()) > 4


def test_worker_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "pyro_compute.worker", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--allow-by-value" in proc.stdout and "--ns" in proc.stdout
