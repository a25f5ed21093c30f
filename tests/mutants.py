"""Mutation check: break the package on purpose, one named breakage at a time, and see the tests catch it.

Run from the repository root: ``python3 tests/mutants.py [--only NAME ...] [--list] [--no-baseline]``.

For each breakage the script copies the working tree (without .git and caches) to a throwaway
directory, applies one textual replacement (file, old text, new text), runs the named tests with
``PYTHONPATH`` pointing at the copy, and prints a Markdown table: breakage | promise | caught by
| result. A pattern whose old text is no longer in its file is reported as STALE (the code it
breaks was rewritten; update the pattern) and makes the script exit non-zero, as does any
breakage that is not caught. Not collected by pytest (the file name does not start with test_).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds one breakage's test run may take


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One named breakage: replace ``old`` by ``new`` in ``path``; ``tests`` must then fail."""

    name: str
    promise: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    # -- the nine breakages of issue 15 ----------------------------------------------------------
    Mutant("lane seeding changed (seed ^ 1 before splitmix64)", "same seed, same answer across versions",
           "pyro_compute/kernels.py", "_, state = _splitmix64(uint64(seed))",
           "_, state = _splitmix64(uint64(seed) ^ uint64(1))", ("tests/test_golden.py",)),
    Mutant("feeder in-flight limit removed", "bounded memory on endless input",
           "pyro_compute/feeder.py", "                self.slots.acquire()\n", "",
           ("tests/test_memory.py",)),
    Mutant("feeder keeps consumed chunks", "bounded memory on endless input",
           "pyro_compute/feeder.py", "self.live.discard(chunk)", "pass",
           ("tests/test_memory.py",)),
    Mutant("Pool(seed=S) gives every map call the same seeds", "each call draws its own child seeds",
           "pyro_compute/pool.py", "seed, key = self.seed, (next(self._calls),)", "seed, key = self.seed, (0,)",
           ("tests/test_promises.py::test_pool_seed_gives_each_map_call_its_own_child_seeds",)),
    Mutant("status busy share always 0", "the status figures",
           "pyro_compute/status.py", '"busy_percent": 100.0 * busy / uptime if uptime > 0 else 0.0',
           '"busy_percent": 0.0', ("tests/test_promises.py::test_status_figures_after_known_work",)),
    Mutant("futures.submit drops keyword arguments", "SCOOP's API",
           "pyro_compute/futures.py", "return default_pool().submit(func, *args, **_seeded(kwargs))",
           "return default_pool().submit(func, *args)",
           ("tests/test_promises.py::test_every_scoop_function_round_trips_values",)),
    Mutant("worker skips draining on SIGTERM", "SIGTERM leaving loses nothing, without retries",
           "pyro_compute/worker.py", "self._drain(min(self.settings.call_timeout, 30.0))", "pass",
           ("tests/test_promises.py::test_a_sigtermed_worker_finishes_its_running_batch",)),
    Mutant("estimate_pi consumes results in completion order", "bit-identical π for any schedule",
           "pyro_compute/montecarlo.py", "results: Generator[int, None, None] = pool.map(",
           "results: Generator[int, None, None] = pool.map_as_completed(",
           ("tests/test_promises.py::test_pi_is_identical_when_results_arrive_out_of_order",)),
    Mutant("reported standard error doubled", "the error estimate",
           "pyro_compute/montecarlo.py", "return max(pi - low, high - pi)",
           "return 2.0 * max(pi - low, high - pi)", ("tests/test_montecarlo.py",)),
    Mutant("max_retries ignored (fixed at 3)", "the max_retries setting",
           "pyro_compute/scheduler.py", "if len(chunk.tried) < self.settings.max_retries:",
           "if len(chunk.tried) < 3:", ("tests/test_promises.py::test_max_retries_2_means_two_workers",)),
    # -- more of our own -------------------------------------------------------------------------
    Mutant("kernel drops the tail of a partial lane round", "same seed, same answer",
           "pyro_compute/kernels.py", "for lane in range(samples - rounds * LANES):", "for lane in range(0):",
           ("tests/test_golden.py",)),
    Mutant("task seeds shifted by one child", "same seed, same answer across versions",
           "pyro_compute/chunk.py", "for i in range(start, start + count)]",
           "for i in range(start + 1, start + count + 1)]", ("tests/test_golden.py",)),
    Mutant("estimate_pi task size halved", "same seed, same answer across versions",
           "pyro_compute/montecarlo.py", "TASK_SAMPLES = 1 << 25", "TASK_SAMPLES = 1 << 24",
           ("tests/test_golden.py",)),
    Mutant("map yields in completion order", "map returns results in input order",
           "pyro_compute/pool.py", "feeder = self._feed(fn, iterables, chunksize, seed, ordered=True)",
           "feeder = self._feed(fn, iterables, chunksize, seed, ordered=False)",
           ("tests/test_promises.py::test_every_scoop_function_round_trips_values",)),
    Mutant("worker stats stop counting tasks", "the status figures",
           "pyro_compute/evaluator.py", "self._tasks += tasks", "self._tasks += 0",
           ("tests/test_promises.py::test_status_figures_after_known_work",)),
    Mutant("out-of-range count raises ValueError, not KernelError", "bad input fails with TypeError or KernelError",
           "pyro_compute/evaluator.py", 'raise KernelError(f"{name} must be between',
           'raise ValueError(f"{name} must be between', ("tests/test_fuzz.py::test_kernels_with_random_arguments",)),
    Mutant("Evaluator accepts a bool as a count", "bad input fails with TypeError or KernelError",
           "pyro_compute/evaluator.py", "if isinstance(value, (bool, np.bool_)) or not isinstance",
           "if not isinstance", ("tests/test_fuzz.py::test_kernels_with_random_arguments",)),
    Mutant("shutdown does not wake the dispatchers", "no pool thread outlives its pool",
           "pyro_compute/scheduler.py", "                for d in link.dispatchers:\n                    d.wake.notify()\n        if not self.outstanding():",
           "                pass\n        if not self.outstanding():",
           ("tests/test_promises.py::test_futures_submit_passes_keyword_arguments",)),
    # -- session 4 -------------------------------------------------------------------------------
    Mutant("a call queues behind a busy worker while another is free", "small maps spread over the workers",
           "pyro_compute/scheduler.py", "(link.calls and not (self.pipeline and not self.free))",
           "(link.calls and not self.pipeline)", ("tests/test_spread.py",)),
    Mutant("map_as_completed in a task blocks holding its worker", "SCOOP's futures inside tasks",
           "pyro_compute/feeder.py", "if not self.ordered and taskctx.in_task():", "if False:",
           ("tests/test_scoop.py::test_map_as_completed_inside_a_task_yields_in_completion_order",)),
    Mutant("pack_plain trusts any int container's length", "big ints are refused, not mangled",
           "pyro_compute/replies.py", "(kinds == _INT_ONLY and len(data) == 5 + 5 * len(items))",
           "kinds == _INT_ONLY", ("tests/test_wire_speed.py",)),
    Mutant("a client rebuilds objects of any class its script names", "no code but the client's own runs",
           "pyro_compute/objects.py", "and qualifies(found):", ":", ("tests/test_objects.py",)),
    Mutant("a child run by its waiting parent gets the broadcast handle", "broadcast values reach every task",
           "pyro_compute/evaluator.py", "args, kwargs = broadcast.values_of(chunk.args), broadcast.values_of(chunk.kwargs or {})",
           "args, kwargs = chunk.args, chunk.kwargs or {}",
           ("tests/test_scoop.py::test_a_broadcast_made_inside_a_task_reaches_children_run_by_the_waiting_task",)),
    # -- session 5 -----------------------------------------------------------------------------
    Mutant("worker threads never linger for the client's next request", "a client calling again at once keeps its thread",
           "pyro_compute/server.py", "return bool(poller.poll(LINGER_MS))", "return False",
           ("tests/test_linger.py",)),
    Mutant("a small reply's bytes are remembered before they are checked", "only plain data is rebuilt from the wire",
           "pyro_compute/serializers.py", "    if not _ints_only(data):\n        return plain(marshal.loads(data))\n",
           "    _seen[data] = None\n    if not _ints_only(data):\n        return plain(marshal.loads(data))\n",
           ("tests/test_wire_speed.py::test_only_small_payloads_found_plain_are_remembered",)),
    Mutant("LocalCluster's children get no lifeline", "a killed owner leaves no cluster process behind",
           "pyro_compute/cluster.py", '[*cmd, "--lifeline-fd", str(self._lifeline_r)]', "cmd",
           ("tests/test_local_cluster.py::test_a_killed_owner_leaves_no_cluster_process_behind",)),
]

IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".mypy_cache", "*.egg-info",
                                ".hypothesis", "*.nbi", "*.nbc")


def apply(mutant: Mutant, tree: Path) -> bool:
    """Apply the replacement in ``tree``; False when the old text is not there (stale pattern)."""
    path = tree / mutant.path
    text = path.read_text()
    if mutant.old not in text:
        return False
    path.write_text(text.replace(mutant.old, mutant.new, 1))
    return True


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, list[str], float]:
    """Run ``tests`` against the package in ``tree``; exit status, failing test ids, seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO") and k != "CI"}
    env["PYTHONPATH"] = str(tree)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                               "-o", "addopts=", *tests], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    if proc.returncode not in (0, 1) and not failed:
        failed = [(proc.stdout + proc.stderr).strip().splitlines()[-1:][0] if (proc.stdout + proc.stderr).strip() else ""]
    return proc.returncode, failed, time.monotonic() - started


def summary(failed: list[str]) -> str:
    """Failing test ids grouped by test function: ``file::test (N cases)``."""
    counts: dict[str, int] = {}
    for test_id in failed:
        name = test_id.replace("tests/", "").split(" - ")[0].split("[")[0]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} ({c} cases)" if c > 1 else n for n, c in sorted(counts.items())) or "-"


def check(mutant: Mutant | None, tests: tuple[str, ...]) -> tuple[str, str, float]:
    """Copy the tree, apply ``mutant`` (None: the baseline), run; (result, caught by, seconds)."""
    with tempfile.TemporaryDirectory(prefix="pyro-compute-mutant-") as tmp:
        tree = Path(tmp) / "repo"
        shutil.copytree(ROOT, tree, ignore=IGNORE)
        if mutant is not None and not apply(mutant, tree):
            return "STALE: old text not found", "-", 0.0
        missing = [t for t in tests if not (tree / t.split("::")[0]).exists()]
        if missing:
            return f"not caught ({', '.join(missing)} missing)", "-", 0.0
        rc, failed, seconds = run_tests(tree, tests)
    names = summary(failed)
    if mutant is None:
        return ("baseline passes" if rc == 0 else f"BASELINE FAILS (rc {rc})"), names, seconds
    if rc == 0:
        return "NOT caught", "-", seconds
    if rc == 1:
        return "caught", names, seconds
    return f"error (rc {rc})", names, seconds


def main(argv: list[str] | None = None) -> int:
    """Run the chosen breakages; print the Markdown table; non-zero if any is missed or stale."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=[], help="substrings of breakage names to run")
    p.add_argument("--list", action="store_true", help="list the breakages and exit")
    p.add_argument("--no-baseline", action="store_true", help="skip the run of the unbroken copy")
    args = p.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    ok = True
    if not args.no_baseline:
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests
                                    if (ROOT / t.split("::")[0]).exists()))
        result, failed, seconds = check(None, tests)
        print(f"baseline: {result} in {seconds:.0f} s ({len(tests)} test selections)"
              + (f"; failing: {failed}" if failed != "-" else ""), flush=True)
        ok = result == "baseline passes"
    print("\n| breakage | promise | caught by | result |\n|---|---|---|---|", flush=True)
    for m in chosen:
        result, caught_by, seconds = check(m, m.tests)
        ok = ok and result == "caught"
        print(f"| {m.name} | {m.promise} | {caught_by} | {result} ({seconds:.0f} s) |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
