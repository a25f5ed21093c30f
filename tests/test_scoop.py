"""SCOOP parity (issue 14): SCOOP-style scripts run through ``python -m pyro_compute -n 2``."""
from __future__ import annotations

import ast

import os
import time
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "clients" / "scoop_examples"


def launched(script: Path | str, *args: str, workers: int = 2, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the launcher on an embedded cluster; the finished process (exit 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pyro_compute", "-n", str(workers), str(script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def launch(script: Path | str, *args: str, workers: int = 2, timeout: float = 240) -> str:
    """Run ``script`` with the launcher on an embedded cluster; return its stdout."""
    return launched(script, *args, workers=workers, timeout=timeout).stdout


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


def test_lambdas_closures_partials_and_script_objects_by_value() -> None:
    """The launcher's own cluster takes code and script-class objects (as arguments) by value, as SCOOP
    does; objects come back rebuilt from their plain state, since no client decodes pickle from the wire."""
    out = launch(EXAMPLES / "lambdas.py")
    assert out.splitlines() == ["lambdas [10, 11, 12, 13, 14] [0, 3, 6, 9, 12] [0, 2, 4, 6, 8] "
                                "[1, 5, 13, 25, 41]", "objects [(1, 0), (2, -1), (3, -2)] True"]


def test_shared_cluster_keeps_by_value_opt_in(cluster: object, tmp_path: Path) -> None:
    """With --ns (a shared cluster) a lambda is still refused with a message saying what to do."""
    script = tmp_path / "lam.py"
    script.write_text("from pyro_compute import futures\nprint(list(futures.map(lambda x: x, [1])))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    env.update(cluster.settings.as_env())  # type: ignore[attr-defined]
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "pyro_compute", "--ns", cluster.ns, str(script)],  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    assert proc.returncode != 0
    assert "by_value" in proc.stderr or "by value" in proc.stderr, proc.stderr


def test_deap_onemax_with_futures_map_matches_serial() -> None:
    """DEAP registers futures.map as its map: individuals (a deap.creator class) go by value."""
    pytest.importorskip("deap")
    serial = subprocess.run([sys.executable, str(EXAMPLES / "onemax.py"), "--serial"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert serial.returncode == 0, serial.stderr
    assert launch(EXAMPLES / "onemax.py").split() == serial.stdout.split()
    assert serial.stdout.split()[0] == "onemax" and float(serial.stdout.split()[1]) > 70


def test_constants_shared_with_every_worker_including_one_that_joins_later() -> None:
    """setConst once in the client; tasks on every worker read it, a late worker too."""
    from pyro_compute import futures, shared
    from pyro_compute.cluster import LocalCluster
    from pyro_compute.pool import Pool

    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), *sys.path])}
    with LocalCluster(1, allow_modules=["scoop_tasks"], env=env) as c, Pool(cluster=c) as pool:
        futures.set_default_pool(pool)
        try:
            shared.setConst(factor=3)
            with pytest.raises(TypeError, match="set already"):
                shared.setConst(factor=4)
            assert shared.getConst("factor") == 3 and shared.getConst("nothing", timeout=0) is None
            first = list(futures.map("scoop_tasks:const_times", range(8), ["factor"] * 8))
            assert [v for _, v in first] == [3 * i for i in range(8)]
            c.start_worker()
            deadline = time.monotonic() + 60
            pids: set[int] = set()
            while len(pids) < 2 and time.monotonic() < deadline:
                rows = list(futures.map("scoop_tasks:const_times", range(40), ["factor"] * 40, chunksize=1))
                assert [v for _, v in rows] == [3 * i for i in range(40)]
                pids |= {p for p, _ in rows}
            assert len(pids) == 2, "the worker started later never ran a task"
        finally:
            futures.set_default_pool(None)


def test_constants_example_through_the_launcher() -> None:
    out = launch(EXAMPLES / "constants.py").splitlines()
    assert out == ["refused: True", "constants [10, 17, 24, 31, 38, 45] 82 7 None"]


def test_rest_of_scoop_surface() -> None:
    """mapScan in input order, SIZE, IS_ORIGIN, worker names, wait(timeout=-1), keywords to every call."""
    out = launch(EXAMPLES / "surface.py").splitlines()
    assert out[0] == "mapScan 01234567891011 True"
    assert out[1] == "size 2 True origin"
    assert out[2] in ("workers 1 True", "workers 2 True")  # both usually; one is legal on a slow box
    assert out[3:] == ["wait 5 0 [0, 1, 4, 9, 16]", "keywords [0, 1, 8, 27] 27", "refused True"]


def test_task_output_reaches_the_client_prefixed_by_worker() -> None:
    """print to stdout/stderr and logging in a task show on the client's streams, per worker."""
    proc = launched(EXAMPLES / "output.py")
    out = proc.stdout.splitlines()
    assert out[-1] == "results [1, 2, 3, 4]"
    said = sorted(line.split("] ", 1)[1] for line in out[:-1])
    assert said == [f"task {i} says hello" for i in range(4)]
    assert all(line.startswith("[local.") for line in out[:-1])
    err = proc.stderr.splitlines()
    for i in range(4):
        assert any(line.startswith("[local.") and line.endswith(f"task {i} warns") for line in err)
        assert any(line.startswith("[local.") and line.endswith(f"task {i} logged") for line in err)


def test_output_of_tasks_nested_on_another_worker_reaches_the_client() -> None:
    """A task's children print on whichever worker runs them; every line reaches the client, its
    prefix the chain of workers it came through, starting at the parent's and ending at the one
    that ran the child."""
    proc = launched(EXAMPLES / "nested_output.py")
    out = proc.stdout.splitlines()
    ran = dict(pair.split(":", 1) for pair in out[-1].split()[1:])
    short = {i: w.removeprefix("pyro_compute.evaluator.") for i, w in ran.items()}
    parent = out[0].split()[-1].removeprefix("pyro_compute.evaluator.")
    assert out[0] == f"[{parent}] parent on pyro_compute.evaluator.{parent}"

    def chain(line: str, text: str) -> list[str]:
        assert line.endswith(text), line
        return [p.strip("[]") for p in line[: -len(text)].split()]

    for i in map(str, range(4)):
        said = [chain(line, f"child {i} says hello") for line in out if line.endswith(f"child {i} says hello")]
        logged = [chain(line, f"child {i} logged").pop(0) for line in proc.stderr.splitlines()
                  if line.endswith(f"child {i} logged")]
        assert len(said) == 1 and len(logged) == 1, (out, proc.stderr)
        assert said[0][0] == parent == logged[0] and said[0][-1] == short[i], (said, short)


SCRIPT_OBJECTS = '''
from pyro_compute import futures


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Slotted:
    __slots__ = ("x",)

    def __init__(self, x):
        self.x = x


def norm2(p):
    return p.x * p.x + p.y * p.y


def moved(p):
    p.x += 1
    return p


def nested(p):
    return {"p": [moved(p), (p.x, Point(p, [p.y]))]}


def slotted(x):
    return Slotted(x)


if __name__ == "__main__":
    print("norms", list(futures.map(norm2, [Point(i, i + 1) for i in range(4)])))
    got = list(futures.map(moved, [Point(0, 0), Point(5, 1)]))
    print("moved", [(type(p) is Point, p.x, p.y) for p in got])
    n = futures.submit(nested, Point(1, 2)).result()["p"]
    print("nested", type(n[0]) is Point, n[0].x, n[1][0], type(n[1][1].x) is Point, n[1][1].y)
    try:
        futures.submit(slotted, 1).result()
    except TypeError as e:
        print("refused:", e)
'''


@pytest.mark.parametrize("by_value", [True, False])
def test_script_objects_as_arguments_on_a_shared_cluster(tmp_path: Path, by_value: bool) -> None:
    """On a shared cluster whose workers allow by-value, objects of script classes go as arguments
    and come back rebuilt from their state; an object that is more than its __dict__ is refused,
    saying why and what to return. Without by-value, the call is refused naming the class."""
    from pyro_compute.cluster import LocalCluster

    script = tmp_path / "objects.py"
    script.write_text(SCRIPT_OBJECTS)
    with LocalCluster(1, by_value=by_value) as c:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        env.update(c.settings.as_env())
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run([sys.executable, "-m", "pyro_compute", "--ns", c.ns, str(script)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))
    if not by_value:
        assert proc.returncode != 0 and "Point" in proc.stderr, proc.stderr
        assert "an argument is an object of class Point (a class of your script)" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    norms, moved, nested, refused = proc.stdout.splitlines()
    assert norms == "norms [1, 5, 13, 25]"
    assert moved == "moved [(True, 1, 0), (True, 6, 1)]"
    assert nested == "nested True 2 2 True [2]"
    assert refused.startswith("refused: the result of task 0 cannot be sent back") and "Slotted" in refused
    assert "decodes no pickle" in refused and "__slots__" in refused


def test_refusal_messages_for_objects_say_why_and_what_to_do() -> None:
    """The texts a user gets for an object as a result (refused by design) and as an argument."""
    from pyro_compute.references import SCRIPT_MODULE, first_object, object_argument_refusal, object_result_refusal

    Point = type("Point", (), {"__module__": SCRIPT_MODULE})
    why = object_result_refusal(Point())
    assert "class Point (a class of your script)" in why and "never pickled" in why
    assert "decodes no pickle" in why and "vars(obj)" in why and "numpy array" in why
    args = [(1, "a", [2.0, {"k": Point()}])]
    assert isinstance(first_object(args), Point) and first_object([(1, [2.0], {"k": (3,)})]) is None
    said = object_argument_refusal(args)
    assert "class Point (a class of your script)" in said and "--allow-by-value" in said
    assert "Pool(by_value=True)" in said and "python -m pyro_compute script.py" in said


def test_functions_lambdas_and_script_objects_as_shared_constants() -> None:
    """SCOOP's shared_example sets a function as a constant: functions, lambdas and objects of
    script classes are constants too (by value on the launcher's own cluster)."""
    out = launch(EXAMPLES / "shared_objects.py").split(" ", 1)
    assert out == ["shared", "[149, 149, 104, 100, 181] [149, 149, 104, 100, 181] True\n"]


def test_shared_cluster_refuses_object_constants_saying_what_to_do() -> None:
    """Without by-value, a constant that is an object is refused by setConst, saying what to do;
    a function that has a name goes by reference and tasks call it on the worker."""
    import operator

    from pyro_compute import futures, shared
    from pyro_compute.cluster import LocalCluster
    from pyro_compute.pool import Pool

    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), *sys.path])}
    with LocalCluster(1, allow_modules=["scoop_tasks"], env=env) as c, Pool(cluster=c) as pool:
        futures.set_default_pool(pool)
        try:
            with pytest.raises(TypeError, match="no plain data.*--allow-by-value"):
                shared.setConst(table=Path("x"))
            with pytest.raises(TypeError, match="lambda|by value"):
                shared.setConst(lam=lambda x: x)
            shared.setConst(mul=operator.mul, power=pow)
            assert shared.getConst("mul") is operator.mul
            assert futures.submit("scoop_tasks:call_const", "mul", 6, 7).result(timeout=60) == 42
            assert list(futures.map("scoop_tasks:call_const", ["power"] * 3, [2] * 3, [1, 2, 3])) == [2, 4, 8]
        finally:
            futures.set_default_pool(None)


NESTED_COMPLETION = '''
import operator
from pyro_compute import futures


def square(x):
    return x * x


def parent(n):
    return sum(futures.map_as_completed(square, range(n))), futures.mapReduce(square, operator.add, range(n))


if __name__ == "__main__":
    print(list(futures.map(parent, [20, 30, 40, 50], chunksize=1)))
'''


def test_map_as_completed_and_map_reduce_inside_tasks_do_not_deadlock(tmp_path: Path) -> None:
    """Every worker runs a parent that waits on map_as_completed and mapReduce of its own children:
    the waits lend the workers to the children (SCOOP's test_map_as_completed, run as a task)."""
    script = tmp_path / "nested_completion.py"
    script.write_text(NESTED_COMPLETION)
    expected = [(s, s) for s in (sum(i * i for i in range(n)) for n in (20, 30, 40, 50))]
    assert launch(script, timeout=120).strip() == repr(expected)


COMPLETION_ORDER = '''
import time
from pyro_compute import futures


def nap(seconds):
    time.sleep(seconds)
    return seconds


def parent():
    return list(futures.map_as_completed(nap, [1.0, 0.0, 0.0], chunksize=1))


if __name__ == "__main__":
    print(futures.submit(parent).result())
'''


def test_map_as_completed_inside_a_task_yields_in_completion_order(tmp_path: Path) -> None:
    """The slow first child comes last, as at top level (it came first when a task waited in input order)."""
    script = tmp_path / "completion_order.py"
    script.write_text(COMPLETION_ORDER)
    assert launch(script, timeout=120).strip() == repr([0.0, 0.0, 1.0])


CONST_IN_TASK = '''
import time
from pyro_compute import futures, shared


def offset():
    time.sleep(0.05)
    return futures.worker(), shared.getConst("offset", timeout=10)


def parent():
    shared.setConst(offset=7)
    try:
        shared.setConst(offset=8)
    except TypeError as e:
        again = "set already" in str(e)
    seen = [f.result() for f in [futures.submit(offset) for _ in range(40)]]
    return again, sorted({v for _, v in seen}), len({w for w, _ in seen})


if __name__ == "__main__":
    print(futures.submit(parent).result())
'''


def test_set_const_inside_a_task_reaches_its_children_on_every_worker(tmp_path: Path) -> None:
    """SCOOP's shareConstant run as a task: set once, read by the task's children wherever they run."""
    script = tmp_path / "const_in_task.py"
    script.write_text(CONST_IN_TASK)
    again, values, workers = ast.literal_eval(launch(script, timeout=120).strip())
    assert again and values == [7]
    assert workers == 2, "the children all ran on one worker, so the other worker's copy went untested"


BROADCAST_IN_TASK = '''
from pyro_compute import futures


def total(values, extra=()):
    return sum(values) + sum(extra)


def parent():
    pool = futures.default_pool()
    with pool.broadcast(list(range(100))) as h:
        return [futures.submit(total, h, extra=h).result() for _ in range(3)], \
            [f.result() for f in [futures.submit(total, h) for _ in range(6)]]


if __name__ == "__main__":
    print(futures.submit(parent).result())
'''


def test_a_broadcast_made_inside_a_task_reaches_children_run_by_the_waiting_task(tmp_path: Path) -> None:
    """A child run by its waiting parent (no wire in between) gets the handle's value, as one sent to a worker does."""
    script = tmp_path / "broadcast_in_task.py"
    script.write_text(BROADCAST_IN_TASK)
    assert launch(script, timeout=120).strip() == repr(([9900] * 3, [4950] * 6))


def test_modules_next_to_the_script_import_on_the_workers(tmp_path: Path) -> None:
    """A function sent by value that uses a module beside the script (SCOOP's deap_ga_evosn does) runs
    on the workers, wherever the launcher was started from."""
    (tmp_path / "neighbour.py").write_text("def triple(x):\n    return 3 * x\n")
    script = tmp_path / "uses_neighbour.py"
    script.write_text("import neighbour\nfrom pyro_compute import futures\n\n"
                      "if __name__ == '__main__':\n"
                      "    print(list(futures.map(lambda x: neighbour.triple(x), range(4))))\n")
    assert launch(script).strip() == "[0, 3, 6, 9]"
