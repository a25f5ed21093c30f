"""Fuzzing a real worker through a real Pyro4 proxy and a raw socket: it answers and lives.

Every call made here must come back with a value or with an error the worker sent; none may
hang, close the connection on a well-formed call, or kill the worker. Kernel calls are also judged:
bad input may fail only with the documented TypeError or KernelError, and good input must return
what the kernel returns when run in this process. Hypothesis runs a fixed
set of examples (``derandomize``) so that CI is repeatable; run with ``FUZZ_EXAMPLES=5000
FUZZ_RANDOM=1`` to search further.
"""
from __future__ import annotations

import contextlib
import inspect
import marshal
import math
import os
import socket
import struct
from typing import Any, Iterator

import numpy as np
import Pyro4
import Pyro4.errors
import Pyro4.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import raw_pyro
from pyro_compute import KernelError, kernels
from pyro_compute.cluster import LocalCluster
from pyro_compute.wire import from_serpent, is_plain, register_wire

CALL_TIMEOUT = 30.0
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class Target:
    """One worker of the session cluster, with what it looked like before the fuzzing."""

    def __init__(self, cluster: LocalCluster) -> None:
        registered = cluster.registered()
        self.cluster = cluster
        self.name = sorted(registered)[0]
        self.uri = registered[self.name]
        self.object_id = Pyro4.URI(self.uri).object
        self.key = cluster.settings.hmac_bytes
        with self.proxy() as p:
            self.pid = p.info()["pid"]
            self.hits = p.pi_hits(1000, 1)
        self.all_pids = self.live_pids()

    def proxy(self, serializer: str = "serpent") -> Any:
        p = Pyro4.Proxy(self.uri)
        p._pyroHmacKey = self.key
        p._pyroSerializer = serializer
        p._pyroTimeout = CALL_TIMEOUT
        return p

    def live_pids(self) -> set[int]:
        return {p.pid for p in self.cluster.workers if p.poll() is None}

    def assert_unharmed(self) -> None:
        """Same process, same answer, and no worker of the cluster died."""
        with self.proxy() as p:
            info = p.info()
            assert (info["pid"], info["name"]) == (self.pid, self.name)
            assert p.pi_hits(1000, 1) == self.hits == kernels.pi_hits(1000, 1)
        assert self.live_pids() >= self.all_pids, "a worker died"
        assert self.cluster.registered()[self.name] == self.uri


@pytest.fixture(scope="module")
def target(cluster: LocalCluster) -> Iterator[Target]:
    register_wire()
    t = Target(cluster)
    yield t
    t.assert_unharmed()


def answered(call: Any) -> Any:
    """Run ``call``; return its value or the exception the worker raised and sent back.

    Fails the test when the call got no answer (a timeout, a closed connection or any other
    transport error) and when it failed in this process, e.g. reading the reply. Pyro4 marks
    exceptions that come from the worker with the worker's traceback (``_pyroTraceback``).
    """
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - sorted below by where it was raised
        if getattr(e, "_pyroTraceback", None):
            return e
        kind = "the worker did not answer" if isinstance(e, Pyro4.errors.CommunicationError) \
            else "the call failed in this process"
        raise AssertionError(f"{kind}: {type(e).__name__}: {e}") from e


def results(reply: dict[str, Any]) -> list[Any]:
    """A batch reply's results; over marshal they come packed, or serpent-encoded (numpy values)."""
    if "packed" in reply:
        return marshal.loads(reply["packed"])  # type: ignore[no-any-return]
    if "serpent" in reply:
        return from_serpent(reply["serpent"])  # type: ignore[no-any-return]
    return reply["results"]  # type: ignore[no-any-return]


# -- strategies --------------------------------------------------------------------------------

# Integers above 10**5 only in sizes the Evaluator refuses, so that no example runs for minutes.
HUGE = st.sampled_from([2**40 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**200, -2**200, 10**300, -1])
INTS = st.integers(-2**70, 10**5) | HUGE
SPECIAL = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0])
FLOATS = st.floats() | SPECIAL | st.sampled_from([5e-324, 1.7976931348623157e308])
COMPLEX = st.complex_numbers() | st.builds(complex, FLOATS, FLOATS)
NUMPY_SCALARS = st.one_of(
    st.builds(np.int64, st.integers(-2**63, 10**5)), st.builds(np.uint64, st.sampled_from([0, 7, 2**64 - 1])),
    st.builds(np.int8, st.integers(-128, 127)), st.builds(np.float64, FLOATS),
    st.builds(np.float32, st.floats(width=32) | SPECIAL), st.builds(np.bool_, st.booleans()),
    st.builds(np.complex128, COMPLEX),
    st.builds(np.complex64, st.complex_numbers(width=64) | st.builds(complex, SPECIAL, SPECIAL)))
ARRAY_DTYPES: list[Any] = [np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_, np.complex128,
                           np.dtype(">f8")]
NUMPY_ARRAYS: st.SearchStrategy[Any] = hnp.arrays(st.sampled_from(ARRAY_DTYPES),
                          hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
LEAVES = (st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=30) | st.binary(max_size=30)
          | COMPLEX | NUMPY_SCALARS | NUMPY_ARRAYS)
KEYS = st.text(max_size=8) | st.integers(-5, 5) | st.sampled_from(["seed", "samples", "dims", "lower", "upper"])
VALUES = st.recursive(
    LEAVES,
    lambda kids: (st.lists(kids, max_size=5) | st.tuples(kids, kids)
                  | st.dictionaries(KEYS, kids, max_size=4) | st.frozensets(st.integers(), max_size=4)),
    max_leaves=20)
ARGS = st.lists(VALUES, max_size=6)
KWARGS = st.dictionaries(st.sampled_from(["samples", "seed", "lower", "upper", "dims", "integrand",
                                          "task", "args", "kwargs", "seeds"]) | st.text(max_size=10),
                         VALUES, max_size=4)
SERIALIZERS = st.sampled_from(["serpent", "marshal"])
# Values an integer check must refuse although they behave like small integers.
NEAR_INTS = (st.booleans() | st.builds(np.bool_, st.booleans()) | st.sampled_from([1.0, 0.0, 3.0])
             | st.integers(0, 5).map(str))
KERNEL_PARAMS = {"pi_hits": ("samples", "seed"),
                 "integrate": ("integrand", "samples", "seed", "lower", "upper", "dims")}


@st.composite
def kernel_arguments(draw: Any, method: str) -> tuple[list[Any], dict[Any, Any]]:
    """Arguments for a kernel: mostly valid, some out of range, some of any type, some extra."""
    dims = draw(st.integers(1, 8) | st.integers(-3, 70) | NEAR_INTS | VALUES)
    d = dims if type(dims) is int and 1 <= dims <= 64 else 1
    finite = st.floats(-1e6, 1e6) | st.integers(-10, 10)
    bound = st.one_of(finite, finite, st.lists(finite, min_size=d, max_size=d),
                      st.lists(FLOATS, min_size=d, max_size=d), FLOATS, VALUES)
    value = {"samples": st.one_of(st.integers(0, 10**5), st.integers(0, 10**5), st.integers(-3, 10**5), HUGE,
                                  NEAR_INTS, VALUES),
             "seed": st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), INTS, NEAR_INTS, VALUES),
             "integrand": st.one_of(st.sampled_from(kernels.INTEGRANDS), st.sampled_from(kernels.INTEGRANDS),
                                    st.sampled_from(kernels.INTEGRANDS), st.text(max_size=10), VALUES),
             "lower": bound, "upper": bound, "dims": st.just(dims)}
    names = KERNEL_PARAMS[method]
    full = [draw(value[n]) for n in names]
    positional = draw(st.integers(0, len(names)))
    args = full[:positional]
    kwargs: dict[Any, Any] = {n: v for n, v in zip(names[positional:], full[positional:])
                              if draw(st.integers(0, 5)) < 5}  # now and then one goes missing
    if draw(st.integers(0, 4)) == 4:
        args += draw(ARGS)
    if draw(st.integers(0, 4)) == 4:
        kwargs.update(draw(KWARGS))
    return args, kwargs


@st.composite
def kernel_calls(draw: Any) -> tuple[str, list[Any], dict[Any, Any]]:
    method = draw(st.sampled_from(sorted(KERNEL_PARAMS)))
    return (method, *draw(kernel_arguments(method)))


# Tasks whose cost stays small whatever the (bounded) arguments; never sleep_then or pow.
SAFE_TASKS = [
    "remote_tasks:identity", "remote_tasks:type_name", "remote_tasks:call_args", "remote_tasks:fail_with_args",
    "remote_tasks:add", "operator:add", "operator:getitem", "operator:truediv", "builtins:len",
    "builtins:sorted", "builtins:repr", "builtins:str", "builtins:hash", "builtins:tuple", "builtins:dict",
    "builtins:abs", "math:sqrt", "math:isfinite", "pyro_compute.tasks:increment", "pyro_compute.tasks:noop",
]


@st.composite
def batch_calls(draw: Any, junk: bool) -> tuple[Any, ...]:
    """Positional arguments of Evaluator.batch: task, argument lists, kwargs, seeds.

    Without ``junk`` these are the calls a Pool makes, with odd values inside the argument
    lists; with ``junk`` any part may be of any type, missing or extra.
    """
    # builtins:dict builds dicts with keys the wire cannot carry, which fails the whole call
    # (test_a_result_the_wire_cannot_carry_fails_only_its_own_item); only junk calls may do that.
    task = draw(st.sampled_from([*KERNEL_PARAMS, *(t for t in SAFE_TASKS if junk or t != "builtins:dict")]))
    item = kernel_arguments(task).map(lambda call: call[0]) if task in KERNEL_PARAMS else ARGS
    items = draw(st.lists(item, max_size=6))
    seeds = draw(st.none() | st.lists(st.integers(0, 2**64 - 1), min_size=len(items), max_size=len(items)))
    if not junk:
        return (task, items, None, seeds)
    task = draw(st.one_of(st.just(task), st.text(max_size=30), VALUES))
    packed = st.builds(marshal.dumps, st.lists(st.lists(PLAIN, max_size=3), max_size=4))
    mutated = st.builds(lambda b, i, x: b[:i % (len(b) or 1)] + bytes([x]) + b[i % (len(b) or 1) + 1:],
                        packed, st.integers(0, 200), st.integers(0, 255))
    items = draw(st.one_of(st.just(items), st.lists(item | VALUES, max_size=4), VALUES, packed, mutated))
    n = len(items) if isinstance(items, (list, tuple)) else 0
    kwargs = draw(st.none() | KWARGS | VALUES)
    seeds = draw(st.just(seeds) | st.lists(INTS | VALUES, min_size=n, max_size=n) | VALUES)
    code = draw(st.binary(max_size=60) | VALUES)  # a function by value; these workers refuse it
    return tuple(draw(st.sampled_from([(task, items, kwargs, seeds), (task, items, kwargs), (task, items),
                                        (task,), (task, items, kwargs, seeds, code),
                                        (task, items, kwargs, seeds, code, None)])))


# -- calls through a proxy -----------------------------------------------------------------------

@contextlib.contextmanager
def both_proxies(target: Target) -> Iterator[dict[str, Any]]:
    """A serpent and a marshal proxy to the target; released, then the worker checked unharmed."""
    proxies = {s: target.proxy(s) for s in ("serpent", "marshal")}
    try:
        yield proxies
    finally:
        for p in proxies.values():
            p._pyroRelease()
    target.assert_unharmed()


# -- judging kernel answers ----------------------------------------------------------------------
# The Evaluator's documented contract: bad input raises TypeError or KernelError, nothing else;
# good input returns what the kernel returns when run here. The oracle below restates the
# contract from the docstrings (it does not call the Evaluator's own checks).

DOCUMENTED = (TypeError, KernelError)
DOCUMENTED_NAMES = {("builtins", "TypeError"), ("pyro_compute.errors", "KernelError")}


def _pi_hits_signature(samples: Any, seed: Any = 0) -> None: ...  # noqa: E704
def _integrate_signature(integrand: Any, samples: Any, seed: Any = 0, lower: Any = 0.0, upper: Any = 1.0,  # noqa: E704
                         dims: Any = 1) -> None: ...


SIGNATURES = {"pi_hits": inspect.signature(_pi_hits_signature),
              "integrate": inspect.signature(_integrate_signature)}
BAD, UNSURE = "bad", "unsure"  # the input must fail; the input may fail (documented) or succeed


def _integer(value: Any, low: int, high: int) -> int | None:
    """The value as an int if it is an integer in [low, high]; None otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value) if low <= value <= high else None


def _real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _box(value: Any, dims: int) -> np.ndarray | str:
    """A bound as the documented "a number or a list of dims numbers"; UNSURE for anything else."""
    if _real(value):
        value = [value] * dims
    if isinstance(value, (list, tuple)) and len(value) == dims and all(_real(v) for v in value):
        try:
            return np.array([float(v) for v in value])
        except OverflowError:
            return UNSURE
    return UNSURE


def expected(method: str, args: list[Any], kwargs: dict[Any, Any]) -> Any:
    """What the worker must answer: the local kernel's value, BAD (must raise) or UNSURE."""
    try:
        bound = SIGNATURES[method].bind(*args, **kwargs)
    except TypeError:
        return BAD
    bound.apply_defaults()
    a = bound.arguments
    samples, seed = _integer(a["samples"], 0, 2**40), _integer(a["seed"], 0, 2**64 - 1)
    if samples is None or seed is None:
        return BAD
    if method == "pi_hits":
        return kernels.pi_hits(samples, np.uint64(seed))
    dims = _integer(a["dims"], 1, 64)
    if (dims is None or not isinstance(a["integrand"], str)
            or a["integrand"] not in kernels.INTEGRANDS):
        return BAD
    lo, hi = _box(a["lower"], dims), _box(a["upper"], dims)
    if isinstance(lo, str) or isinstance(hi, str):
        return UNSURE
    with np.errstate(over="ignore", invalid="ignore"):
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)
                and np.isfinite(np.prod(hi - lo))):
            return BAD
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index(a["integrand"]), samples,
                                           np.uint64(seed), lo, hi)
    return {"n": int(n), "sum": float(total), "sumsq": float(total_sq)}


def judge(method: str, args: list[Any], kwargs: dict[Any, Any], reply: Any, exact: bool) -> None:
    """Fail unless ``reply`` is a documented exception for bad input or the local kernel's answer.

    ``exact``: the worker received the arguments as they are here (serpent, or plain data over
    marshal); otherwise only the exception type is judged.
    """
    if isinstance(reply, Exception):
        assert isinstance(reply, DOCUMENTED), f"{method}{tuple(args)!r:.200} {kwargs!r:.200}: " \
            f"undocumented {type(reply).__module__}.{type(reply).__qualname__}: {reply}"
    if not exact:
        return
    want = expected(method, args, kwargs)
    if isinstance(want, str):
        assert want == UNSURE or isinstance(reply, Exception), \
            f"{method}{tuple(args)!r:.200} {kwargs!r:.200} is bad input but returned {reply!r:.200}"
        return
    assert not isinstance(reply, Exception), f"good input {method}{tuple(args)!r:.200} {kwargs!r:.200} raised {reply!r}"
    assert type(reply) is type(want) and same_kernel_value(reply, want), (reply, want)


def same_kernel_value(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(repr(a[k]) == repr(b[k]) for k in a)
    return bool(a == b)


@st.composite
def good_kernel_calls(draw: Any) -> tuple[str, list[Any], dict[Any, Any]]:
    """Valid kernel calls only (ints of any integer type, bounds as numbers or lists), split at random."""
    def integer(low: int, high: int) -> Any:
        return draw(st.integers(low, high).flatmap(lambda v: st.sampled_from(
            [v] + [t(v) for t in (np.int64, np.uint64) if np.iinfo(t).min <= v <= np.iinfo(t).max])))
    method = draw(st.sampled_from(sorted(KERNEL_PARAMS)))
    if method == "pi_hits":
        values = [integer(0, 10**5), integer(0, 2**64 - 1)]
    else:
        dims = draw(st.integers(1, 6))
        finite = st.floats(-1e3, 1e3) | st.integers(-1000, 1000)
        lower = draw(st.lists(finite, min_size=dims, max_size=dims))
        widths = draw(st.lists(st.floats(1e-3, 1e3) | st.integers(1, 100), min_size=dims, max_size=dims))
        upper = [float(lo) + w for lo, w in zip(lower, widths)]
        if draw(st.booleans()) and len(set(map(float, lower))) == 1 and len(set(upper)) == 1:
            lower, upper = lower[0], upper[0]  # the same bound for every dimension, as a number
        values = [draw(st.sampled_from(kernels.INTEGRANDS)), integer(0, 20_000), integer(0, 2**64 - 1),
                  lower, upper, dims]
    names = KERNEL_PARAMS[method]
    positional = draw(st.integers(1 if method == "pi_hits" else 2, len(names)))
    return method, values[:positional], dict(zip(names[positional:], values[positional:]))


def test_good_kernel_calls_answer_what_the_kernel_answers_here(target: Target) -> None:
    @FUZZ
    @given(call=good_kernel_calls())
    def run(call: tuple[str, list[Any], dict[Any, Any]]) -> None:
        method, args, kwargs = call
        assert not isinstance(expected(method, args, kwargs), str), call  # the oracle agrees it is good
        judge(method, args, kwargs, answered(lambda: proxy._pyroInvoke(method, tuple(args), kwargs)), exact=True)

    with both_proxies(target) as proxies:
        proxy = proxies["serpent"]  # numpy integers keep their type only over serpent
        run()


def test_kernels_with_random_arguments(target: Target) -> None:

    @FUZZ
    @given(call=kernel_calls(), serializer=SERIALIZERS)
    def run(call: tuple[str, list[Any], dict[Any, Any]], serializer: str) -> None:
        method, args, kwargs = call
        reply = answered(lambda: proxies[serializer]._pyroInvoke(method, tuple(args), kwargs))
        exact = serializer == "serpent" or (is_plain(args) and is_plain(kwargs))
        judge(method, args, kwargs, reply, exact)
        if method == "pi_hits" and not isinstance(reply, Exception):
            assert type(reply) is int and reply >= 0

    with both_proxies(target) as proxies:
        run()


def judge_batch(method: str, items: list[Any], seeds: list[int] | None, reply: dict[str, Any], exact: bool) -> None:
    """Judge every item of a kernel batch as if called alone (``seeds[i]`` as keyword ``seed``)."""
    failed = {e[0]: e for e in reply["errors"]}
    for i, (item, value) in enumerate(zip(items, results(reply))):
        kwargs = {} if seeds is None else {"seed": seeds[i]}
        if i in failed:
            _, module, qualname, args, _ = failed[i]
            assert (module, qualname) in DOCUMENTED_NAMES, f"{method}{tuple(item)!r:.200}: undocumented " \
                f"{module}.{qualname}{tuple(args)!r:.200}"
            reply_i: Any = TypeError(*args) if qualname == "TypeError" else KernelError(*args)
        else:
            reply_i = value
        judge(method, list(item) if isinstance(item, (list, tuple)) else [item], kwargs, reply_i,
              exact and isinstance(item, (list, tuple)))


@pytest.mark.parametrize("junk", [False, True], ids=["pool-like", "junk"])
def test_batch_with_random_arguments(target: Target, junk: bool) -> None:

    @FUZZ
    @given(call=batch_calls(junk), kwargs=st.none() | KWARGS if junk else st.none(), serializer=SERIALIZERS,
           pack=st.booleans())
    def run(call: tuple[Any, ...], kwargs: dict[Any, Any] | None, serializer: str, pack: bool) -> None:
        n = len(call[1]) if len(call) > 1 and isinstance(call[1], (list, tuple)) else 0
        if pack and serializer == "marshal" and n and is_plain(call[1]):  # as a Pool sends plain rows
            call = (call[0], marshal.dumps(call[1]), *call[2:])
        reply = answered(lambda: proxies[serializer]._pyroInvoke("batch", call, kwargs or {}))
        if not junk:
            assert isinstance(reply, dict), reply  # only items may fail, never the whole call
        if isinstance(reply, dict):
            if len(call) < 2:
                n = len((kwargs or {})["args"])
            elif isinstance(call[1], bytes):
                n = len(marshal.loads(call[1]))
            assert len(results(reply)) == n
            assert all(isinstance(e, list) and len(e) == 5 and 0 <= e[0] < n for e in reply["errors"])
        if not junk and call[0] in KERNEL_PARAMS:
            exact = serializer == "serpent" or is_plain(call[1])
            judge_batch(call[0], marshal.loads(call[1]) if isinstance(call[1], bytes) else call[1],
                        call[3], reply, exact)

    with both_proxies(target) as proxies:
        run()


PLAIN = st.recursive(st.none() | st.booleans() | st.integers(-2**200, 2**200)
                     | st.floats(allow_nan=False) | st.text(max_size=30),
                     lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=30)


def test_plain_values_round_trip_exactly(target: Target) -> None:
    """What the Pool sends (JSON-like data, huge ints included) comes back equal, both serializers."""

    @FUZZ
    @given(values=st.lists(PLAIN, min_size=1, max_size=5), serializer=SERIALIZERS)
    def run(values: list[Any], serializer: str) -> None:
        reply = proxies[serializer].batch("remote_tasks:identity", [[v] for v in values])
        assert reply["errors"] == []
        assert results(reply) == values

    with both_proxies(target) as proxies:
        run()


def same(a: Any, b: Any) -> bool:
    """Equal in value, type and (for numpy) dtype and shape; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, float):
        return repr(a) == repr(b)  # -0.0 stays -0.0
    if isinstance(a, complex):  # serpent writes complex as a literal sum, which loses signed zeros
        return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in ((a.real, b.real), (a.imag, b.imag)))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


PY_NUMBERS = FLOATS | COMPLEX | INTS
NUMERIC = st.recursive(NUMPY_SCALARS | NUMPY_ARRAYS | PY_NUMBERS, lambda kids: st.lists(kids, max_size=4),
                       max_leaves=8)
# A client sends numpy values with serpent only (marshal would turn them into bytes; the Pool
# checks with is_plain), so marshal gets Python numbers.
NUMBERS_CALLS = (st.tuples(st.just("serpent"), st.lists(NUMERIC, min_size=1, max_size=4))
                 | st.tuples(st.just("marshal"), st.lists(st.recursive(PY_NUMBERS, st.lists, max_leaves=8),
                                                          min_size=1, max_size=4)))


def test_numbers_round_trip_exactly(target: Target) -> None:
    """Python and numpy numbers, NaN and infinities included, come back as they went, both serializers."""

    @FUZZ
    @given(call=NUMBERS_CALLS)
    def run(call: tuple[str, list[Any]]) -> None:
        serializer, values = call
        reply = proxies[serializer].batch("remote_tasks:identity", [[v] for v in values])
        assert reply["errors"] == []
        back = results(reply)
        assert same(back, values), (back, values)

    with both_proxies(target) as proxies:
        run()


@pytest.mark.parametrize("key", [None, math.nan, np.int64(1)], ids=["None", "nan", "int64"])
def test_a_result_the_wire_cannot_carry_fails_only_its_own_item(target: Target, key: Any) -> None:
    with target.proxy() as p:
        reply = p.batch("builtins:dict", [[[(key, 1)]], [[("fine", 2)]]])
    assert results(reply)[1] == {"fine": 2}
    assert [e[0] for e in reply["errors"]] == [0]
    target.assert_unharmed()


SPECIAL_METHODS = st.sampled_from([
    "__getattr__", "__setattr__", "__init__", "__class__", "__dict__", "__reduce__", "__del__",
    "_task", "_record", "_resolver", "_lock", "_run_lock", "name", "_pyroId", "_pyroDaemon",
    "info", "stats", "batch", "pi_hits", "integrate", "", " ", "info ", "INFO", "a.b", "__getattr__.x"])


def test_unknown_and_private_method_names(target: Target) -> None:
    with target.proxy() as p:
        name_before = p.info()["name"]

        @FUZZ
        @given(method=SPECIAL_METHODS | st.text(max_size=30), args=ARGS, kwargs=KWARGS)
        def run(method: str, args: list[Any], kwargs: dict[Any, Any]) -> None:
            reply = answered(lambda: p._pyroInvoke(method, tuple(args), kwargs))
            if method.startswith("_") or method not in ("info", "stats", "batch", "pi_hits", "integrate"):
                assert isinstance(reply, Exception), f"{method!r} returned {reply!r:.200}"

        run()
        hijacks: list[tuple[str, Any]] = [("name", "hijacked"), ("_resolver", None), ("_stdlib", {})]
        for attr, value in hijacks:
            reply = answered(lambda: p._pyroInvoke("__setattr__", (attr, value), {}))
            assert isinstance(reply, AttributeError), reply
        assert p.info()["name"] == name_before
    target.assert_unharmed()


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list) and len(value) == 1:
        value, depth = value[0], depth + 1
    return depth


@pytest.mark.parametrize("depth", [50, 199, 200, 1000, 100_000])
@pytest.mark.parametrize("serializer_id", [raw_pyro.SERPENT, raw_pyro.MARSHAL], ids=["serpent", "marshal"])
def test_deeply_nested_arguments(target: Target, serializer_id: int, depth: int) -> None:
    """Nesting deeper than a Pyro4 client would even send (serpent stops at 200 levels) is answered."""
    if serializer_id == raw_pyro.SERPENT:
        placeholder, nested = b"'PLACEHOLDER'", b"[" * depth + b"1" + b"]" * depth
    else:
        placeholder, nested = marshal.dumps("PLACEHOLDER"), b"[\x01\x00\x00\x00" * depth + b"i\x01\x00\x00\x00"
    data = raw_pyro.call_payload(target.object_id, "batch", ("remote_tasks:identity", [["PLACEHOLDER"]]),
                                 serializer_id=serializer_id)
    assert data.count(placeholder) == 1
    conn = raw_pyro.connect(target.uri)
    try:
        assert raw_pyro.handshake(conn, target.object_id, target.key)[0].type == Pyro4.message.MSG_CONNECTOK
        raw_pyro.send(conn, Pyro4.message.MSG_INVOKE, data.replace(placeholder, nested), target.key,
                      serializer_id, seq=1)
        reply, body = raw_pyro.receive(conn, target.key)
    finally:
        conn.close()
    assert reply.type == Pyro4.message.MSG_RESULT and reply.seq == 1
    if reply.flags & Pyro4.message.FLAGS_EXCEPTION:
        assert isinstance(body, Exception)
    else:
        assert body["errors"] == [] and depth_of(results(body)[0]) == depth
    target.assert_unharmed()


# -- raw bytes on the socket ----------------------------------------------------------------------

def send_and_close(target: Target, data: bytes, signed_in: bool) -> None:
    """Send ``data`` (after a good handshake if ``signed_in``), read whatever comes back, hang up."""
    conn = raw_pyro.connect(target.uri)
    try:
        if signed_in:
            reply, _ = raw_pyro.handshake(conn, target.object_id, target.key)
            assert reply.type == Pyro4.message.MSG_CONNECTOK
        try:
            conn.sock.sendall(data)
            conn.sock.shutdown(socket.SHUT_WR)  # no more bytes: a worker waiting for them sees EOF
            while conn.sock.recv(65536):
                pass
        except OSError:
            pass  # reset or not connected: the worker hung up without reading everything
    finally:
        conn.close()


def test_random_bytes_on_the_socket(target: Target) -> None:
    @FUZZ
    @given(data=st.binary(min_size=1, max_size=2000) | st.builds(lambda b: b"PYRO" + b, st.binary(max_size=200)),
           signed_in=st.booleans())
    def run(data: bytes, signed_in: bool) -> None:
        send_and_close(target, data, signed_in)

    run()
    target.assert_unharmed()


def test_random_headers_on_the_socket(target: Target) -> None:
    """Well-formed headers (right tag and checksum) with any type, flags, sizes and serializer."""
    @FUZZ
    @given(msg_type=st.integers(0, 0xffff) | st.sampled_from([1, 2, 3, 4, 5, 6]),
           flags=st.integers(0, 0xffff), data_size=st.integers(-2**31, 2**31 - 1) | st.integers(0, 300),
           serializer_id=st.integers(0, 0xffff) | st.sampled_from([1, 3]),
           annotations_size=st.integers(0, 0xffff) | st.integers(0, 40),
           body=st.binary(max_size=400), signed_in=st.booleans())
    def run(msg_type: int, flags: int, data_size: int, serializer_id: int, annotations_size: int,
            body: bytes, signed_in: bool) -> None:
        head = raw_pyro.header(msg_type, data_size, serializer_id, annotations_size, flags, seq=1)
        send_and_close(target, head + body, signed_in)

    run()
    target.assert_unharmed()


def test_signed_messages_with_random_flags_and_payloads(target: Target) -> None:
    """With the right secret: any flags, serializer and payload; the worker answers or hangs up."""
    @FUZZ
    @given(msg_type=st.sampled_from([Pyro4.message.MSG_INVOKE, Pyro4.message.MSG_PING, Pyro4.message.MSG_RESULT,
                                     Pyro4.message.MSG_CONNECT]),
           flags=st.integers(0, 0xff), serializer_id=st.sampled_from([raw_pyro.SERPENT, raw_pyro.MARSHAL]),
           payload=st.binary(max_size=300) | st.sampled_from([b"", b"()", b"{}", b"[]", b"\x00"]),
           mutate=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
    def run(msg_type: int, flags: int, serializer_id: int, payload: bytes, mutate: list[tuple[int, int]]) -> None:
        if not payload:  # mutate a real call instead
            data = bytearray(raw_pyro.call_payload(target.object_id, "info", serializer_id=serializer_id))
            for pos, byte in mutate:
                data[pos % len(data)] = byte
            payload = bytes(data)
        conn = raw_pyro.connect(target.uri)
        try:
            assert raw_pyro.handshake(conn, target.object_id, target.key)[0].type == Pyro4.message.MSG_CONNECTOK
            raw_pyro.send(conn, msg_type, payload, target.key, serializer_id, seq=7, flags=flags)
            try:
                conn.sock.shutdown(socket.SHUT_WR)
                while conn.sock.recv(65536):  # an answer, or nothing (oneway flag), then EOF
                    pass
            except OSError:
                pass  # the worker hung up first
        finally:
            conn.close()

    run()
    target.assert_unharmed()


@pytest.mark.parametrize("case", [
    "truncated header", "huge size", "huge size signed in", "big size then hang up", "negative size",
    "negative size signed in", "bad checksum", "wrong version", "truncated annotations",
    "non-ascii annotation", "bad correlation id", "unsigned ping", "zero bytes",
])
def test_malformed_messages(target: Target, case: str) -> None:
    hdr = raw_pyro.header
    connect = Pyro4.message.MSG_CONNECT
    invoke = Pyro4.message.MSG_INVOKE
    valid = Pyro4.message.Message(connect, raw_pyro.connect_payload(target.object_id), raw_pyro.SERPENT, 0, 0,
                                  hmac_key=target.key).to_bytes()
    signed_in = case.endswith("signed in")
    data = {
        "truncated header": valid[:10],
        "huge size": hdr(connect, 2**31 - 1),
        "huge size signed in": hdr(invoke, 2**31 - 1, seq=1),
        "big size then hang up": hdr(connect, 200 * 2**20) + b"x" * 1000,
        "negative size": hdr(connect, -2**31, annotations_size=100) + b"x" * 100,
        "negative size signed in": hdr(invoke, -1, seq=1),
        "bad checksum": valid[:22] + bytes([valid[22] ^ 0xff]) + valid[23:],
        "wrong version": valid[:4] + struct.pack("!H", 47) + valid[6:],
        "truncated annotations": hdr(connect, 0, annotations_size=5) + b"HMAC\x00",
        "non-ascii annotation": hdr(connect, 0, annotations_size=8) + b"\xff\xfe\xfd\xfc\x00\x02ab",
        "bad correlation id": hdr(connect, 0, annotations_size=9) + b"CORR\x00\x03abc",
        "unsigned ping": hdr(Pyro4.message.MSG_PING, 4) + b"ping",
        "zero bytes": b"\x00" * 4096,
    }[case]
    send_and_close(target, data, signed_in)
    target.assert_unharmed()


def test_nan_and_infinities_reach_the_worker_as_floats(target: Target) -> None:
    with target.proxy() as p:
        reply = p.batch("remote_tasks:identity", [[math.nan], [math.inf], [-math.inf], [-0.0]])
    nan, inf, ninf, zero = reply["results"]
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf and math.copysign(1, zero) == -1
