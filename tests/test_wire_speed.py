"""Sets in results (issue 14 item 6): they come back exactly, and big ones travel packed by marshal
without its per-set sort (0.4 s for 333,000 ints), so a mapReduce over sets is as fast as serially."""
from __future__ import annotations

import functools
import marshal
from typing import Any

import numpy as np
import Pyro4
import pytest

import remote_tasks
from pyro_compute import LocalCluster, Pool, serializers
from pyro_compute.replies import marshal_plain, pack, pack_plain
from pyro_compute.serializers import _ints_only, loads_plain
from pyro_compute.wire import register_wire

T = 60
BIG = 1_000_000  # multiples of 3 below it: 333,334 ints, as SCOOP's sum_multiples example


def same(a: Any, b: Any) -> None:
    """``a == b`` with the same types all the way down (a frozenset is not a set here)."""
    assert type(a) is type(b), (type(a), type(b))
    if type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif type(a) is dict:
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif type(a) in (set, frozenset):
        assert a == b and sorted(map(repr, map(type, a))) == sorted(map(repr, map(type, b)))
    else:
        assert a == b


VALUES = [
    [set(range(1000)), frozenset({"a", 1, 2.5, None}), set()],
    [frozenset()],
    [{"s": {1, 2}, "t": ({3}, [frozenset({4})])}, {1: {5}}, (1, "x", b"y")],
    [{frozenset({1, 2}), frozenset(), (3, frozenset({4}))}],
    [[1, 2.0, "three", b"four", None, True, 5j, (6,)], {"plain": [1]}],
    [{("k", 1): {7}, 2.5: [set()]}],
]


@pytest.mark.parametrize("values", VALUES)
def test_pack_reads_back_as_marshal_dumps_does(values: list[Any]) -> None:
    assert marshal_plain(values)
    same(marshal.loads(pack(values)), values)
    same(marshal.loads(pack(values)), marshal.loads(marshal.dumps(values)))


def test_pack_without_sets_is_marshal_dumps() -> None:
    values = [1, [2, (3, "four")], {"five": 5.0}]
    assert pack(values) == marshal.dumps(values)


def test_sets_and_frozensets_round_trip_through_a_pool(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        for kind in ("set", "frozenset", "nested"):
            got = pool.map(remote_tasks.multiples, [3, 5, 7], [BIG, 1000, 10], [kind] * 3, chunksize=1, timeout=T)
            same(list(got), [remote_tasks.multiples(s, n, kind) for s, n in [(3, BIG), (5, 1000), (7, 10)]])
        union = pool.map_reduce(remote_tasks.multiples, set.union, [3, 5], [BIG, BIG], timeout=T)
    assert type(union) is set
    assert union == set(range(0, BIG, 3)) | set(range(0, BIG, 5))


@pytest.mark.parametrize("kind", ["set", "frozenset", "nested"])
def test_a_big_set_reply_travels_packed_by_marshal(cluster: LocalCluster, kind: str) -> None:
    register_wire()
    uri = next(iter(cluster.registered().values()))
    with Pyro4.Proxy(uri) as p:
        p._pyroSerializer = "marshal"
        p._pyroHmacKey = cluster.settings.hmac_bytes
        p._pyroTimeout = T
        reply = p.batch("remote_tasks:multiples", [[3, BIG, kind], [5, 20, kind]])
    assert "packed" in reply and "serpent" not in reply and reply["errors"] == []
    same(marshal.loads(reply["packed"]), [remote_tasks.multiples(3, BIG, kind), remote_tasks.multiples(5, 20, kind)])


def test_reduce_over_sets_matches_serial(cluster: LocalCluster) -> None:
    with Pool(cluster=cluster) as pool:
        got = list(pool.map(remote_tasks.multiples, range(1, 30), [500] * 29, chunksize=4, timeout=T))
    assert functools.reduce(set.union, got) == set(range(500))
    same(got, [set(range(0, 500, s)) for s in range(1, 30)])


@pytest.mark.parametrize("values, plain", [([set(range(5))], True), ([[10**4299, -10**4299]], True),
                                           ([[1, 10**4300]], False), ([{-(10**4300), 2}], False),
                                           ([[True, 10**4300]], False), ([[]], True)])
def test_marshal_plain_checks_every_int_of_a_container(values: list[Any], plain: bool) -> None:
    assert marshal_plain(values) is plain
    assert (pack_plain(values) is not None) is plain


REFUSED = [[object()], [[1, object()]], [{"k": {object()}}], [{1.5: 2, object(): 3}], [{1}, [2**31, 10**4300]],
           [{2**40, 10**4300}], [[{1}, [object()]]], [{"a": {1}, "b": 10**4300}], [bytearray(b"x")],
           [[1, np.int64(2)]], [(1, np.zeros(2))], [[1, compile("1", "x", "eval")]]]


@pytest.mark.parametrize("values", VALUES + [[list(range(-2**31, -2**31 + 50)) + [2**31 - 1, 2**31, 2**63]],
                                             [{(1, 2): [3], "s": {2**40, -5}}]] + REFUSED)
def test_pack_plain_is_marshal_plain_then_pack(values: list[Any]) -> None:
    """The one-pass packer refuses what marshal_plain refuses and otherwise reads back as pack's bytes."""
    packed = pack_plain(values)
    assert (packed is not None) is marshal_plain(values)
    if packed is not None:
        same(marshal.loads(packed), values)
        same(marshal.loads(packed), marshal.loads(pack(values)))


@pytest.mark.parametrize("values", [list(range(-5, 20000)), [set(range(0, BIG, 3)), frozenset({1, 2}), (4, 5), [6], 7],
                                    [], [[]], [2**31 - 1, -2**31], [None], [None, True, False, 3, (4,)]])
def test_ints_are_checked_on_their_bytes_and_read_back_the_same(values: list[Any]) -> None:
    data = pack_plain(values)
    assert data is not None and _ints_only(data)
    same(loads_plain(data), values)


@pytest.mark.parametrize("values", [[1, 2**31], [{1, 2.5}], [(1, "x")], [[1, [2]]], [(None,)], list(range(70)) + [[1]]])
def test_anything_else_goes_through_the_plain_check(values: list[Any]) -> None:
    data = pack_plain(values)
    assert data is not None and not _ints_only(data)
    same(loads_plain(data), values)


def test_only_small_payloads_found_plain_are_remembered() -> None:
    ok = pack_plain([None, 7])
    assert loads_plain(ok) == [None, 7] and loads_plain(ok) == [None, 7]
    assert ok in serializers._seen
    forged = b"[" + (1).to_bytes(4, "little") + b"."  # [Ellipsis]: small, but not plain
    for _ in range(2):
        with pytest.raises(Pyro4.errors.SerializeError):
            loads_plain(forged)
    assert forged not in serializers._seen


def test_a_code_object_among_ints_is_refused() -> None:
    code = marshal.dumps(compile("1", "x", "eval"), 2)
    forged = b"[" + (3).to_bytes(4, "little") + marshal.dumps(1, 2) + code + marshal.dumps(2, 2)
    assert not _ints_only(forged)
    with pytest.raises(Pyro4.errors.SerializeError):
        loads_plain(forged)
    fake_len = b"[" + (2).to_bytes(4, "little") + marshal.dumps(1, 2) + code  # a code object posing as ints
    assert not _ints_only(fake_len)
