"""A fake worker for tests: a secret holder's server that answers every caller with a pickle bomb.

Run as ``python fake_worker.py MODE MARKER`` with the secret in ``TEST_KEY``; prints its port,
then serves until killed. Unpickling anything it sends creates the directory MARKER.

MODE ``handshake``: the connect reply itself is pickle. MODE ``result``: a proper serpent
handshake, then every call's result is pickle.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys
import threading
from typing import Any

import Pyro4.message
import Pyro4.util
from Pyro4.message import Message
from Pyro4.socketutil import SocketConnection

PICKLE = 4
SERPENT = Pyro4.util.SerpentSerializer.serializer_id
META = {"methods": ["batch", "info", "stats", "pi_hits", "integrate", "ping"], "oneway": [], "attrs": []}


class Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (self.path,)


def serve(conn: SocketConnection, mode: str, bomb: bytes, key: bytes) -> None:
    msg = Message.recv(conn, [Pyro4.message.MSG_CONNECT], hmac_key=key)
    if mode == "handshake":
        conn.send(Message(Pyro4.message.MSG_CONNECTOK, bomb, PICKLE, Pyro4.message.FLAGS_META_ON_CONNECT,
                          msg.seq, hmac_key=key).to_bytes())
        return
    ok, _ = Pyro4.util.get_serializer("serpent").serializeData({"handshake": "hello", "meta": META})
    conn.send(Message(Pyro4.message.MSG_CONNECTOK, ok, SERPENT, Pyro4.message.FLAGS_META_ON_CONNECT,
                      msg.seq, hmac_key=key).to_bytes())
    while True:
        msg = Message.recv(conn, hmac_key=key)
        conn.send(Message(Pyro4.message.MSG_RESULT, bomb, PICKLE, 0, msg.seq, hmac_key=key).to_bytes())


def handle(sock: socket.socket, mode: str, bomb: bytes, key: bytes) -> None:
    conn = SocketConnection(sock)
    try:
        serve(conn, mode, bomb, key)
    except (OSError, Pyro4.errors.PyroError):
        pass
    finally:
        conn.close()


def main() -> None:
    mode, marker = sys.argv[1], sys.argv[2]
    key = os.environ["TEST_KEY"].encode()
    bomb = pickle.dumps(Bomb(marker))
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock, mode, bomb, key), daemon=True).start()


if __name__ == "__main__":
    main()
