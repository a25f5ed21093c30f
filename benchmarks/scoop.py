"""SCOOP's ``sum_multiples`` example, run as SCOOP users run it: ``python -m pyro_compute -n 2``.

    python -m benchmarks.scoop [--repeat N]

The script is SCOOP 0.7.2's ``examples/sum_multiples.py`` with the import changed; it times the
serial answer and ``futures.mapReduce`` (two tasks returning sets of 333,334 and 200,000 ints,
folded with ``set.union``) alternately, N times each in one launcher run, and the launcher's
wall time is measured around it. SCOOP itself printed about 0.06 s parallel, 0.09 s serial here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import REPO_ROOT

SCRIPT = '''
import json, sys
from time import perf_counter as time
from pyro_compute import futures

def multiples(n):
    return set(range(0, 1000000, n))

if __name__ == '__main__':
    serial, parallel = [], []
    for _ in range(int(sys.argv[1])):
        bt = time()
        serial_result = sum(set.union(*map(multiples, [3, 5])))
        serial.append(time() - bt)
        bt = time()
        parallel_result = sum(futures.mapReduce(multiples, set.union, [3, 5]))
        parallel.append(time() - bt)
        assert serial_result == parallel_result
    print(json.dumps({"serial": serial, "parallel": parallel}))
'''


def run(repeat: int) -> dict[str, float]:
    """Medians of one launcher run: serial and parallel seconds (the first call apart), and its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "sum_multiples.py")
        script.write_text(SCRIPT)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", "2", str(script), str(repeat + 1)],
                             capture_output=True, text=True, env=env, cwd=tmp, timeout=300, check=True)
        wall = time.perf_counter() - started
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return {"first parallel": times["parallel"][0], "serial": statistics.median(times["serial"][1:]),
            "parallel": statistics.median(times["parallel"][1:]), "launcher wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed calls of each kind (default 20)")
    got = run(parser.parse_args().repeat)
    for name, value in got.items():
        print(f"{name:>15}: {value * 1e3:8.1f} ms")
    print(f"{'parallel/serial':>15}: {got['parallel'] / got['serial']:8.2f}x")


if __name__ == "__main__":
    main()
