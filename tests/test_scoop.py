"""SCOOP parity (issue 14): SCOOP-style scripts run through ``python -m pyro_compute -n 2``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "clients" / "scoop_examples"


def launch(script: Path | str, *args: str, workers: int = 2, timeout: float = 240) -> str:
    """Run ``script`` with the launcher on an embedded cluster; return its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", str(workers), str(script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_recursive_tree_matches_serial_answer() -> None:
    """Tasks submit and wait on their children, 8 deep (511 tasks) on 2 workers: no deadlock."""
    out = launch(EXAMPLES / "tree.py", "8").split()
    assert out[0] == "tree" and out[1] == "8"
    assert int(out[2]) == int(out[3]) == 255976


@pytest.mark.parametrize("workers", [1, 2])
def test_nested_seeds_derive_from_parent_seed(workers: int) -> None:
    """Seeded tasks' children get derived seeds: the same answer for any worker count."""
    out = launch(EXAMPLES / "seeded_tree.py", workers=workers)
    import random  # the serial answer, with the seeds the pool derives
    from pyro_compute.chunk import child_seeds
    from pyro_compute.taskctx import Frame
    import numpy as np

    def derived(seed: int, n: int) -> int:
        return int(np.random.SeedSequence(seed, spawn_key=(n,)).generate_state(1, np.uint64)[0])

    def draw(depth: int, seed: int) -> float:
        own = random.Random(seed).random()
        if depth == 0:
            return own
        call_seed = derived(seed, 1)
        return own + sum(draw(depth - 1, s) for s in child_seeds(call_seed, (), 0, 2))

    assert Frame(1).calls == 0
    expected = sum(draw(3, s) for s in child_seeds(2026, (), 0, 3))
    assert out.split() == ["seeded", repr(expected)]
