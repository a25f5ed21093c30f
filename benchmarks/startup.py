"""Start-up and memory, phase by phase: ``LocalCluster(2)`` + ``Pool`` and the script launcher.

    python -m benchmarks.startup [--repeat N] [--against DIR] [--bytecode]

Every run happens in a fresh Python whose ``PYTHONPATH`` is this tree (or ``--against DIR``, e.g. a
``git archive`` of an older commit), so two versions are measured side by side, interleaved. PSS is
summed over *every* process the cluster started (``psutil`` children, recursive), so a fork server
is counted too; "as B7" sums the name server and ``LocalCluster.workers`` only, as suite.py does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
TRIVIAL = "from pyro_compute import futures\n\ndef square(x):\n    return x * x\n\n" \
          "if __name__ == '__main__':\n    print(sum(futures.map(square, range(4))))\n"

# Runs in the measured tree: timestamps of each phase, then the PSS of what the cluster started.
PROBE = r'''
import datetime, json, re, glob, os, sys, time
import psutil
t0, wall0 = time.perf_counter(), time.time()
from pyro_compute import LocalCluster, Pool, tasks
marks = {"import pyro_compute": time.perf_counter()}

class Timed(LocalCluster):
    def _wait_for_nameserver(self):
        super()._wait_for_nameserver()
        marks.setdefault("name server answers", time.perf_counter())

def logged(local, text):
    """Seconds since t0 of the last log line containing text, from the cluster's worker logs."""
    found = []
    for path in glob.glob(os.path.join(local._logdir.name, "*.log")):
        for line in open(path, errors="replace"):
            m = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+,\d+) .*" + text, line)
            if m:
                when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append(when - wall0 + t0)
    return max(found) if found else float("nan")

local = Timed(2)
marks["LocalCluster(2) returns"] = time.perf_counter()
pool = Pool(cluster=local)
marks["Pool(cluster) returns"] = time.perf_counter()
pool.submit(tasks.noop).result(timeout=120)
marks["first result"] = time.perf_counter()
marks["last worker registered (its log)"] = logged(local, "registered pyro_compute.evaluator")
procs = psutil.Process().children(recursive=True)
pss = {p.pid: p.memory_full_info().pss / 2**20 for p in procs}
cpu = {p.pid: sum(p.cpu_times()[:2]) for p in procs}  # user + system seconds, load-independent
listed = [local.nameserver.pid, *(w.pid for w in local.workers)]
ns = pss.get(local.nameserver.pid, 0.0)
pool.shutdown()
t_close = time.perf_counter()
local.close()
out = {k: v - t0 for k, v in marks.items()}
out["B7: LocalCluster(2) call to first result"] = marks["first result"] - marks["import pyro_compute"]
out["close()"] = time.perf_counter() - t_close
out["PSS, every process (MiB)"] = sum(pss.values())
out["PSS, as B7: name server + workers (MiB)"] = sum(pss.get(p, 0.0) for p in listed)
out["PSS, name server (MiB)"] = ns
out["processes"] = len(procs)
out["CPU s to first result, every cluster process"] = sum(cpu.values())
out["CPU s, name server"] = cpu.get(local.nameserver.pid, 0.0)
out["CPU s, busiest cluster process"] = max(cpu.values())
print(json.dumps(out))
'''


def env_for(tree: Path) -> dict[str, str]:
    """The environment of a run against ``tree``: its package first, no PYRO settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = str(tree)
    return env


def compiled_copy(tree: Path, into: Path) -> Path:
    """A copy of ``tree``'s package with its modules compiled, as an installed package ships (--bytecode).

    A copy, because PYTHONPYCACHEPREFIX would move the bytecode of the standard library and
    site-packages too, and the trees themselves are left as they are.
    """
    shutil.copytree(tree / "pyro_compute", into / "pyro_compute",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "pyro_compute")],
                   env=env_for(into), check=True, timeout=300, stdout=subprocess.DEVNULL)
    return into


def probe(tree: Path) -> dict[str, float]:
    """One cluster start in a fresh Python, phase by phase."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=env_for(tree), capture_output=True,
                         text=True, timeout=300, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def launcher(tree: Path, script: Path) -> dict[str, float]:
    """Wall time of ``python -m pyro_compute -n 2 SCRIPT`` (start-up, one map, shutdown) and of ``python -c pass``."""
    env = env_for(tree)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=60)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", "2", str(script)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tree)
    if out.returncode != 0 or out.stdout.strip() != "14":
        raise RuntimeError(f"the launcher failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return {"python -m pyro_compute -n 2 trivial.py (s)": time.perf_counter() - start,
            "python -c pass (s)": bare}


def measure(trees: dict[str, Path], repeat: int) -> dict[str, dict[str, list[float]]]:
    """Run every tree ``repeat`` times, interleaved, after one untimed run each (warms Numba's cache)."""
    results: dict[str, dict[str, list[float]]] = {label: {} for label in trees}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "trivial.py"
        script.write_text(TRIVIAL)
        for label, tree in trees.items():
            probe(tree)
        for i in range(repeat):
            for label, tree in (list(trees.items()) if i % 2 == 0 else reversed(list(trees.items()))):
                row = {**probe(tree), **launcher(tree, script)}
                for key, value in row.items():
                    results[label].setdefault(key, []).append(value)
                print(f"run {i + 1}/{repeat} {label}: first result {row['first result']:.3f} s, "
                      f"PSS {row['PSS, every process (MiB)']:.0f} MiB, launcher "
                      f"{row['python -m pyro_compute -n 2 trivial.py (s)']:.3f} s", file=sys.stderr)
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    """Medians per metric and tree, as a markdown table (phase times: seconds since the Python started)."""
    labels = list(results)
    keys = list(next(iter(results.values())))
    lines = ["| metric (median) | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for key in keys:
        cells = [f"{statistics.median(results[label][key]):.3f}" if key in results[label] else "-"
                 for label in labels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table; return 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per tree (median taken)")
    parser.add_argument("--against", type=Path, help="another tree (a checkout) to measure beside this one")
    parser.add_argument("--json", action="store_true", help="print every run as JSON too")
    parser.add_argument("--bytecode", action="store_true",
                        help="run from compiled bytecode, as an installed package does, even where "
                             "PYTHONDONTWRITEBYTECODE=1 would make every process compile the sources")
    args = parser.parse_args(argv)
    trees = {"this tree": HERE}
    if args.against:
        trees = {f"{args.against}": args.against.resolve(), **trees}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as copies:
        if args.bytecode:
            trees = {label: compiled_copy(tree, Path(copies) / str(i))
                     for i, (label, tree) in enumerate(trees.items())}
        results = measure(trees, args.repeat)
    print(f"{len(os.sched_getaffinity(0))} cores, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; {args.repeat} runs per tree\n")
    print(table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
