"""What workers send back (issue 9 item 13): a result the wire cannot carry fails its own task only,
over serpent and marshal alike, and a huge bad argument costs no more than receiving it did."""
from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import marshal
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import Pyro4
import pytest

import remote_tasks
from conftest import TESTS
from pyro_compute import LocalCluster, Pool
from pyro_compute.replies import plain_args, short_repr, traceback_text, unsendable
from pyro_compute.wire import from_serpent, register_wire

T = 60
MiB = 1 << 20
UNSENDABLE = ["iterator", "zip", "generator", "map", "range", "big_int", "nested_big_int", "object",
              "function", "set_of_iterators"]


@pytest.fixture(scope="module")
def uri(cluster: LocalCluster) -> str:
    return next(iter(cluster.registered().values()))


def call(cluster: LocalCluster, uri: str, serializer: str, *args: Any) -> dict[str, Any]:
    """One Evaluator.batch call over ``serializer``, with the results unpacked as the Pool does."""
    register_wire()
    with Pyro4.Proxy(uri) as p:
        p._pyroSerializer = serializer
        p._pyroHmacKey = cluster.settings.hmac_bytes
        p._pyroTimeout = T
        reply = p.batch(*args)
    if "packed" in reply:
        reply["results"] = marshal.loads(reply["packed"])
    elif "serpent" in reply:
        reply["results"] = from_serpent(reply["serpent"])
    return dict(reply)


@pytest.mark.parametrize("serializer", ["serpent", "marshal"])
@pytest.mark.parametrize("kind", UNSENDABLE)
def test_an_unsendable_result_fails_only_its_own_task(cluster: LocalCluster, uri: str, serializer: str,
                                                      kind: str) -> None:
    reply = call(cluster, uri, serializer, "remote_tasks:odd_result", [["plain", 1], [kind, 2], ["plain", 3]])
    assert reply["results"] == [1, None, 3]
    [(index, module, name, args, _)] = reply["errors"]
    assert (index, module, name) == (1, "builtins", "TypeError")
    assert "cannot be sent back" in args[0]


def test_the_reason_names_what_to_return_instead(cluster: LocalCluster, uri: str) -> None:
    reply = call(cluster, uri, "marshal", "remote_tasks:odd_result",
                 [["zip"], ["big_int"], ["object"]])
    reasons = [e[3][0] for e in reply["errors"]]
    assert "builtins.zip (an iterator: return a list of its items)" in reasons[0]
    assert "more than 4300 digits" in reasons[1] and "hex(n)" in reasons[1]
    assert "builtins.object" in reasons[2]


def test_a_pool_gets_every_other_result_of_the_chunk(cluster: LocalCluster) -> None:
    kinds = ["plain", "generator", "plain", "big_int", "plain"]
    with Pool(cluster=cluster) as pool:
        futures = [pool.submit(remote_tasks.odd_result, k, i) for i, k in enumerate(kinds)]
        outcomes = [f.exception(timeout=T) or f.result(timeout=T) for f in futures]
        assert outcomes[0::2] == [0, 2, 4]
        assert all(isinstance(o, TypeError) and "cannot be sent back" in str(o) for o in outcomes[1::2])
        got = []
        with pytest.raises(TypeError, match="cannot be sent back"):
            for value in pool.map(remote_tasks.odd_result, kinds, range(5), chunksize=5, timeout=T):
                got.append(value)
        assert got == [0]


def test_bytes_come_back_as_bytes_or_fail_loudly(cluster: LocalCluster, uri: str) -> None:
    data = bytes(range(256))
    with Pool(cluster=cluster) as pool:
        # A pool's calls use pyro_compute's binary serializer, which carries bytes back exactly,
        # with plain arguments and beside numpy values alike (issue 12).
        assert pool.submit(remote_tasks.odd_result, "bytes").result(timeout=T) == data
        assert pool.submit(remote_tasks.odd_result, "bytes", np.int64(0)).result(timeout=T) == data
    # Raw proxies in Pyro4's own serializers: marshal carries bytes, serpent would not.
    reply = call(cluster, uri, "marshal", "remote_tasks:odd_result", [["bytes"], ["plain", frozenset({1, 2})]])
    assert reply["results"] == [data, frozenset({1, 2})] and reply["errors"] == []
    assert type(reply["results"][1]) is frozenset
    # A numpy value in the same reply sends it through serpent: the bytes task fails, alone.
    reply = call(cluster, uri, "marshal", "remote_tasks:odd_result", [["numpy", 2.0], ["bytes"], ["plain", 3]])
    assert reply["results"] == [np.float64(2.0), None, 3] and type(reply["results"][0]) is np.float64
    assert [e[0] for e in reply["errors"]] == [1] and "base64 dict" in reply["errors"][0][3][0]
    reply = call(cluster, uri, "serpent", "remote_tasks:odd_result", [["plain", "text"], ["plain", [1]]])
    assert reply["results"] == ["text", [1]]


# -- the checks themselves -----------------------------------------------------------------------

Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("value", [None, True, 1, -(10**4299), 1.5, 1j, "s", [1, (2, 3)], {"a": {1: [None]}},
                                   {(1, "a"): 2.0}, {1, 2}, np.arange(3), np.float32(1), np.bool_(True),
                                   Point(1, 2), ValueError("x", 1)], ids=lambda v: type(v).__name__)
def test_plain_values_pass(value: Any) -> None:
    assert unsendable(value, serpent=True) is None
    assert unsendable([value], serpent=False) is None


@pytest.mark.parametrize("value,why", [
    (10**4300, "more than 4300 digits"), ([1, {"k": -(10**4300)}], "more than 4300 digits"),
    (iter([]), "iterator"), (range(2), "builtins.range"), (decimal.Decimal(1), "decimal.Decimal"),
    (datetime.date(2020, 1, 1), "datetime.date"), (collections.deque(), "collections.deque"),
    (collections.OrderedDict(), "collections.OrderedDict"), (np.array(["a"]), "numpy dtype <U1"),
    (np.array([None]), "numpy dtype object"), ({None: 1}, "dict key None"), ({float("nan"): 1}, "dict key nan"),
    ({10**4300: 1}, "dict key"), (ValueError(iter([])), "iterator"), (bytearray(b"x"), "builtins.bytearray"),
    (type("Local", (), {})(), "Local"),
], ids=lambda v: str(v) if isinstance(v, str) else "")
def test_values_the_wire_would_change_or_refuse_are_named(value: Any, why: str) -> None:
    assert why in (unsendable(value, serpent=True) or "")
    assert why in (unsendable([value], serpent=False) or "")


def test_bytes_and_frozensets_pass_only_without_serpent() -> None:
    for value in (b"x", frozenset({1})):
        assert unsendable(value, serpent=False) is None
        assert unsendable(value, serpent=True)


def test_error_reports_are_bounded_whatever_the_argument() -> None:
    big = "x" * (8 * MiB)
    assert len(short_repr(big)) < 200 and "8,388,608 characters" in short_repr(big)
    assert len(short_repr(b"\xff" * (8 * MiB))) < 200
    assert len(short_repr([big] * 1000)) < 1000
    try:
        remote_tasks.raise_with(big)
    except ValueError as e:
        args, text = plain_args(e), traceback_text(e)
    assert len(args[0]) < 3000 and args[0].startswith("xxx") and "characters in all" in args[0]
    assert len(text) < 5000 and "raise ValueError(value)" in text and "ValueError: xxx" in text
    try:
        raise KeyError("small")
    except KeyError as e:
        assert traceback_text(e).endswith("KeyError: 'small'\n")


# -- a 64 MiB bad argument on a real worker ---------------------------------------------------------

def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def growth(pid: int, pool: Pool, fn: Any, arg: Any) -> tuple[int, Any]:
    """How far the worker's peak RSS rose above its RSS while running ``fn(arg)``, and the outcome."""
    time.sleep(0.2)  # let the previous call's memory go back
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = psutil.Process(pid).memory_info().rss
    future = pool.submit(fn, arg)
    outcome = future.exception(timeout=300) or future.result(timeout=300)
    return peak_rss(pid) - before, outcome


@pytest.fixture(scope="module")
def lone_worker() -> Iterator[tuple[int, Pool]]:
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    with LocalCluster(1, allow_modules=["remote_tasks"], env=env) as c:
        # A worker slowed by a loaded machine must not count as hung: its call would be sent again,
        # and two 64 MiB arguments held at once are not what this measures.
        with Pool(cluster=c, settings=dataclasses.replace(c.settings, probe_timeout=60.0)) as pool:
            yield c.workers[0].pid, pool


def test_a_64_mib_bad_argument_costs_the_worker_no_more_than_receiving_it(lone_worker: tuple[int, Pool]) -> None:
    pid, pool = lone_worker
    big = "x" * (64 * MiB)
    received, length = growth(pid, pool, len, big)  # a good call: what receiving the argument costs
    assert length == 64 * MiB
    for fn in ("pi_hits", remote_tasks.raise_with):
        cost, error = growth(pid, pool, fn, big)
        assert isinstance(error, (TypeError, ValueError)) and len(str(error)) < 5000
        # Before: 3x (pi_hits) and 5x (raise_with) the argument's size at the peak, 2x of it receiving.
        assert cost < received + 16 * MiB, f"{fn}: peak rose {cost / MiB:.0f} MiB, receiving {received / MiB:.0f}"
        assert cost < 3 * 64 * MiB
