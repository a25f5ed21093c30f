"""Security and bad input against real processes on 127.0.0.1 (no mocks).

The shared secret on workers and the name server, pickle-family serializers, the function
allow-list, loopback binding, the message size limit and TLS. Calls that only read use the
session ``cluster``; tests that need other settings start processes of their own.
"""
from __future__ import annotations

import importlib.util
import json
import operator
import os
import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import Pyro4
import Pyro4.errors
import Pyro4.message
import pytest

import raw_pyro
import remote_tasks
from polling import wait_until
from pyro_compute import Pool, kernels
from pyro_compute.cluster import LocalCluster, free_port, terminate
from pyro_compute.config import NAME_PREFIX, Settings
from pyro_compute.errors import KernelError
from pyro_compute.server import PREAUTH_DEADLINE
from pyro_compute.wire import register_wire

TESTS = Path(__file__).parent
REPO = TESTS.parent
HOST = "127.0.0.1"
CALL_TIMEOUT = 20.0
PYTHONPATH = os.pathsep.join([str(TESTS), *sys.path])


@pytest.fixture(autouse=True, scope="module")
def wire() -> None:
    register_wire()


def proxy(uri: str, key: bytes | None, serializer: str = "serpent") -> Any:
    p = Pyro4.Proxy(uri)
    p._pyroHmacKey = key
    p._pyroSerializer = serializer
    p._pyroTimeout = CALL_TIMEOUT
    return p


@pytest.fixture
def worker_uri(cluster: LocalCluster) -> str:
    """The URI of one registered worker of the session cluster."""
    registered = cluster.registered()
    assert registered, "the session cluster has no registered worker"
    return registered[sorted(registered)[0]]


@pytest.fixture
def ev(cluster: LocalCluster, worker_uri: str) -> Iterator[Any]:
    """A proxy holding the right secret to that worker."""
    with proxy(worker_uri, cluster.settings.hmac_bytes) as p:
        yield p


def assert_serves(ev: Any, pid: int) -> None:
    """The worker behind ``ev`` is the same process as before and still computes right."""
    assert ev.info()["pid"] == pid
    assert psutil.pid_exists(pid)
    assert ev.pi_hits(1000, 1) == kernels.pi_hits(1000, 1)


class Detonator:
    """Unpickling this creates a directory: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (self.path,)


def pickle_family() -> list[str]:
    """Pyro4 serializers that can run code while loading and are installed here."""
    return ["pickle"] + [name for name in ("dill", "cloudpickle") if importlib.util.find_spec(name)]


# -- the shared secret ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, b"", b"wrong key"], ids=["none", "empty", "wrong"])
def test_worker_refuses_strangers_and_runs_nothing_for_them(
        cluster: LocalCluster, worker_uri: str, ev: Any, key: bytes | None) -> None:
    before = ev.stats()["tasks"]
    with proxy(worker_uri, key) as stranger:
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            stranger.pi_hits(1000, 1)
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            stranger.batch("remote_tasks:identity", [[1]])
    assert ev.stats()["tasks"] == before
    assert ev.pi_hits(1000, 1) == kernels.pi_hits(1000, 1)


@pytest.mark.parametrize("forgery", ["unsigned", "wrong key", "tampered"])
def test_worker_drops_a_forged_call_on_an_open_connection(
        cluster: LocalCluster, worker_uri: str, ev: Any, forgery: str) -> None:
    """After a good handshake, one call without the right signature closes the connection unanswered."""
    key = cluster.settings.hmac_bytes
    object_id = Pyro4.URI(worker_uri).object
    pid, before = ev.info()["pid"], ev.stats()["tasks"]
    conn = raw_pyro.connect(worker_uri)
    try:
        reply, _ = raw_pyro.handshake(conn, object_id, key)
        assert reply.type == Pyro4.message.MSG_CONNECTOK
        data = raw_pyro.call_payload(object_id, "pi_hits", (12345, 1))
        if forgery == "tampered":  # signed with the right key, then one digit changed on the way
            wire = Pyro4.message.Message(Pyro4.message.MSG_INVOKE, data, raw_pyro.SERPENT, 0, 1,
                                         hmac_key=key).to_bytes()
            assert wire.count(b"12345") == 1
            conn.send(wire.replace(b"12345", b"92345"))
        else:
            raw_pyro.send(conn, Pyro4.message.MSG_INVOKE, data, None if forgery == "unsigned" else b"x",
                          seq=1)
        assert raw_pyro.closed_by_peer(conn)
    finally:
        conn.close()
    assert ev.stats()["tasks"] == before
    assert_serves(ev, pid)


@pytest.mark.parametrize("key", [None, b"wrong key"], ids=["none", "wrong"])
def test_name_server_refuses_strangers_who_would_hijack_names(cluster: LocalCluster, key: bytes | None) -> None:
    host, port = cluster.settings.ns_address
    names = cluster.registered()
    victim = sorted(names)[0]
    with proxy(f"PYRO:Pyro.NameServer@{host}:{port}", key) as ns:
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            ns.register(NAME_PREFIX + "impostor", f"PYRO:evil@{HOST}:1")
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            ns.remove(victim)
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            ns.register(victim, f"PYRO:evil@{HOST}:1", safe=False)
    assert cluster.registered() == names  # nothing added, removed or redirected
    with proxy(f"PYRO:Pyro.NameServer@{host}:{port}", cluster.settings.hmac_bytes) as ns:
        assert ns.lookup(victim) == Pyro4.URI(names[victim])


# -- serializers that execute code while loading -------------------------------------------------

@pytest.mark.parametrize("serializer", pickle_family())
def test_pickle_family_clients_are_refused_at_connect(
        cluster: LocalCluster, worker_uri: str, ev: Any, serializer: str, tmp_path: Path) -> None:
    pid = ev.info()["pid"]
    marker = tmp_path / "unpickled"
    with proxy(worker_uri, cluster.settings.hmac_bytes, serializer) as p:
        with pytest.raises(Pyro4.errors.CommunicationError, match="serializer that is not accepted"):
            p.batch("remote_tasks:identity", [[Detonator(marker)]])
    assert not marker.exists()
    assert_serves(ev, pid)


@pytest.mark.parametrize("serializer", pickle_family())
def test_pickle_payload_after_a_serpent_handshake_is_never_loaded(
        cluster: LocalCluster, worker_uri: str, ev: Any, serializer: str, tmp_path: Path) -> None:
    """A client that connects with serpent and then switches serializer gets an error, not a pickle.load."""
    pid = ev.info()["pid"]
    marker = tmp_path / "unpickled"
    with proxy(worker_uri, cluster.settings.hmac_bytes) as p:
        p._pyroBind()
        p._pyroSerializer = serializer
        # The worker refuses the call and says so in the caller's serializer; this (hardened)
        # client then refuses to decode that pickled reply too.
        with pytest.raises(Pyro4.errors.SerializeError, match=f"refused to decode a message in {serializer}"):
            p.batch("remote_tasks:identity", [[Detonator(marker)]])
    assert not marker.exists()
    assert_serves(ev, pid)


@pytest.mark.parametrize("serializer", ["serpent", "marshal"])
def test_functions_by_value_are_refused_unread_without_allow_by_value(
        cluster: LocalCluster, worker_uri: str, ev: Any, serializer: str, tmp_path: Path) -> None:
    """A worker started without --allow-by-value never unpickles the ``code`` a caller sends."""
    pid = ev.info()["pid"]
    assert ev.info()["by_value"] is False
    marker = tmp_path / "unpickled"
    with proxy(worker_uri, cluster.settings.hmac_bytes, serializer) as p:
        with pytest.raises(KernelError, match="does not accept functions by value"):
            p.batch("remote_tasks:identity", [[1]], None, None, pickle.dumps(Detonator(marker)))
    assert not marker.exists()
    assert_serves(ev, pid)


REFUSED_IDS = [raw_pyro.JSON, raw_pyro.PICKLE, raw_pyro.DILL, raw_pyro.MSGPACK, raw_pyro.CLOUDPICKLE,
               0, 8, 255, 65535]


@pytest.mark.parametrize("serializer_id", REFUSED_IDS)
@pytest.mark.parametrize("stage", ["connect", "call"])
def test_raw_messages_in_other_serializers_are_refused_unread(
        cluster: LocalCluster, worker_uri: str, ev: Any, serializer_id: int, stage: str,
        tmp_path: Path) -> None:
    """Only serpent and marshal are read; a pickle under any other serializer id is never loaded."""
    key = cluster.settings.hmac_bytes
    object_id = Pyro4.URI(worker_uri).object
    pid = ev.info()["pid"]
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(Detonator(marker))
    conn = raw_pyro.connect(worker_uri)
    try:
        if stage == "connect":
            raw_pyro.send(conn, Pyro4.message.MSG_CONNECT, bomb, key, serializer_id)
            reply, body = raw_pyro.receive(conn, key)  # the refusal comes back in marshal
            assert reply.type == Pyro4.message.MSG_CONNECTFAIL
            assert "serializer that is not accepted" in body
        else:
            reply, _ = raw_pyro.handshake(conn, object_id, key)
            assert reply.type == Pyro4.message.MSG_CONNECTOK
            raw_pyro.send(conn, Pyro4.message.MSG_INVOKE, bomb, key, serializer_id, seq=1)
            # The error goes back in the caller's own serializer when the worker has it;
            # for ids it does not know, it can only hang up.
            try:
                reply = Pyro4.message.Message.recv(conn, hmac_key=key)
            except Pyro4.errors.ConnectionClosedError:
                pass
            else:
                assert reply.type == Pyro4.message.MSG_RESULT
                assert reply.flags & Pyro4.message.FLAGS_EXCEPTION
                assert b"serializer that is not accepted" in reply.data
    finally:
        conn.close()
    assert not marker.exists()
    assert_serves(ev, pid)


# -- the function allow-list ---------------------------------------------------------------------

@pytest.mark.parametrize("ref, args, named", [
    ("os:system", ["touch {marker}"], "os"),
    ("posix:system", ["touch {marker}"], "posix"),
    ("subprocess:run", [["touch", "{marker}"]], "subprocess"),
    ("subprocess:check_call", [["touch", "{marker}"]], "subprocess"),
    ("importlib:import_module", ["antigravity"], "importlib"),
    ("shutil:rmtree", ["{marker}"], "shutil"),
    ("builtins:eval", ["__import__('os').mkdir('{marker}')"], "builtins:eval"),
    ("builtins:exec", ["__import__('os').mkdir('{marker}')"], "builtins:exec"),
    ("builtins:compile", ["1", "x", "eval"], "builtins:compile"),
    ("builtins:open", ["{marker}", "w"], "builtins:open"),
    ("builtins:getattr", [0, "real"], "builtins:getattr"),
    ("builtins:__import__", ["antigravity"], "builtins:__import__"),
    ("operator:methodcaller", ["system"], "operator:methodcaller"),
    ("operator:attrgetter", ["__class__"], "operator:attrgetter"),
    ("remote_tasks:os.system", ["touch {marker}"], "remote_tasks:os.system"),
    ("remote_tasks:np.save", ["{marker}", 1], "remote_tasks:np.save"),
    ("remote_tasks:TypeVar", ["T"], "remote_tasks:TypeVar"),
    ("remote_tasks:identity.__globals__", [], "remote_tasks:identity.__globals__"),
    ("pyro_compute.tasks:time.sleep", [60], "pyro_compute.tasks:time.sleep"),
    ("__main__:system", ["touch {marker}"], "__main__:system"),
    ("os.path:join", ["a"], "os.path"),
    ("remote_tasks", [], "remote_tasks"),
    ("os:", [], "os:"),
    (":system", [], ":system"),
])
def test_functions_outside_the_allow_list_are_refused(
        ev: Any, tmp_path: Path, ref: str, args: list[Any], named: str) -> None:
    marker = tmp_path / "ran"

    def fill(arg: Any) -> Any:
        if isinstance(arg, list):
            return [fill(a) for a in arg]
        return arg.replace("{marker}", str(marker)) if isinstance(arg, str) else arg

    pid = ev.info()["pid"]
    with pytest.raises(KernelError) as info:
        ev.batch(ref, [fill(args)])
    assert type(info.value) is KernelError
    assert named in str(info.value)
    with pytest.raises(KernelError):  # with seeds, as a Pool sends seeded maps
        ev.batch(ref, [fill(args)], None, [1])
    assert not marker.exists()
    assert_serves(ev, pid)


@pytest.mark.parametrize("module", ["antigravity", "this", "smtplib", "turtle", "webbrowser", "ftplib"])
def test_a_refused_module_is_not_imported_as_a_side_effect(ev: Any, module: str) -> None:
    def loaded(name: str) -> bool:
        out = ev.batch("remote_tasks:loaded", [[name]])
        assert out["errors"] == []
        return out["results"][0]  # type: ignore[no-any-return]

    assert loaded("remote_tasks") and loaded("pyro_compute.tasks")  # the probe itself works
    assert not loaded(module), f"precondition: nothing in the worker imported {module} yet"
    for ref in (f"{module}:main", f"{module}:{module}.x", f"{module}.sub:main"):
        with pytest.raises(KernelError, match=f"module '{module}(.sub)?' is not allowed"):
            ev.batch(ref, [[]])
    with pytest.raises(KernelError, match="'importlib' is not allowed"):
        ev.batch("importlib:import_module", [[module]])
    assert not loaded(module)


# -- where the processes listen ------------------------------------------------------------------

def test_workers_and_name_server_listen_on_loopback_only(cluster: LocalCluster) -> None:
    host, port = cluster.settings.ns_address
    with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
        assert ns._pyroUri.host == HOST
    registered = cluster.registered()
    assert registered
    for uri in registered.values():  # LocalCluster passes no --host: this is the worker default
        assert Pyro4.URI(uri).host == HOST, uri
    children = [p for p in (cluster.nameserver, *cluster.workers) if p is not None and p.poll() is None]
    assert len(children) >= 1 + len(registered)
    for child in children:
        sockets = psutil.Process(child.pid).net_connections(kind="inet")
        listening = [s for s in sockets if s.status == psutil.CONN_LISTEN]
        assert listening, f"process {child.pid} listens nowhere"
        assert {s.laddr.ip for s in sockets} == {HOST}, sockets
        assert not [s for s in sockets if s.type == socket.SOCK_DGRAM], "no UDP (broadcast) sockets"


# -- message size ------------------------------------------------------------------------------

SMALL_LIMIT = 100_000


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[LocalCluster]:
    """One worker that accepts messages of at most SMALL_LIMIT bytes."""
    env = {"PYTHONPATH": PYTHONPATH, "PYRO_COMPUTE_MAX_MESSAGE_SIZE": str(SMALL_LIMIT)}
    with LocalCluster(1, allow_modules=["remote_tasks"], env=env) as c:
        yield c


@pytest.fixture
def small(small_cluster: LocalCluster) -> Iterator[tuple[str, Any]]:
    uri, = small_cluster.registered().values()
    with proxy(uri, small_cluster.settings.hmac_bytes) as p:
        yield uri, p


def test_message_size_limit_is_in_force_and_the_worker_survives_it(
        small_cluster: LocalCluster, small: tuple[str, Any]) -> None:
    uri, ev = small
    pid = ev.info()["pid"]
    text = "x" * (SMALL_LIMIT // 2)
    assert ev.batch("remote_tasks:identity", [[text]])["results"] == [text]  # under the limit: fine
    with proxy(uri, small_cluster.settings.hmac_bytes) as p:
        with pytest.raises(Pyro4.errors.CommunicationError):  # the worker hangs up on 1 MB
            p.batch("remote_tasks:identity", [["x" * 1_000_000]])
    assert_serves(ev, pid)


def test_a_reply_over_the_limit_is_not_sent_and_the_worker_survives(
        small_cluster: LocalCluster, small: tuple[str, Any]) -> None:
    uri, ev = small
    pid = ev.info()["pid"]
    with proxy(uri, small_cluster.settings.hmac_bytes) as p:
        with pytest.raises(Pyro4.errors.CommunicationError):
            p.batch("operator:mul", [["x", 4 * SMALL_LIMIT]])
    assert_serves(ev, pid)


@pytest.mark.parametrize("announced", [SMALL_LIMIT + 1, 2**31 - 1])
def test_a_header_announcing_too_much_is_cut_off_before_reading(
        small_cluster: LocalCluster, small: tuple[str, Any], announced: int) -> None:
    uri, ev = small
    pid = ev.info()["pid"]
    object_id = Pyro4.URI(uri).object
    key = small_cluster.settings.hmac_bytes
    for signed_in in (False, True):
        conn = raw_pyro.connect(uri)
        try:
            if signed_in:
                assert raw_pyro.handshake(conn, object_id, key)[0].type == Pyro4.message.MSG_CONNECTOK
            msg_type = Pyro4.message.MSG_INVOKE if signed_in else Pyro4.message.MSG_CONNECT
            conn.send(raw_pyro.header(msg_type, announced, seq=1))
            assert raw_pyro.closed_by_peer(conn)  # at once, without waiting for the announced bytes
        finally:
            conn.close()
    assert_serves(ev, pid)


@pytest.mark.parametrize("what", ["argument", "result"])
def test_a_pool_task_over_the_size_limit_fails_alone(small_cluster: LocalCluster, what: str) -> None:
    """The worker hangs up on such a call; the pool must not take that for a lost worker."""
    settings = Settings.from_env({}, **{**vars(small_cluster.settings), "worker_wait": 2.0,
                                        "discovery_interval": 0.2})
    with Pool(settings=settings) as pool:
        if what == "argument":
            future = pool.submit(remote_tasks.identity, "x" * 1_000_000)
        else:
            future = pool.submit(operator.mul, "x", 4 * SMALL_LIMIT)
        with pytest.raises(Pyro4.errors.MessageTooLargeError, match="PYRO_COMPUTE_MAX_MESSAGE_SIZE"):
            future.result(timeout=60)
        assert pool.submit("pi_hits", 1000, 1).result(timeout=60) == kernels.pi_hits(1000, 1)
        assert len(pool.workers) == 1


# -- TLS ---------------------------------------------------------------------------------------

def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


# The extensions nameserver/README.md tells users to give their certificates. Python 3.13 verifies
# with VERIFY_X509_STRICT, which refuses a CA without keyUsage and a leaf without an authority
# key identifier; OpenSSL 1.1 adds neither by itself.
CA_EXTENSIONS = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign",
                 "subjectKeyIdentifier=hash")
LEAF_EXTENSIONS = ("basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                   "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid,issuer")
NODE_EXTENSIONS = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
CLIENT_EXTENSIONS = "extendedKeyUsage=clientAuth\n"


def make_ca(d: Path, name: str) -> None:
    addext = [arg for ext in CA_EXTENSIONS for arg in ("-addext", ext)]
    openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", f"/CN=pyro-compute test {name}", *addext, "-keyout", f"{name}.key",
            "-out", f"{name}.crt")


def make_cert(d: Path, name: str, ca: str, extensions: str) -> None:
    openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (d / f"{name}.ext").write_text("".join(e + "\n" for e in LEAF_EXTENSIONS) + extensions)
    openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


SSL_CLIENT = r"""
import json, os, sys, time
import Pyro4, Pyro4.errors
from pyro_compute.wire import register_wire
register_wire()
target, name, patience, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
key = os.environ["TEST_CLIENT_KEY"].encode()
deadline = time.monotonic() + patience
try:
    if target.startswith("PYRO:"):
        uri = target
    else:
        host, port = target.rsplit(":", 1)
        while True:
            try:
                with Pyro4.locateNS(host, int(port), hmac_key=key) as ns:
                    uri = ns.lookup(name)
                break
            except Pyro4.errors.NamingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    with Pyro4.Proxy(uri) as p:
        p._pyroHmacKey = key
        p._pyroTimeout = timeout
        hits = p.pi_hits(1000, 1)
        out = {"uri": str(uri), "hits": hits, "pid": p.info()["pid"],
               "tls": p._pyroConnection.sock.version()}
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e),
           "communication": isinstance(e, Pyro4.errors.CommunicationError)}
print(json.dumps(out))
"""


class TlsCluster:
    """A name server (through nameserver/run-ns) and one worker, both with two-way TLS."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.key = "tls test secret"
        self.port = free_port()
        self.ns = f"{HOST}:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        make_ca(d, "ca")
        make_ca(d, "rogue-ca")
        make_cert(d, "node", "ca", NODE_EXTENSIONS)
        make_cert(d, "client", "ca", CLIENT_EXTENSIONS)
        make_cert(d, "rogue", "rogue-ca", CLIENT_EXTENSIONS)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def server_env(self) -> dict[str, str]:
        return {"PYRO_SSL": "1", "PYRO_SSL_SERVERCERT": self.path("node.crt"),
                "PYRO_SSL_SERVERKEY": self.path("node.key"), "PYRO_SSL_CACERTS": self.path("ca.crt"),
                "PYRO_SSL_REQUIRECLIENTCERT": "1", "PYRO_SSL_CLIENTCERT": self.path("node.crt"),
                "PYRO_SSL_CLIENTKEY": self.path("node.key"), "PYRO_COMPUTE_HMAC_KEY": self.key}

    def client_env(self, cert: str | None = "client", ssl: bool = True) -> dict[str, str]:
        env = {"TEST_CLIENT_KEY": self.key}
        if ssl:
            env.update(PYRO_SSL="1", PYRO_SSL_CACERTS=self.path("ca.crt"))
        if cert:
            env.update(PYRO_SSL_CLIENTCERT=self.path(f"{cert}.crt"), PYRO_SSL_CLIENTKEY=self.path(f"{cert}.key"))
        return env

    def spawn(self, label: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        scripts = sysconfig.get_path("scripts")
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        full = {**base, "PATH": os.pathsep.join([scripts, os.path.dirname(sys.executable),
                                                 base.get("PATH", "")]),
                "PYTHONPATH": PYTHONPATH, **env}
        with open(self.dir / f"{label}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=full)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.nameserver = self.spawn("nameserver", ["bash", str(REPO / "nameserver" / "run-ns"), self.ns],
                                     self.server_env())
        wait_until(lambda: "NS running" in self.log("nameserver") or self.nameserver.poll() is not None,
                   30, "the TLS name server to start")
        assert self.nameserver.poll() is None, self.log("nameserver")
        self.worker = self.spawn("worker", [sys.executable, "-m", "pyro_compute.worker", "--ns", self.ns,
                                            "--name", "tls", "--allow-module", "remote_tasks"],
                                 {**self.server_env(), "PYRO_COMPUTE_DISCOVERY_INTERVAL": "0.5"})

    def client(self, target: str, env: dict[str, str], patience: float = 0.0,
               timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Run SSL_CLIENT in a fresh process: Pyro4 reads PYRO_SSL* when it is imported.

        ``patience``: seconds to wait for the worker to register; ``timeout``: Pyro4 call timeout.
        """
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        out = subprocess.run([sys.executable, "-c", SSL_CLIENT, target, NAME_PREFIX + "tls", str(patience),
                              str(timeout)],
                             capture_output=True, text=True, timeout=120,
                             env={**base, "PYTHONPATH": PYTHONPATH, **env})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def log(self, label: str) -> str:
        path = self.dir / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        terminate(self.procs[1:], self.procs[:1])  # the worker first, so it can unregister


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsCluster]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    c = TlsCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.close()


def strict_handshake(d: Path, server: str, client: str | None) -> str:
    """A TLS handshake between two sockets verified as Python 3.13 does by default; its version."""
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.crt"))
    srv.load_cert_chain(str(d / f"{server}.crt"), str(d / f"{server}.key"))
    srv.verify_mode = ssl.CERT_REQUIRED
    cli = ssl.create_default_context(cafile=str(d / "ca.crt"))
    if client:
        cli.load_cert_chain(str(d / f"{client}.crt"), str(d / f"{client}.key"))
    for ctx in (srv, cli):  # 3.13's create_default_context sets these; older ones do not
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT | getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    with srv.wrap_socket(a, server_side=True, do_handshake_on_connect=False) as server_side, \
            cli.wrap_socket(b, server_hostname=HOST, do_handshake_on_connect=False) as client_side:
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _handshake_or_record(server_side, errors))
        t.start()
        try:
            client_side.do_handshake()
            client_side.sendall(b"x")
        finally:
            t.join(timeout=10)
        if errors:
            raise errors[0]
        return client_side.version() or ""


def _handshake_or_record(sock: ssl.SSLSocket, errors: list[BaseException]) -> None:
    try:
        sock.do_handshake()
        sock.recv(1)
    except (ssl.SSLError, OSError) as e:
        errors.append(e)


def test_the_documented_certificates_pass_python_3_13_strict_verification(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "node", "ca", NODE_EXTENSIONS)
    make_cert(tmp_path, "client", "ca", CLIENT_EXTENSIONS)
    assert strict_handshake(tmp_path, "node", "client").startswith("TLSv1.")
    # The certificates the README used to describe (no keyUsage on the CA) fail this check.
    openssl(tmp_path, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", "/CN=old ca", "-keyout", "ca.key", "-out", "ca.crt")
    (tmp_path / "node.ext").write_text(NODE_EXTENSIONS)
    openssl(tmp_path, "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "node.ext", "-out", "node.crt")
    with pytest.raises(ssl.SSLError, match="key usage|CERTIFICATE_VERIFY_FAILED"):
        strict_handshake(tmp_path, "node", None)


def test_the_readme_tls_steps_use_these_extensions() -> None:
    text = (REPO / "nameserver" / "README.md").read_text()
    for ext in CA_EXTENSIONS:
        assert f"-addext {ext}" in text, ext
    for ext in (*LEAF_EXTENSIONS, "subjectAltName=IP:", "extendedKeyUsage=serverAuth,clientAuth"):
        assert ext in text, ext


def test_two_way_tls_name_server_and_worker(tls: TlsCluster) -> None:
    good = tls.client(tls.ns, tls.client_env(), patience=60)
    assert "error" not in good, f"{good}\n{tls.log('nameserver')}\n{tls.log('worker')}"
    assert good["hits"] == kernels.pi_hits(1000, 1)
    assert good["tls"].startswith("TLSv1.")
    assert good["pid"] == tls.worker.pid
    assert Pyro4.URI(good["uri"]).host == HOST
    uri = good["uri"]

    # Refused: no TLS at all, TLS without a client certificate, a certificate from another CA.
    for label, env in [("plain", tls.client_env(ssl=False)), ("no cert", tls.client_env(cert=None)),
                       ("rogue cert", tls.client_env(cert="rogue"))]:
        out = tls.client(tls.ns, env)
        assert out.get("error") == "NamingError", (label, out)  # "Failed to locate the nameserver"
        out = tls.client(uri, env)
        assert out.get("communication") is True, (label, out)
    # The same from this (plain) test process.
    with pytest.raises(Pyro4.errors.NamingError):
        Pyro4.locateNS(HOST, tls.port, hmac_key=tls.key.encode())
    with proxy(uri, tls.key.encode()) as p:
        with pytest.raises(Pyro4.errors.CommunicationError):
            p.pi_hits(1000, 1)
    # TLS with the right certificate but the wrong secret is still refused by the secret.
    out = tls.client(uri, {**tls.client_env(), "TEST_CLIENT_KEY": "wrong"})
    assert out.get("communication") is True and "hmac" in out["message"], out
    # Nothing above hurt the worker or the name server.
    again = tls.client(tls.ns, tls.client_env())
    assert again == good
    assert tls.worker.poll() is None and tls.nameserver.poll() is None


# -- connections that never send a byte ----------------------------------------------------------
# No secret and no certificate is needed for any of these. The name server's share of these
# attacks, and the figures (memory held, time to serve), are in test_hardening.py.


def idle_connections(address: tuple[str, int], count: int) -> list[socket.socket]:
    return [socket.create_connection(address, timeout=10) for _ in range(count)]


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the other side closed ``sock`` (after whatever it sent last, e.g. a refusal)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def serves(uri: str, key: bytes | None, pid: int) -> bool:
    """True if the worker at ``uri`` answers within 3 s and is still process ``pid``."""
    try:
        with proxy(uri, key) as p:
            p._pyroTimeout = 3
            return p.info()["pid"] == pid  # type: ignore[no-any-return]
    except Pyro4.errors.CommunicationError:
        return False


def test_a_worker_drops_idle_strangers_and_serves_again_while_they_stay(
        small_cluster: LocalCluster, small: tuple[str, Any]) -> None:
    uri, ev = small
    key, pid = small_cluster.settings.hmac_bytes, ev.info()["pid"]
    idle = idle_connections(raw_pyro.address(uri), 70)
    try:
        assert serves(uri, key, pid), "the worker must serve at once beside 70 idle connections"
        # All of them go when the pre-authentication deadline passes.
        started = time.monotonic()
        wait_until(lambda: all(closed_by_peer(s) for s in idle), 60, "the worker to drop idle connections")
        assert time.monotonic() - started < PREAUTH_DEADLINE + 15
    finally:
        for s in idle:
            s.close()
    assert_serves(ev, pid)


def test_a_burst_of_idle_connections_does_not_lock_clients_out_of_a_worker(
        small_cluster: LocalCluster, small: tuple[str, Any]) -> None:
    uri, ev = small
    pid = ev.info()["pid"]
    idle = idle_connections(raw_pyro.address(uri), 70)
    try:
        assert serves(uri, small_cluster.settings.hmac_bytes, pid)
    finally:
        for s in idle:
            s.close()


def test_worker_and_name_server_recover_once_idle_connections_close(
        small_cluster: LocalCluster, small: tuple[str, Any]) -> None:
    uri, ev = small
    key, pid = small_cluster.settings.hmac_bytes, ev.info()["pid"]
    idle = idle_connections(raw_pyro.address(uri), 70) + idle_connections(small_cluster.settings.ns_address, 45)
    time.sleep(0.5)
    for s in idle:
        s.close()
    wait_until(lambda: serves(uri, key, pid) and small_cluster.registered(), 30,
               "the worker and the name server to serve again")
    assert_serves(ev, pid)


def test_an_idle_connection_does_not_block_a_tls_worker(tls: TlsCluster) -> None:
    good = tls.client(tls.ns, tls.client_env(), patience=60)
    assert "error" not in good, good
    # One connection that never sends a ClientHello, then 50 more on the worker and the name server.
    idle = idle_connections(raw_pyro.address(good["uri"]), 1)
    try:
        out = tls.client(good["uri"], tls.client_env(), timeout=3)
        assert "error" not in out, out
        idle += idle_connections(raw_pyro.address(good["uri"]), 50) + idle_connections((HOST, tls.port), 50)
        out = tls.client(tls.ns, tls.client_env(), timeout=3)  # through the name server, to the worker
        assert out == good, out
    finally:
        for s in idle:
            s.close()
