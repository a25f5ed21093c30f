"""Hand-made Pyro4 wire messages, for tests that play a misbehaving or hostile client.

Everything here talks to a real socket; nothing is mocked. Messages are built with Pyro4's own
``Message`` class (so headers, checksums and HMAC chunks are right unless a test breaks them on
purpose) and read back with ``Message.recv``.
"""
from __future__ import annotations

import socket
import struct
from typing import Any

import Pyro4.errors
import Pyro4.message
import Pyro4.util
from Pyro4 import constants
from Pyro4.message import Message
from Pyro4.socketutil import SocketConnection

SERPENT = Pyro4.util.SerpentSerializer.serializer_id
MARSHAL = Pyro4.util.MarshalSerializer.serializer_id
JSON = Pyro4.util.JsonSerializer.serializer_id
PICKLE = Pyro4.util.PickleSerializer.serializer_id
DILL = 5         # Pyro4.util.DillSerializer exists only when dill is installed
MSGPACK = 6
CLOUDPICKLE = 7
TIMEOUT = 20.0   # seconds any read from a server may take


def address(uri: str) -> tuple[str, int]:
    """The (host, port) of a ``PYRO:`` URI."""
    u = Pyro4.URI(uri)
    return u.host, u.port


def connect(where: str | tuple[str, int]) -> SocketConnection:
    """A raw connection (no handshake yet) to a URI or (host, port)."""
    host, port = address(where) if isinstance(where, str) else where
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    return SocketConnection(sock)


def header(msg_type: int, data_size: int, serializer_id: int = SERPENT, annotations_size: int = 0,
           flags: int = 0, seq: int = 0) -> bytes:
    """A well-formed header (right tag, version and checksum) announcing any sizes we like."""
    checksum = (msg_type + constants.PROTOCOL_VERSION + data_size + annotations_size + serializer_id
                + flags + seq + Message.checksum_magic) & 0xffff
    return struct.pack(Message.header_format, b"PYRO", constants.PROTOCOL_VERSION, msg_type, flags,
                       seq, data_size, serializer_id, annotations_size, 0, checksum)


def connect_payload(object_id: str, serializer_id: int = SERPENT) -> bytes:
    """The data of a MSG_CONNECT as a Pyro4 proxy sends it."""
    serializer = Pyro4.util.get_serializer_by_id(serializer_id)
    data, _ = serializer.serializeData({"handshake": "hello", "object": object_id}, False)
    return data  # type: ignore[no-any-return]


def call_payload(object_id: str, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                 serializer_id: int = SERPENT) -> bytes:
    """The data of a MSG_INVOKE as a Pyro4 proxy sends it."""
    serializer = Pyro4.util.get_serializer_by_id(serializer_id)
    data, _ = serializer.serializeCall(object_id, method, args, kwargs or {}, False)
    return data  # type: ignore[no-any-return]


def send(conn: SocketConnection, msg_type: int, data: bytes, key: bytes | None,
         serializer_id: int = SERPENT, seq: int = 0, flags: int = 0) -> None:
    """Send one message signed with ``key`` (unsigned when it is None)."""
    conn.send(Message(msg_type, data, serializer_id, flags, seq, hmac_key=key).to_bytes())


def receive(conn: SocketConnection, key: bytes | None) -> tuple[Message, Any]:
    """Read one message; return it and its data deserialized with the serializer it names."""
    msg = Message.recv(conn, hmac_key=key)
    serializer = Pyro4.util.get_serializer_by_id(msg.serializer_id)
    body = serializer.deserializeData(msg.data, msg.flags & Pyro4.message.FLAGS_COMPRESSED) if msg.data else None
    return msg, body


def handshake(conn: SocketConnection, object_id: str, key: bytes | None,
              serializer_id: int = SERPENT) -> tuple[Message, Any]:
    """Send a MSG_CONNECT; return the server's reply (MSG_CONNECTOK or MSG_CONNECTFAIL) and its data."""
    send(conn, Pyro4.message.MSG_CONNECT, connect_payload(object_id, serializer_id), key, serializer_id)
    return receive(conn, key)


def closed_by_peer(conn: SocketConnection) -> bool:
    """True if the server has closed this connection (reads EOF within the timeout)."""
    try:
        return conn.sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
