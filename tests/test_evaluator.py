"""The Evaluator and the Resolver called directly, without Pyro: validation, batches, counters."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remote_tasks
from pyro_compute import kernels, tasks
from pyro_compute.errors import ComputeError, KernelError
from pyro_compute.evaluator import KERNELS, MAX_DIMS, MAX_SAMPLES, Evaluator, check_count
from pyro_compute.references import SCRIPT_MODULE, Resolver

REMOTE_MODULES = ["remote_tasks"]


@pytest.fixture
def ev() -> Evaluator:
    return Evaluator(Resolver(REMOTE_MODULES), name="test")


def outcome(out: dict[str, Any]) -> tuple[list[Any], list[list[Any]]]:
    """The results and errors of a batch reply (which may carry further keys, such as timings)."""
    return out["results"], out["errors"]


def test_kernel_error_is_a_value_error_and_a_compute_error() -> None:
    assert issubclass(KernelError, ValueError)
    assert issubclass(KernelError, ComputeError)


# -- pi_hits arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [True, False, np.bool_(True), 1.0, 1e6, np.float64(10), "100",
                                     None, [100], b"10", 1 + 0j])
def test_pi_hits_rejects_non_integer_samples(ev: Evaluator, samples: Any) -> None:
    with pytest.raises(TypeError, match="samples must be an integer"):
        ev.pi_hits(samples, 1)


@pytest.mark.parametrize("samples", [-1, -(2**70), MAX_SAMPLES + 1, 2**64, np.int64(-5)])
def test_pi_hits_rejects_out_of_range_samples(ev: Evaluator, samples: int) -> None:
    with pytest.raises(KernelError, match="samples must be between 0 and"):
        ev.pi_hits(samples, 1)


def test_samples_limit_is_inclusive() -> None:
    # Not run through the kernel: 2**40 samples would take minutes.
    assert check_count("samples", MAX_SAMPLES) == MAX_SAMPLES
    assert check_count("samples", np.uint64(MAX_SAMPLES)) == MAX_SAMPLES
    assert type(check_count("samples", np.int32(7))) is int


@pytest.mark.parametrize("seed", [-1, 2**64, 2**100, np.int64(-1)])
def test_pi_hits_rejects_out_of_range_seed(ev: Evaluator, seed: int) -> None:
    with pytest.raises(KernelError, match="seed must be between 0 and"):
        ev.pi_hits(100, seed)


@pytest.mark.parametrize("seed", [1.5, "7", None, True, np.float32(1)])
def test_pi_hits_rejects_non_integer_seed(ev: Evaluator, seed: Any) -> None:
    with pytest.raises(TypeError, match="seed must be an integer"):
        ev.pi_hits(100, seed)


@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1, np.uint64(2**64 - 1), np.int32(9)])
def test_pi_hits_matches_the_kernel_for_the_whole_seed_range(ev: Evaluator, seed: Any) -> None:
    result = ev.pi_hits(10_001, seed)
    assert type(result) is int
    assert result == kernels.pi_hits(10_001, np.uint64(seed))


def test_pi_hits_accepts_numpy_integer_samples(ev: Evaluator) -> None:
    assert ev.pi_hits(np.int64(5000), 3) == ev.pi_hits(np.uint16(5000), 3) == ev.pi_hits(5000, 3)


def test_pi_hits_zero_samples(ev: Evaluator) -> None:
    assert ev.pi_hits(0, 1) == 0


# -- integrate arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("integrand", ["cube", "Ball", "", None, 0, ["ball"]])
def test_integrate_rejects_unknown_integrand(ev: Evaluator, integrand: Any) -> None:
    with pytest.raises(KernelError, match="unknown integrand") as info:
        ev.integrate(integrand, 100)
    assert all(name in str(info.value) for name in kernels.INTEGRANDS)


@pytest.mark.parametrize("dims", [0, -1, MAX_DIMS + 1, 10**9])
def test_integrate_rejects_dims_out_of_range(ev: Evaluator, dims: int) -> None:
    with pytest.raises(KernelError, match="dims must be between 1 and"):
        ev.integrate("ball", 100, dims=dims)


@pytest.mark.parametrize("dims", [2.0, "3", None, True])
def test_integrate_rejects_non_integer_dims(ev: Evaluator, dims: Any) -> None:
    with pytest.raises(TypeError, match="dims must be an integer"):
        ev.integrate("ball", 100, dims=dims)


@pytest.mark.parametrize("which", ["lower", "upper"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, [0.0, math.nan, 0.0], np.array([0, 0, np.inf])])
def test_integrate_rejects_non_finite_bounds(ev: Evaluator, which: str, bad: Any) -> None:
    bounds = {"lower": -1.0, "upper": 1.0, which: bad}
    with pytest.raises(KernelError, match=f"{which} must be finite"):
        ev.integrate("ball", 100, dims=3, **bounds)


@pytest.mark.parametrize("which", ["lower", "upper"])
@pytest.mark.parametrize("bad", [[0.0, 1.0], [0.0] * 4, [], "abc", None, True, {"a": 1},
                                 [[0.0], [0.0], [0.0]], np.zeros((3, 1)), ["a", "b", "c"]])
def test_integrate_rejects_malformed_bounds(ev: Evaluator, which: str, bad: Any) -> None:
    # Nested lists of the right length used to reach Numba and fail there with a TypingError,
    # an exception type no client can rebuild.
    bounds = {"lower": 0.0, "upper": 1.0, which: bad}
    with pytest.raises(TypeError, match=f"{which} must"):
        ev.integrate("ball", 100, dims=3, **bounds)


@pytest.mark.parametrize("lower, upper", [(1.0, 1.0), (1.0, 0.0), ([0, 0, 0], [1, 1, 0]), ([0, 2, 0], 1)])
def test_integrate_rejects_empty_or_inverted_boxes(ev: Evaluator, lower: Any, upper: Any) -> None:
    with pytest.raises(KernelError, match="upper bound must be greater than its lower bound"):
        ev.integrate("ball", 100, lower=lower, upper=upper, dims=3)


def test_integrate_rejects_a_box_whose_volume_overflows(ev: Evaluator) -> None:
    # Finite bounds whose width is inf: the kernel would return nan sums.
    with pytest.raises(KernelError, match="too large"):
        ev.integrate("ball", 100, lower=-1e308, upper=1e308)
    with pytest.raises(KernelError, match="too large"):
        ev.integrate("sum_squares", 100, lower=0, upper=1e200, dims=2)


def test_integrate_validates_samples_and_seed(ev: Evaluator) -> None:
    with pytest.raises(KernelError, match="samples"):
        ev.integrate("ball", -3)
    with pytest.raises(TypeError, match="samples"):
        ev.integrate("ball", 3.0)
    with pytest.raises(KernelError, match="seed"):
        ev.integrate("ball", 3, seed=-1)


def test_integrate_matches_the_kernel(ev: Evaluator) -> None:
    result = ev.integrate("ball", 20_000, seed=2**64 - 1, lower=-1, upper=[1, 1, 2], dims=3)
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index("ball"), 20_000, np.uint64(2**64 - 1),
                                           np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 2.0]))
    assert result == {"n": n, "sum": total, "sumsq": total_sq}
    assert type(result["n"]) is int and type(result["sum"]) is float and type(result["sumsq"]) is float


def test_integrate_accepts_scalar_list_tuple_and_array_bounds(ev: Evaluator) -> None:
    results = [ev.integrate("gaussian", 1000, 5, lower=lo, upper=hi, dims=2)
               for lo, hi in [(0, 1), ([0, 0], [1, 1]), ((0.0, 0.0), np.ones(2)), (np.int32(0), np.float32(1))]]
    assert all(r == results[0] for r in results)


# -- batch ---------------------------------------------------------------------------------------

def test_batch_of_a_kernel_passes_seeds_as_keyword_seed(ev: Evaluator) -> None:
    out = ev.batch("pi_hits", [[1000], [2000], [33]], seeds=[1, 2, 2**64 - 1])
    assert outcome(out) == ([kernels.pi_hits(1000, 1), kernels.pi_hits(2000, 2),
                             kernels.pi_hits(33, np.uint64(2**64 - 1))], [])


def test_batch_of_integrate_with_kwargs(ev: Evaluator) -> None:
    out = ev.batch("integrate", [["ball", 1000], ["gaussian", 500]], {"lower": -1, "dims": 2}, seeds=[3, 4])
    assert out["errors"] == []
    assert out["results"] == [ev.integrate("ball", 1000, seed=3, lower=-1, dims=2),
                              ev.integrate("gaussian", 500, seed=4, lower=-1, dims=2)]


def test_batch_without_seeds_calls_with_positional_arguments_only(ev: Evaluator) -> None:
    out = ev.batch("remote_tasks:call_args", [[1, 2], []], {"k": "v"})
    assert out["results"] == [[[1, 2], {"k": "v"}], [[], {"k": "v"}]]
    out = ev.batch("remote_tasks:call_args", [[1], [2]], seeds=[10, 11])
    assert out["results"] == [[[1], {"seed": 10}], [[2], {"seed": 11}]]


def test_batch_of_a_function_reference(ev: Evaluator) -> None:
    out = ev.batch("pyro_compute.tasks:increment", [[1], [2.5], [np.int32(4)]])
    assert outcome(out) == ([2, 3.5, 5], [])


def test_batch_reports_failed_items_and_runs_the_rest(ev: Evaluator) -> None:
    out = ev.batch("pyro_compute.tasks:increment", [[1], ["x"], [3], [], 7, [5]])
    assert out["results"] == [2, None, 4, None, None, 6]
    errors = {e[0]: e for e in out["errors"]}
    assert sorted(errors) == [1, 3, 4]
    index, module, qualname, args, tb = errors[1]
    assert (module, qualname) == ("builtins", "TypeError")
    assert isinstance(args[0], str) and "str" in args[0]
    assert "increment" in tb and "return x + 1" in tb
    assert errors[3][2] == "TypeError"
    assert errors[4][2] == "TypeError" and "argument list 4 must be a list" in errors[4][3][0]


def test_batch_of_a_kernel_reports_invalid_items(ev: Evaluator) -> None:
    out = ev.batch("pi_hits", [[1000], [-1], [1.5], [50]], seeds=[1, 2, 3, 2**64])
    assert out["results"] == [kernels.pi_hits(1000, 1), None, None, None]
    kinds = [(e[0], e[1], e[2]) for e in out["errors"]]
    assert kinds == [(1, "pyro_compute.errors", "KernelError"), (2, "builtins", "TypeError"),
                     (3, "pyro_compute.errors", "KernelError")]
    assert "samples" in out["errors"][0][3][0] and "seed" in out["errors"][2][3][0]


def test_batch_error_records_hold_only_plain_data(ev: Evaluator) -> None:
    out = ev.batch("remote_tasks:fail", [["boom"]])
    (index, module, qualname, args, tb), = out["errors"]
    assert (index, module, qualname, args) == (0, "builtins", "ValueError", ["boom"])
    assert "# REMOTE-MARKER" in tb
    out = ev.batch("remote_tasks:fail_with_args", [[[1, 2], 3]])
    assert out["errors"][0][3] == ["[1, 2]", 3]  # non-plain args travel as their repr


def test_batch_seed_collides_with_a_seed_keyword(ev: Evaluator) -> None:
    out = ev.batch("pi_hits", [[10]], {"seed": 1}, seeds=[2])
    assert out["results"] == [None] and out["errors"][0][2] == "TypeError"


@pytest.mark.parametrize("task, error, match", [
    ("nope", KernelError, "unknown kernel 'nope'"),
    ("stats", KernelError, "unknown kernel 'stats'"),
    ("_record", KernelError, "unknown kernel"),
    (42, TypeError, "task must be a kernel name"),
    (None, TypeError, "task must be a kernel name"),
    ("os:system", KernelError, "not allowed"),
    ("pyro_compute.tasks:_private", KernelError, "private"),
])
def test_batch_rejects_bad_tasks(ev: Evaluator, task: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ev.batch(task, [[1]])


@pytest.mark.parametrize("kwargs, match", [
    ({"args": 5}, "args must be a list"),
    ({"args": "ab"}, "args must be a list"),
    ({"args": [[1]], "kwargs": [1]}, "kwargs must be a dict"),
    ({"args": [[1]], "kwargs": {1: 2}}, "kwargs must be a dict with string keys"),
    ({"args": [[1], [2]], "seeds": [1]}, "seeds must be None or a list with one seed per"),
    ({"args": [[1]], "seeds": 7}, "seeds must be None or a list"),
])
def test_batch_rejects_malformed_batches(ev: Evaluator, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ev.batch("pi_hits", **kwargs)


def test_batch_of_nothing(ev: Evaluator) -> None:
    assert outcome(ev.batch("pi_hits", [])) == ([], [])
    assert outcome(ev.batch("pyro_compute.tasks:noop", [[], []])) == ([None, None], [])


# -- stats and info ------------------------------------------------------------------------------

def test_stats_count_tasks_samples_and_errors(ev: Evaluator) -> None:
    start = ev.stats()
    assert (start["tasks"], start["samples"], start["errors"]) == (0, 0, 0)
    ev.pi_hits(1000, 1)
    ev.integrate("ball", 500, 1, dims=2)
    ev.batch("pi_hits", [[100], [-1]], seeds=[1, 2])
    ev.batch("pyro_compute.tasks:increment", [[1], ["x"], [3]])
    now = ev.stats()
    assert now["tasks"] == 1 + 1 + 1 + 3
    assert now["samples"] == 1000 + 500 + 100
    assert now["errors"] == 2
    assert now["busy_seconds"] > 0
    assert now["uptime"] >= start["uptime"] >= 0


def test_rejected_direct_calls_are_not_counted_as_work(ev: Evaluator) -> None:
    with pytest.raises(KernelError):
        ev.pi_hits(-1)
    assert ev.stats()["tasks"] == 0 and ev.stats()["samples"] == 0


def test_info_describes_the_worker(ev: Evaluator) -> None:
    info = ev.info()
    assert info["name"] == "test"
    assert info["pid"] == os.getpid()
    assert info["cores"] == (os.cpu_count() or 1)
    assert info["kernels"] == list(KERNELS) == ["pi_hits", "integrate"]
    assert info["integrands"] == list(kernels.INTEGRANDS)
    assert info["modules"] == ["pyro_compute.tasks", "remote_tasks"]
    assert info["script"] is None
    assert info["numpy"] == np.__version__
    assert info["python"].count(".") == 2
    assert {"host", "pyro4", "numba"} <= set(info)


def test_evaluator_calls_use_only_signatures_warm_up_compiled() -> None:
    # In a fresh process, so nothing else has compiled them first: a real call after warm_up()
    # must not trigger another Numba compilation.
    code = textwrap.dedent("""
        from pyro_compute import kernels
        from pyro_compute.evaluator import Evaluator
        kernels.warm_up()
        before = (len(kernels.pi_hits.signatures), len(kernels.integrate.signatures))
        e = Evaluator()
        e.pi_hits(100, 1); e.pi_hits(100, 2**64 - 1); e.integrate("ball", 10, 3, dims=2)
        print(before == (len(kernels.pi_hits.signatures), len(kernels.integrate.signatures)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# -- Resolver ------------------------------------------------------------------------------------

@pytest.fixture
def script_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo what loading a script does to sys.modules and sys.path."""
    monkeypatch.delitem(sys.modules, SCRIPT_MODULE, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.parametrize("ref", [
    "os:system", "posix:system", "subprocess:run", "subprocess:Popen", "sys:exit", "importlib:import_module",
    "builtins:eval", "builtins:exec", "builtins:open", "builtins:__import__", "builtins:getattr",
    "builtins:compile", "builtins:globals", "builtins:breakpoint",
    "operator:attrgetter", "operator:itemgetter", "operator:methodcaller", "operator:call",
    "_operator:attrgetter", "math:__loader__", "math:nope",
    "pyro_compute.tasks:_private", "pyro_compute.tasks:increment.__globals__", "pyro_compute.tasks:time.sleep",
    "pyro_compute.tasks:missing", "pyro_compute.evaluator:Evaluator", "pyro_compute.worker:main",
    "remote_tasks:identity",  # not allowed on this resolver
])
def test_resolver_refuses(ref: str) -> None:
    with pytest.raises(KernelError):
        Resolver().resolve(ref)


@pytest.mark.parametrize("ref", ["nocolon", ":fn", "module:", "mod:a b", "mod:1x", "mod:a..b", "mod:a;b"])
def test_resolver_refuses_malformed_references(ref: str) -> None:
    with pytest.raises(KernelError, match="not of the form 'module:function'"):
        Resolver().resolve(ref)


def test_resolver_says_how_to_allow_a_module() -> None:
    with pytest.raises(KernelError, match="--allow-module remote_tasks"):
        Resolver().resolve("remote_tasks:identity")


@pytest.mark.parametrize("ref", ["remote_tasks:os.system", "remote_tasks:np.load", "remote_tasks:time.sleep",
                                 "remote_tasks:TypeVar", "remote_tasks:T"])
def test_resolver_refuses_names_an_allowed_module_imported(ref: str) -> None:
    with pytest.raises(KernelError):
        Resolver(REMOTE_MODULES).resolve(ref)


def test_resolver_allows_project_tasks_safe_stdlib_and_allowed_modules() -> None:
    r = Resolver(REMOTE_MODULES)
    assert r.resolve("pyro_compute.tasks:increment") is tasks.increment
    assert r.resolve("remote_tasks:identity") is remote_tasks.identity
    assert r.resolve("operator:add")(2, 3) == 5
    assert r.resolve("math:sqrt")(9.0) == 3.0
    assert r.resolve("builtins:sum")([1, 2]) == 3
    assert r.resolve("remote_tasks:identity") is r.resolve("remote_tasks:identity")


def test_resolver_reports_an_allowed_module_that_cannot_be_imported() -> None:
    with pytest.raises(KernelError, match="cannot be imported"):
        Resolver(["no_such_module_for_pyro_compute"]).resolve("no_such_module_for_pyro_compute:f")


def test_resolver_refuses_main_without_a_script() -> None:
    with pytest.raises(KernelError, match="--script"):
        Resolver().resolve("__main__:main")


def write_script(path: Path, body: str) -> str:
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.usefixtures("script_sandbox")
def test_resolver_runs_functions_of_its_script_but_not_what_it_imported(tmp_path: Path) -> None:
    script = write_script(tmp_path / "job.py", """
        import os
        from os import system
        from math import sqrt

        def double(x):
            return 2 * x

        class Scaler:
            @staticmethod
            def triple(x):
                return 3 * x

        def _hidden():
            return 0

        if __name__ == "__main__":
            raise SystemExit("the script's main block must not run on a worker")
    """)
    r = Resolver(script=script)
    assert r.resolve("__main__:double")(4) == 8
    assert r.resolve("__main__:Scaler.triple")(2) == 6
    for ref in ("__main__:os.system", "__main__:system", "__main__:sqrt", "__main__:_hidden",
                "__main__:missing", "__main__:os"):
        with pytest.raises(KernelError):
            r.resolve(ref)


@pytest.mark.usefixtures("script_sandbox")
def test_resolvers_with_different_scripts_do_not_share_functions(tmp_path: Path) -> None:
    first = write_script(tmp_path / "first.py", "def which():\n    return 'first'\n")
    second = write_script(tmp_path / "second.py", "def which():\n    return 'second'\n")
    assert Resolver(script=first).resolve("__main__:which")() == "first"
    assert Resolver(script=second).resolve("__main__:which")() == "second"


@pytest.mark.usefixtures("script_sandbox")
def test_evaluator_batch_runs_script_functions(tmp_path: Path) -> None:
    script = write_script(tmp_path / "job.py", "def double(x):\n    return 2 * x\n")
    ev = Evaluator(Resolver(script=script))
    assert outcome(ev.batch("__main__:double", [[1], [2]])) == ([2, 4], [])
    assert ev.info()["script"] == script


@pytest.mark.usefixtures("script_sandbox")
def test_resolver_checks_the_script_hash_a_reference_carries(tmp_path: Path) -> None:
    script = write_script(tmp_path / "job.py", "def which():\n    return 'job'\n")
    digest = hashlib.sha256(Path(script).read_bytes()).hexdigest()
    r = Resolver(script=script)
    assert r.resolve(f"__main__:which {{'script': '/elsewhere/job.py', 'sha256': {digest!r}}}")() == "job"
    with pytest.raises(KernelError, match=f"other.py \\(sha256 {'0' * 16}\\).*job.py \\(sha256 {digest[:16]}\\)"):
        r.resolve(f"__main__:which {{'script': '/x/other.py', 'sha256': {'0' * 64!r}}}")
    with pytest.raises(KernelError, match="--script"):
        Resolver().resolve(f"__main__:which {{'script': '/x/job.py', 'sha256': {digest!r}}}")
    with pytest.raises(KernelError, match="does not name __main__"):
        Resolver(REMOTE_MODULES).resolve(f"remote_tasks:identity {{'script': 'a', 'sha256': {digest!r}}}")


def test_resolver_builds_partials_from_literal_options() -> None:
    r = Resolver(REMOTE_MODULES)
    fn = r.resolve("remote_tasks:keywords {'args': [1], 'kwargs': {'c': (2, b'x')}}")
    assert fn(5) == [1, 5, (2, b"x")]
    for bad in ("remote_tasks:keywords {'args': [1]}", "remote_tasks:keywords {'args': (1,), 'kwargs': {}}",
                "remote_tasks:keywords [1]", "remote_tasks:keywords {'args': [], 'kwargs': {}} extra",
                "remote_tasks:keywords {'args': [" + "[" * 200 + "]" * 200 + "], 'kwargs': {}}",
                "remote_tasks:keywords {'args': ['" + "x" * 70_000 + "'], 'kwargs': {}}"):
        with pytest.raises(KernelError):
            r.resolve(bad)


# -- issue 12 item 6: unseeded batches run at C speed, flat batches send no tuple per task ---------

def test_an_unseeded_batch_goes_on_after_a_failed_task_and_keeps_every_slot(ev: Evaluator) -> None:
    out = ev.batch("pyro_compute.tasks:increment", [[1], ["x"], (3,), ["y"], [5]])
    results, errors = outcome(out)
    assert results == [2, None, 4, None, 6]
    assert [(e[0], e[2]) for e in errors] == [(1, "TypeError"), (3, "TypeError")]
    assert "increment" in errors[0][4]  # the remote traceback reaches the task's own frame


def test_an_unseeded_batch_passes_keywords_and_takes_tuple_subclasses_one_by_one(ev: Evaluator) -> None:
    import collections
    pair = collections.namedtuple("pair", "a b")
    out = ev.batch("remote_tasks:keywords", [[1], pair(2, 3), (4, 5)], {"c": 9})
    assert outcome(out) == ([[1, 0, 9], [2, 3, 9], [4, 5, 9]], [])


def test_a_flat_batch_passes_each_entry_as_the_only_argument(ev: Evaluator) -> None:
    out = ev.batch("remote_tasks:identity", [(1, 2), [3], "s", None], flat=True)
    assert outcome(out) == ([(1, 2), [3], "s", None], [])
    out = ev.batch("pyro_compute.tasks:increment", [1, "x", 3], flat=True)
    results, errors = outcome(out)
    assert results == [2, None, 4] and [e[0] for e in errors] == [1]
    seeded = ev.batch("remote_tasks:call_args", [1, 2], seeds=[10, 11], flat=True)
    assert outcome(seeded) == ([[[1], {"seed": 10}], [[2], {"seed": 11}]], [])


@pytest.mark.parametrize("flat", ["yes", 1, None])
def test_flat_must_be_a_bool(ev: Evaluator, flat: Any) -> None:
    with pytest.raises(TypeError, match="flat must be True or False"):
        ev.batch("remote_tasks:identity", [1], flat=flat)
