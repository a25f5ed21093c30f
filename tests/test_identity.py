"""A task runs on the worker as exactly what the caller meant, or fails loudly: bound methods,
staticmethods, classmethods, nested classes, partials, and functions of a script (issue 9 items 11, 12)."""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import remote_tasks
from conftest import TESTS
from pyro_compute import LocalCluster, Pool
from pyro_compute.errors import KernelError
from remote_tasks import DEFAULT_SCALER, Outer, Scaler, SubScaler

T = 60
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=cluster) as p:
        yield p


@pytest.fixture(scope="module")
def by_value_pool() -> Iterator[Pool]:
    """A pool that may send code, on a worker that accepts it and may import remote_tasks."""
    with LocalCluster(1, by_value=True, allow_modules=["remote_tasks"], env=ENV) as c, \
            Pool(cluster=c, by_value=True) as p:
        yield p


# -- bound methods: never by name --------------------------------------------------------------

@pytest.mark.parametrize("method", [Scaler(3).scale, DEFAULT_SCALER.scale, Outer.Inner().shift, [].append,
                                    "text".upper], ids=["method", "module-level-instance", "nested",
                                                        "list.append", "str.upper"])
def test_a_bound_method_is_refused_without_by_value(pool: Pool, method: object) -> None:
    with pytest.raises(TypeError, match="method bound to a .* object.*by_value=True"):
        pool.submit(method, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="method bound to"):
        pool.map(method, [1, 2])  # type: ignore[arg-type]


def test_a_bound_method_goes_by_value_with_its_object(by_value_pool: Pool) -> None:
    scaler = Scaler(3)
    assert by_value_pool.submit(scaler.scale, 5).result(timeout=T) == 15
    assert list(by_value_pool.map(scaler.scale, [1, 2, 3], timeout=T)) == [3, 6, 9]
    scaler.factor = 7  # the object travels as it is now, not as it was first sent
    other = Scaler(7)
    assert by_value_pool.submit(other.scale, 5).result(timeout=T) == 35
    assert by_value_pool.submit(Outer.Inner().shift, 1).result(timeout=T) == 101
    DEFAULT_SCALER.factor = 4
    try:
        assert by_value_pool.submit(DEFAULT_SCALER.scale, 5).result(timeout=T) == 20  # not the worker's 10
    finally:
        DEFAULT_SCALER.factor = 10


# -- staticmethods, classmethods, nested classes: by exact name ----------------------------------

def test_staticmethods_run_by_reference(pool: Pool) -> None:
    assert pool.submit(Scaler.double, 4).result(timeout=T) == 8
    assert pool.submit(Scaler(9).double, 4).result(timeout=T) == 8
    assert pool.submit(Outer.Inner.negate, 4).result(timeout=T) == -4


def test_classmethods_run_on_the_class_they_were_taken_from(pool: Pool) -> None:
    assert pool.submit(Scaler.kind, 1).result(timeout=T) == "Scaler:1"
    assert pool.submit(SubScaler.kind, 2).result(timeout=T) == "SubScaler:2"  # inherited, still Sub
    assert pool.submit(SubScaler(1).kind, 3).result(timeout=T) == "SubScaler:3"
    assert list(pool.map(Outer.Inner.kind, [4, 5], timeout=T)) == ["Outer.Inner:4", "Outer.Inner:5"]


def test_by_value_pools_still_send_named_methods_by_reference(by_value_pool: Pool) -> None:
    assert by_value_pool.submit(SubScaler.kind, 2).result(timeout=T) == "SubScaler:2"
    assert by_value_pool.submit(Scaler.double, 4).result(timeout=T) == 8


# -- functools.partial ---------------------------------------------------------------------------

def test_a_partial_with_literal_arguments_runs_by_reference(pool: Pool) -> None:
    first = functools.partial(remote_tasks.keywords, 1, c="x")
    assert pool.submit(first, 2).result(timeout=T) == [1, 2, "x"]
    assert pool.submit(first, b=(3, [4.5, None]), c="y").result(timeout=T) == [1, (3, [4.5, None]), "y"]
    assert pool.submit(functools.partial(remote_tasks.type_name, b"\x00z")).result(timeout=T) == "builtins.bytes"
    assert list(pool.map(functools.partial(remote_tasks.add, 10), range(3), timeout=T)) == [10, 11, 12]
    assert pool.submit(functools.partial(SubScaler.kind), 1).result(timeout=T) == "SubScaler:1"
    nested = functools.partial(functools.partial(remote_tasks.keywords, 1), 2)
    assert pool.submit(nested, c=3).result(timeout=T) == [1, 2, 3]


@pytest.mark.parametrize("partial", [functools.partial(remote_tasks.add, np.float64(1)),
                                     functools.partial(remote_tasks.add, float("nan")),
                                     functools.partial(remote_tasks.add, {1, 2}),
                                     functools.partial(Scaler(2).scale)],
                         ids=["numpy", "nan", "set", "bound-method"])
def test_a_partial_that_cannot_be_named_exactly_is_refused(pool: Pool, partial: functools.partial[Any]) -> None:
    with pytest.raises(TypeError, match="by_value=True"):
        pool.submit(partial, 1)


def test_a_partial_that_cannot_be_named_goes_by_value(by_value_pool: Pool) -> None:
    result = by_value_pool.submit(functools.partial(remote_tasks.add, np.float64(1.5)), 1).result(timeout=T)
    assert result == 2.5
    assert by_value_pool.submit(functools.partial(Scaler(2).scale), 21).result(timeout=T) == 42


def test_the_worker_refuses_forged_partial_options(pool: Pool) -> None:
    for ref in ("remote_tasks:add {'args': 'no list', 'kwargs': {}}", "remote_tasks:add {'args': []}",
                "remote_tasks:add {'args': [], 'kwargs': {}, 'x': 1}", "remote_tasks:add __import__('os')",
                "remote_tasks:add {'args': [], 'kwargs': {1: 2}}"):
        with pytest.raises(KernelError):
            pool.submit(ref, 1).result(timeout=T)
    assert pool.submit("remote_tasks:add {'args': [1], 'kwargs': {}}", 1).result(timeout=T) == 2


# -- script identity (item 12) -----------------------------------------------------------------

SCRIPT = """
    import os
    from pyro_compute import Pool

    def work(x):
        return {tag!r} + str(x)

    if __name__ == "__main__":
        with Pool() as pool:
            try:
                print("RESULT", pool.submit(work, 1).result(timeout=60))
            except Exception as e:
                print("ERROR", type(e).__name__, e)
"""


def write(path: Path, tag: str) -> Path:
    path.write_text(textwrap.dedent(SCRIPT.format(tag=tag)))
    return path


@pytest.fixture(scope="module")
def script_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    a = write(tmp_path_factory.mktemp("a") / "a.py", "a")
    with LocalCluster(1, script=str(a)) as c:
        yield c, a


def run_client(cluster: LocalCluster, script: Path) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYRO")},
           "PYRO_COMPUTE_NS": cluster.ns, "PYRO_COMPUTE_HMAC_KEY": cluster.settings.hmac_key}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_worker_refuses_a_function_of_another_script(script_cluster: tuple[LocalCluster, Path],
                                                       tmp_path: Path) -> None:
    cluster, a = script_cluster
    b = write(tmp_path / "b.py", "b")
    out = run_client(cluster, b)
    assert out.startswith("ERROR KernelError"), out
    for name in (str(a), str(b), hashlib.sha256(a.read_bytes()).hexdigest()[:16],
                 hashlib.sha256(b.read_bytes()).hexdigest()[:16]):
        assert name in out, f"{name} missing from: {out}"


def test_the_same_script_elsewhere_runs(script_cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, a = script_cluster
    copy = tmp_path / "copy_of_a.py"
    copy.write_bytes(a.read_bytes())
    assert run_client(cluster, copy) == "RESULT a1"
    assert run_client(cluster, a) == "RESULT a1"


def test_a_name_bound_again_is_refused(pool: Pool) -> None:
    namespace: dict[str, object] = {"__name__": "remote_tasks"}
    exec("def square(x):\n    return -1\n", namespace)  # a second remote_tasks.square, not the module's
    impostor = namespace["square"]
    with pytest.raises(TypeError, match="names another object in remote_tasks"):
        pool.submit(impostor, 3)  # type: ignore[arg-type]
    assert pool.submit(remote_tasks.square, 3).result(timeout=T) == 9


def test_a_function_of_an_interactive_session_is_not_sent_by_name() -> None:
    code = ("from pyro_compute.references import reference_of\n"
            "def f(x):\n    return x\n"
            "try:\n    reference_of(f)\nexcept TypeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={
        **{k: v for k, v in os.environ.items() if not k.startswith("PYRO")}, **ENV})
    assert "interactive session" in out.stdout and "by_value=True" in out.stdout, out.stderr
