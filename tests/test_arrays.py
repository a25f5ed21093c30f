"""Binary arrays (issue 12 items 1 and 2) through real workers: every supported dtype, shape and
memory order round-trips bit-exactly, refused dtypes are refused and the worker keeps serving,
arrays over the message size limit cross in parts, and the parts are authenticated."""
from __future__ import annotations

import hashlib
import marshal
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import Pyro4
import Pyro4.errors
import Pyro4.message
import pytest

import array_tasks
import raw_pyro
from pyro_compute import LocalCluster, Pool, binary, bulk
from pyro_compute.links import new_proxy
from pyro_compute.wire import register_wire

TESTS = Path(__file__).parent
T = 120
MiB = 1 << 20
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}

DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16", "G",
          ">i4", ">f8", ">c16", "<u2"]
SHAPES = [(), (0,), (3, 0, 2), (7,), (5, 6), (2, 3, 4)]


@pytest.fixture(scope="module")
def arrays_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(2, allow_modules=["array_tasks"], env=ENV) as c:
        yield c


@pytest.fixture(scope="module")
def pool(arrays_cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=arrays_cluster) as p:
        yield p


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random bits of the given dtype and shape (every bit pattern, NaNs and infinities included)."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 256, count * dt.itemsize, dtype=np.uint8)
    if dt.kind == "b":
        raw = raw % 2
    return raw.view(dt).reshape(shape)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def same(a: np.ndarray, b: Any) -> None:
    """``b`` is ``a`` bit for bit: type, dtype (byte order included), shape, memory order, bytes."""
    assert type(b) is np.ndarray
    assert b.dtype.str == a.dtype.str and b.shape == a.shape
    assert np.ascontiguousarray(b).tobytes() == np.ascontiguousarray(a).tobytes()
    assert b.flags.f_contiguous == (a.flags.f_contiguous and not a.flags.c_contiguous) or b.flags.c_contiguous
    assert b.flags.writeable


def cases() -> list[np.ndarray]:
    out = [sample(dt, shape, i) for i, (dt, shape) in enumerate((d, s) for d in DTYPES for s in SHAPES)]
    base = sample("f8", (6, 8), 99)
    out += [np.asfortranarray(sample("i4", (4, 5), 1)), np.asfortranarray(sample(">c8", (3, 2, 2), 2)),
            base[::2], base.T, base[1:, ::3], base[:, 2], base[0, 1:2], np.array(3.0), np.array(7, dtype=">i2")]
    return out


def test_every_dtype_shape_and_order_round_trips_bit_exactly(pool: Pool) -> None:
    sent = cases()
    back = list(pool.map(array_tasks.identity, sent, timeout=T))
    for a, b in zip(sent, back):
        same(a, b)
    seen = list(pool.map(array_tasks.describe, sent, timeout=T))
    for a, (dtype, shape, order, writeable, sha) in zip(sent, seen):  # what the worker itself received
        assert (dtype, tuple(shape), sha, writeable) == (a.dtype.str, a.shape, digest(a), True)
        assert order == ("F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C")


@pytest.mark.parametrize("nbytes", [binary.STREAM_MIN - 8, binary.STREAM_MIN, 3 * bulk.PART + 24])
def test_arrays_around_the_streaming_threshold_and_over_several_parts(pool: Pool, nbytes: int) -> None:
    a = sample("f8", (nbytes // 8,), nbytes)
    same(a, pool.submit(array_tasks.identity, a).result(timeout=T))
    f = np.asfortranarray(a[: (nbytes // 8) // 4 * 4].reshape(-1, 4))
    same(f, pool.submit(array_tasks.identity, f).result(timeout=T))


def test_many_arrays_in_one_call_and_in_nested_results(pool: Pool) -> None:
    big = [sample("u2", (100_000 + i,), i) for i in range(3)]
    value = {"arrays": big, "pair": (big[0][::7], np.int16(-3)), "text": "x", "n": [1, 2.5, None]}
    back = pool.submit(array_tasks.identity, value).result(timeout=T)
    assert set(back) == set(value) and back["text"] == "x" and back["n"] == [1, 2.5, None]
    for a, b in zip(big, back["arrays"]):
        same(a, b)
    same(big[0][::7], back["pair"][0])
    assert type(back["pair"][1]) is np.int16 and back["pair"][1] == -3


def test_numpy_scalars_bytes_and_bytearrays_keep_their_types(pool: Pool) -> None:
    values = [np.float32(1.5), np.uint64(2**64 - 1), np.complex128(1 - 2j), np.bool_(True), np.float16(np.nan),
              b"\x00\xff" * 70_000, bytes(range(256))]
    back = list(pool.map(array_tasks.identity, values, timeout=T))
    for v, b in zip(values, back):
        assert type(b) is type(v)
        assert (np.asarray(v).tobytes() == np.asarray(b).tobytes()) if isinstance(v, np.generic) else b == v
    # A bytearray argument arrives as one (results may not be bytearrays: marshal would change them).
    assert pool.submit(array_tasks.type_and_bytes, bytearray(b"abc")).result(timeout=T) == ["bytearray", b"abc"]


def test_a_big_result_of_a_task_with_plain_arguments(pool: Pool) -> None:
    got = pool.submit(array_tasks.make, 24 * MiB, 5).result(timeout=T)
    same(array_tasks.make(24 * MiB, 5), got)


def test_transparent_rmi_through_a_pool_proxy(arrays_cluster: LocalCluster) -> None:
    register_wire()
    uri = next(iter(arrays_cluster.registered().values()))
    a = sample("c16", (300, 301), 7)
    with new_proxy(uri, "serpent", arrays_cluster.settings, T) as p:
        assert p._pyroSerializer == binary.NAME
        reply = p.batch("array_tasks:identity", [[a], [a.T]])
    assert reply["errors"] == []
    same(a, reply["results"][0])
    same(a.T, reply["results"][1])


@pytest.mark.parametrize("value", [np.array([object(), 1], dtype=object), np.zeros(3, dtype="i4,f8"),
                                   np.array(["a", "b"]), np.zeros(2, dtype="M8[s]"), np.zeros((2, 2), "V8")],
                         ids=["object", "structured", "str", "datetime", "void"])
def test_refused_dtypes_are_refused_with_a_type_error_and_the_worker_serves(
        pool: Pool, arrays_cluster: LocalCluster, value: np.ndarray) -> None:
    pids = {p for p, _ in pool.map(array_tasks.pid_and_sum, [np.ones(3)] * 4, timeout=T)}
    with pytest.raises(TypeError, match="cannot cross the wire"):
        pool.submit(array_tasks.identity, value).result(timeout=T)
    with pytest.raises(TypeError, match="cannot be sent back"):
        pool.submit(array_tasks.object_array, 3).result(timeout=T)
    same(np.arange(5.0), pool.submit(array_tasks.identity, np.arange(5.0)).result(timeout=T))
    assert pids <= {p for p, _ in pool.map(array_tasks.pid_and_sum, [np.ones(3)] * 8, timeout=T)} | pids
    assert all(psutil.pid_exists(p) for p in pids)


def call_bytes(object_id: str, tree: Any, sizes: list[int]) -> bytes:
    """A binary-serializer call whose message announces bulk frames of ``sizes``."""
    return marshal.dumps((binary.MAGIC, binary.REBUILD, tree, sizes, b"n" * 16, []))


def test_a_handshake_announcing_bulk_data_is_refused_unread(arrays_cluster: LocalCluster) -> None:
    register_wire()
    uri = next(iter(arrays_cluster.registered().values()))
    key = arrays_cluster.settings.hmac_bytes
    object_id = Pyro4.URI(uri).object
    conn = raw_pyro.connect(uri)
    try:
        data = call_bytes(object_id, {"handshake": "hello", "object": object_id}, [1 << 30])
        raw_pyro.send(conn, Pyro4.message.MSG_CONNECT, data, key, binary.SERIALIZER_ID)
        reply = Pyro4.message.Message.recv(conn, hmac_key=key)
        assert reply.type == Pyro4.message.MSG_CONNECTFAIL
    finally:
        conn.close()
    with new_proxy(uri, "marshal", arrays_cluster.settings, T) as p:
        assert marshal.loads(p.batch("array_tasks:identity", [[1]])["packed"]) == [1]


@pytest.mark.parametrize("algorithm", [bulk.POLY1305, bulk.HMAC_SHA1])
def test_a_forged_part_closes_the_connection_and_the_worker_serves(
        arrays_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, algorithm: bytes) -> None:
    register_wire()
    uri = next(iter(arrays_cluster.registered().values()))
    a = sample("f8", (bulk.PART // 8 * 2,), 3)
    with new_proxy(uri, "serpent", arrays_cluster.settings, T) as p:
        pid = p.info()["pid"]
        real_mac = bulk._mac
        monkeypatch.setattr(bulk, "new_nonce", lambda: algorithm + b"n" * 16)
        same(a, p.batch("array_tasks:identity", [[a]])["results"][0])  # this MAC passes
        monkeypatch.setattr(bulk, "_mac", lambda key, nonce, *args: b"\0" * bulk.mac_size(nonce))
        with pytest.raises(Pyro4.errors.SecurityError, match="bulk data hmac mismatch"):
            p.batch("array_tasks:identity", [[a]])
        monkeypatch.setattr(bulk, "_mac", real_mac)
        with pytest.raises(Pyro4.errors.ConnectionClosedError):  # the worker hung up after saying why
            p.info()
        p._pyroRelease()
        reply = p.batch("array_tasks:identity", [[a]])
        assert p.info()["pid"] == pid
    same(a, reply["results"][0])


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[LocalCluster]:
    """One worker that accepts Pyro4 messages of at most 1 MiB."""
    with LocalCluster(1, allow_modules=["array_tasks"], env={**ENV, "PYRO_COMPUTE_MAX_MESSAGE_SIZE": str(MiB)}) as c:
        yield c


def peak_rss(pid: int) -> int:
    """Peak resident set size of process ``pid`` in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_arrays_over_the_message_size_limit_cross_in_parts_within_twice_their_size(
        small_cluster: LocalCluster) -> None:
    """200 MiB to a worker whose messages are limited to 1 MiB, and back; memory stays ~2x the array."""
    register_wire()
    size = 200 * MiB
    uri, = small_cluster.registered().values()
    with Pool(cluster=small_cluster) as pool:
        with new_proxy(uri, "marshal", small_cluster.settings, T) as p:
            pid = p.info()["pid"]
        a = np.random.default_rng(1).random(size // 8)
        before = peak_rss(pid)
        tracemalloc.start()
        try:
            back = pool.submit(array_tasks.identity, a).result(timeout=T)
            _, client_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        same(a, back)
        del back
        worker_growth = peak_rss(pid) - before
        print(f"client peak {client_peak / MiB:.0f} MiB, worker growth {worker_growth / MiB:.0f} MiB")
        assert client_peak < 2.2 * size, f"the client held {client_peak / MiB:.0f} MiB for a 200 MiB round trip"
        assert worker_growth < 2.2 * size, f"the worker grew by {worker_growth / MiB:.0f} MiB"
        # Plain data is still bounded by the limit (only arrays travel in parts).
        with pytest.raises(Pyro4.errors.MessageTooLargeError):
            pool.submit(array_tasks.identity, "x" * (2 * MiB)).result(timeout=T)
        same(a[:10], pool.submit(array_tasks.identity, a[:10]).result(timeout=T))


# -- the serializer itself, without a network (nothing streams: no channel is open) ---------------

def test_the_serializer_round_trips_structures_in_process() -> None:
    register_wire()
    a = sample("i8", (4, 3), 11)
    value = {"a": a, "same": [a, a], "s": {np.int32(3), 4}, "f": frozenset({b"k"}), "n": None,
             ("t", 1): (1.5, 2j, "x", b"raw", bytearray(b"ba")), "e": ValueError("bad", 3)}
    back = binary.loads(binary.dumps(value))
    same(a, back["a"])
    assert back["same"][0] is back["same"][1]  # one array sent for both places, as pickle does
    assert back["s"] == {3, 4} and any(type(x) is np.int32 for x in back["s"])
    assert back["f"] == frozenset({b"k"}) and type(back["f"]) is frozenset
    assert back[("t", 1)] == (1.5, 2j, "x", b"raw", bytearray(b"ba")) and type(back[("t", 1)][4]) is bytearray
    assert type(back["e"]) is ValueError and back["e"].args == ("bad", 3)


@pytest.mark.parametrize("value, error", [(..., "Ellipsis"), ([1, {"k": (...,)}], "Ellipsis"),
                                          (np.zeros(2, dtype="U3"), "cannot cross the wire")])
def test_the_serializer_refuses_what_it_cannot_carry(value: Any, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        binary.dumps(value)


@pytest.mark.parametrize("marker", [(..., "a", "|O8", [1], "C", b"\0" * 8), (..., "a", "<f8", [2], "C", b"\0" * 8),
                                    (..., "a", "<f8", [1], "X", b"\0" * 8), (..., "s", "(2,)f8", b"\0" * 16),
                                    (..., "a", "<f8", [-1], "C", b"")])
def test_malformed_or_refused_arrays_from_the_wire_are_type_errors(marker: tuple[Any, ...]) -> None:
    data = marshal.dumps((binary.MAGIC, binary.REBUILD, [marker], [], b"", []))
    with pytest.raises(TypeError):
        binary.loads(data)


def test_a_message_announcing_frames_outside_a_channel_is_refused() -> None:
    data = marshal.dumps((binary.MAGIC, binary.REBUILD, [(..., "a", "<f8", [8], "C", 0)], [64], b"n" * 16, []))
    with pytest.raises(Pyro4.errors.SerializeError, match="bulk data"):
        binary.loads(data)
