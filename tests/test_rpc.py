"""rpc: pool proxies' calls go out byte for byte as Pyro4 writes them, and replies get every Pyro4 check."""
from __future__ import annotations

import hmac

import Pyro4
import Pyro4.core
import Pyro4.errors
import pytest
import remote_tasks
from Pyro4 import message

from pyro_compute import Pool, rpc
from pyro_compute.cluster import LocalCluster
from pyro_compute.links import new_proxy

T = 30
KEY = b"the secret"


class Wire:
    """A connection that hands out ``data`` in the pieces asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.closed = data, False

    def recv(self, size: int) -> bytes:
        piece, self.data = self.data[:size], self.data[size:]
        if len(piece) < size:
            raise Pyro4.errors.ConnectionClosedError("receiving: connection closed")
        return piece

    def recv_pair(self, first: int, second: int) -> tuple[bytes, bytes]:
        return (self.recv(first) if first else b""), self.recv(second)

    def close(self) -> None:
        self.closed = True


def reply(data: bytes = b"payload", key: bytes | None = KEY, seq: int = 7, kind: int = message.MSG_RESULT,
          annotations: dict[str, bytes] | None = None) -> bytes:
    return message.Message(kind, data, 42, 0, seq, annotations=annotations, hmac_key=key).to_bytes()


@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("data", [b"", b"x" * 100_000])
def test_a_request_is_what_pyro4_would_send(key: bytes | None, data: bytes) -> None:
    expected = message.Message(message.MSG_INVOKE, data, 42, 0, 65535, hmac_key=key).to_bytes()
    assert rpc._message(message.MSG_INVOKE, data, 42, 65535, key) == expected


def test_a_good_reply_is_read_with_its_annotations() -> None:
    flags, seq, serializer_id, annotations, data = rpc._receive(Wire(reply()), KEY)
    assert (flags, seq, serializer_id, data) == (0, 7, 42, b"payload") and set(annotations) == {"HMAC"}
    extra = reply(annotations={"ZZZZ": b"more", "AAAA": b"first"})
    assert rpc._receive(Wire(extra), KEY)[3]["ZZZZ"] == b"more"  # HMAC over the others in name order


def test_a_daemon_reply_with_its_correlation_id_is_read_and_its_id_is_covered_by_the_hmac() -> None:
    corr = bytes(range(16))
    good = reply(annotations={"CORR": corr})
    mac = hmac.new(KEY, b"payload", "sha1")
    mac.update(corr)
    assert rpc._receive(Wire(good), KEY)[3] == {"CORR": corr, "HMAC": mac.digest()}
    start = good.index(corr)
    forged = good[:start] + bytes(16) + good[start + 16:]
    with pytest.raises(Pyro4.errors.SecurityError, match="hmac mismatch"):
        rpc._receive(Wire(forged), KEY)


def test_a_tampered_or_unkeyed_reply_is_refused() -> None:
    tampered = reply(b"payload")[:-1] + b"X"
    with pytest.raises(Pyro4.errors.SecurityError, match="hmac mismatch"):
        rpc._receive(Wire(tampered), KEY)
    with pytest.raises(Pyro4.errors.SecurityError, match="not symmetric"):
        rpc._receive(Wire(reply(key=None)), KEY)
    with pytest.raises(Pyro4.errors.SecurityError, match="not symmetric"):
        rpc._receive(Wire(reply()), None)
    with pytest.raises(Pyro4.errors.SecurityError, match="hmac mismatch"):
        rpc._receive(Wire(reply(key=b"another secret")), KEY)


def test_a_malformed_or_unexpected_reply_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    good = reply()
    with pytest.raises(Pyro4.errors.ProtocolError, match="protocol version"):
        rpc._receive(Wire(b"PYRX" + good[4:]), KEY)
    with pytest.raises(Pyro4.errors.ProtocolError, match="checksum"):
        rpc._receive(Wire(good[:8] + b"\x00\x09" + good[10:]), KEY)  # the seq field changed
    with pytest.raises(Pyro4.errors.ProtocolError, match="invalid msg type"):
        rpc._receive(Wire(reply(kind=message.MSG_INVOKE)), KEY)
    big = reply(b"y" * 200)
    monkeypatch.setattr(Pyro4.config, "MAX_MESSAGE_SIZE", 100)
    wire = Wire(big)
    with pytest.raises(Pyro4.errors.MessageTooLargeError):
        rpc._receive(wire, KEY)
    assert wire.closed
    with pytest.raises(Pyro4.errors.MessageTooLargeError):
        rpc._message(message.MSG_INVOKE, b"y" * 200, 42, 1, KEY)


def test_pool_proxies_call_through_rpc_and_fall_back_to_pyro4_when_it_does_not_cover_a_call(
        cluster: LocalCluster) -> None:
    uri = next(iter(cluster.registered().values()))
    with new_proxy(uri, "marshal", cluster.settings, T) as proxy:
        proxy._pyroBind()
        assert rpc.covers(proxy, "info", (), 0, None)
        assert proxy.info()["name"]
        Pyro4.core.current_context.annotations = {"XTRA": b"1"}  # only Pyro4's own code sends these
        try:
            assert not rpc.covers(proxy, "info", (), 0, None)
            assert proxy.info()["name"]
        finally:
            Pyro4.core.current_context.annotations = {}
        assert not rpc.covers(proxy, "info", (), message.FLAGS_ONEWAY, None)
    with Pool(cluster=cluster) as pool:  # remote errors still arrive as such
        with pytest.raises(ValueError, match="through rpc"):
            pool.submit(remote_tasks.fail, "through rpc").result(timeout=T)
