"""A worker's thread stays with a client that calls again at once: no hand-off per request."""
from __future__ import annotations

import Pyro4
import Pyro4.message
import raw_pyro

from pyro_compute import LocalCluster
from pyro_compute.links import new_proxy
from pyro_compute.serializers import loads_plain


def test_each_client_keeps_the_thread_that_served_it(cluster: LocalCluster) -> None:
    """Two clients calling in turn (A, A, B, A, A, B ...) are each served by one thread, not the same one.

    Without lingering, the select loop hands every request to whichever pool thread is free, so
    A's calls land on several threads, or A and B share one.
    """
    uri = next(iter(cluster.registered().values()))
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    with new_proxy(uri, "marshal", cluster.settings, 30) as a, new_proxy(uri, "marshal", cluster.settings, 30) as b:
        for _ in range(30):
            for name, proxy in (("a", a), ("a", a), ("b", b)):
                reply = proxy.batch("remote_tasks:serving_thread", [[]])
                assert not reply["errors"], reply
                seen[name].add(loads_plain(reply["packed"])[0])
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1, seen
    assert seen["a"] != seen["b"]


def test_garbage_after_a_call_closes_that_connection_and_the_worker_keeps_serving(cluster: LocalCluster) -> None:
    """Bytes that are no message, sent right after a call (to the thread lingering for the next one)."""
    uri = next(iter(cluster.registered().values()))
    key = cluster.settings.hmac_bytes
    conn = raw_pyro.connect(uri)
    try:
        assert raw_pyro.handshake(conn, Pyro4.URI(uri).object, key)[0].type == Pyro4.message.MSG_CONNECTOK
        raw_pyro.send(conn, Pyro4.message.MSG_INVOKE, raw_pyro.call_payload(Pyro4.URI(uri).object, "info"), key,
                      seq=1)
        reply, info = raw_pyro.receive(conn, key)
        assert reply.type == Pyro4.message.MSG_RESULT and info["name"]
        conn.sock.sendall(b"not a Pyro4 message at all" * 4)
        assert raw_pyro.closed_by_peer(conn)
    finally:
        conn.close()
    with new_proxy(uri, "marshal", cluster.settings, 30) as proxy:
        assert proxy.batch("remote_tasks:serving_thread", [[]])["errors"] == []
