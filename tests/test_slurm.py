"""Slurm: node lists, a worker's place under srun, the sbatch script, and a real one-node Slurm run.

The real run starts its own munged, slurmctld and slurmd (root, Debian's slurm-wlm and munge:
.ci/system-packages installs them) with every file in a tmp directory, submits the generated
batch script with ``sbatch --wait`` and checks the script's output, the workers' names and that
nothing is left running. Skipped where those cannot run; the other tests run anywhere.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from launch_helpers import child_env, free_port, kill_all, wait_until, with_marker
from pyro_compute.slurm import (apply_environment, cores_for_task, expand_counts, expand_nodelist,
                                ns_port, sbatch_script)

JOB = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_NODEID": "1",
       "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8,4", "SLURM_TASKS_PER_NODE": "1(x2)"}


def test_node_lists_and_counts_expand() -> None:
    assert expand_nodelist("node[01-03,07],gpu1,rack[1-2]-n[5-6]") == [
        "node01", "node02", "node03", "node07", "gpu1", "rack1-n5", "rack1-n6", "rack2-n5", "rack2-n6"]
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]


def test_a_worker_under_srun_takes_its_place_from_slurm() -> None:
    args = argparse.Namespace(name=None, ns=None, host=None, workers=None)
    apply_environment(args, JOB)
    assert args.name == "slurm.4242.3"
    assert args.ns == f"127.0.0.1:{ns_port('4242')}" == "127.0.0.1:24242"
    assert args.host == "127.0.0.1"
    assert args.workers == 4, "node 1 has 4 cores and runs one task"


def test_given_options_and_a_configured_name_server_win_over_slurm() -> None:
    args = argparse.Namespace(name="mine", ns=None, host="127.0.0.1", workers=2)
    apply_environment(args, {**JOB, "PYRO_COMPUTE_NS": "10.0.0.1:9090"})
    assert (args.name, args.ns, args.host, args.workers) == ("mine", None, "127.0.0.1", 2)
    untouched = argparse.Namespace(name=None, ns=None, host=None, workers=None)
    apply_environment(untouched, {"PATH": "/bin"})
    assert vars(untouched) == {"name": None, "ns": None, "host": None, "workers": None}


def test_cores_per_task() -> None:
    assert cores_for_task({**JOB, "SLURM_CPUS_PER_TASK": "6"}) == 6
    assert cores_for_task({**JOB, "SLURM_NODEID": "0"}) == 8
    assert cores_for_task({**JOB, "SLURM_TASKS_PER_NODE": "2(x2)"}) == 1, "several tasks share the node"


def test_the_batch_script_has_its_parts_in_order_and_no_secret_on_a_command_line(tmp_path: Path) -> None:
    script = tmp_path / "my job.py"
    text = sbatch_script(str(script), ["--steps", "10"], nodes=3, cpus_per_node=16, time_limit="1:00:00",
                         allow_modules=["numpy"], sbatch_options=["--mem=4G"])
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for option in ("--nodes=3", "--ntasks-per-node=1", "--cpus-per-task=16", "--time=1:00:00", "--mem=4G"):
        assert f"#SBATCH {option}" in lines
    assert "#SBATCH --exclusive" not in lines
    order = [next(i for i, line in enumerate(lines) if marker in line) for marker in
             ("pyro_compute.naming", "srun --ntasks-per-node=1", "pyro_compute.slurm wait", "pyro_compute run")]
    assert order == sorted(order), "name server, workers, wait, script"
    assert f"--script '{script}' --allow-module numpy &" in text
    assert lines[-1].endswith(f"'{script}' --steps 10")
    assert "trap stop EXIT" in lines and "scancel --quiet --signal=TERM" in text
    secret_lines = [line for line in lines if "HMAC_KEY" in line]
    assert all(line.startswith(("export PYRO_COMPUTE_HMAC_KEY=", "PYRO_HMAC_KEY=$PYRO_COMPUTE_HMAC_KEY "))
               for line in secret_lines), secret_lines
    assert "#SBATCH --exclusive" in sbatch_script(str(script), []).splitlines()


class Slurm:
    """munged, slurmctld and slurmd for one node, all files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = child_env(SLURM_CONF=str(root / "slurm.conf"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        r = self.root
        (r / "state").mkdir()
        (r / "spool").mkdir()
        (r / "munge.key").write_bytes(os.urandom(1024))
        (r / "munge.key").chmod(0o400)
        subprocess.run(["munged", "-f", f"--socket={r}/munge.sock", f"--key-file={r}/munge.key",
                        f"--log-file={r}/munged.log", f"--pid-file={r}/munged.pid", f"--seed-file={r}/munged.seed"],
                       check=True, timeout=30, capture_output=True)
        node = socket.gethostname().split(".")[0]
        conf = {"ClusterName": "pyrotest", "SlurmctldHost": f"{node}(127.0.0.1)", "SlurmUser": "root",
                "SlurmdUser": "root", "SlurmctldPort": free_port(), "SlurmdPort": free_port(),
                "AuthType": "auth/munge", "AuthInfo": f"socket={r}/munge.sock", "CredType": "cred/munge",
                "StateSaveLocation": r / "state", "SlurmdSpoolDir": r / "spool",
                "SlurmctldPidFile": r / "slurmctld.pid", "SlurmdPidFile": r / "slurmd.pid",
                "SlurmctldLogFile": r / "slurmctld.log", "SlurmdLogFile": r / "slurmd.log",
                "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
                "JobAcctGatherType": "jobacct_gather/none", "SelectType": "select/cons_tres",
                "SelectTypeParameters": "CR_CPU", "MpiDefault": "none", "ReturnToService": 2,
                "NodeName": f"{node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
                "PartitionName": f"debug Nodes={node} Default=YES MaxTime=INFINITE State=UP"}
        (r / "slurm.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
        for daemon in ("slurmctld", "slurmd"):
            with open(r / f"{daemon}.out", "wb") as out:
                args = ["-D", "-c"] if daemon == "slurmctld" else ["-D"]
                self.procs.append(subprocess.Popen([daemon, *args], env=self.env, stdin=subprocess.DEVNULL,
                                                   stdout=out, stderr=subprocess.STDOUT))
        wait_until(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60,
                   "the Slurm node did not become idle")

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        subprocess.run(["munged", "-s", f"--socket={self.root}/munge.sock"], capture_output=True, timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.root.glob("*.log"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"a one-node Slurm needs root and {', '.join(missing) or 'its daemons'} (.ci/system-packages)")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


JOB_SCRIPT = '''\
import os, sys
from pyro_compute import futures

def where(x):
    return x * x, os.getpid(), os.environ.get("SLURM_JOB_ID")

if __name__ == "__main__":
    results = list(futures.map(where, range(40)))
    print("RESULT", sum(r[0] for r in results), len({r[1] for r in results}), results[0][2], sys.argv[1:])
'''


def test_a_script_runs_on_one_worker_per_core_of_a_real_slurm_job(slurm: Slurm, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    started = time.monotonic()
    submit = slurm.run(sys.executable, "-m", "pyro_compute.slurm", "submit", "--wait", "--python", sys.executable,
                       "--output", str(tmp_path / "out-%j.txt"), str(script), "hello", timeout=180)
    elapsed = time.monotonic() - started
    assert submit.returncode == 0, f"{submit.stdout}{submit.stderr}\n{slurm.logs()}"
    job = re.search(r"Submitted batch job (\d+)", submit.stdout)[1]  # type: ignore[index]
    out = (tmp_path / f"out-{job}.txt").read_text()
    assert f"RESULT {sum(x * x for x in range(40))} 2 {job} ['hello']" in out, out
    for i in (0, 1):
        assert f"worker pyro_compute.evaluator.slurm.{job}.0.{i} stopped" in out, out
    assert "2 workers registered" in out and "WARNING" not in out and "Killed" not in out, out
    print(f"\nSlurm job {job}: sbatch --wait returned after {elapsed:.1f} s")
    port = ns_port(job)
    leftovers = with_marker(str(script)) + [p for p in with_marker("pyro_compute.naming") if f"-p {port}" in " ".join(p.cmdline())]
    kill_all(leftovers)
    assert not leftovers, "the job left processes running"
