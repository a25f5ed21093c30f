"""compute-worker against real processes: the name server run-ns runs (pyro_compute.naming) and real workers on 127.0.0.1, no mocks.

Plain calls use the session ``cluster``; tests that kill or restart processes start their own.
"""
from __future__ import annotations

import concurrent.futures
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import Pyro4
import Pyro4.errors
import pytest

from polling import wait_until
from pyro_compute import __version__, kernels
from pyro_compute.cluster import LocalCluster, free_port, terminate
from pyro_compute.config import NAME_PREFIX
from pyro_compute.errors import KernelError
from pyro_compute.wire import register_wire

TESTS = Path(__file__).parent
HOST = "127.0.0.1"
CALL_TIMEOUT = 20.0  # seconds any single remote call may take in these tests


@pytest.fixture(autouse=True, scope="module")
def wire() -> None:
    register_wire()


def script(name: str) -> str:
    """The path of a console script installed next to this Python."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} is not installed; run pip install -e ."
    return str(path)


def proxy(uri: str, key: bytes | None) -> Any:
    p = Pyro4.Proxy(uri)
    p._pyroHmacKey = key
    p._pyroTimeout = CALL_TIMEOUT
    return p


class Processes:
    """A name server and workers this test owns, on a port of its own; ``close()`` stops them all."""

    def __init__(self, logs: Path) -> None:
        self.key = secrets.token_hex(16)
        self.port = free_port()
        self.ns = f"{HOST}:{self.port}"
        self.logs = logs
        self.nameserver: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()

    def _spawn(self, label: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **env}
        with open(self.logs / f"{label}.log", "ab") as log:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env)

    def start_nameserver(self) -> None:
        """Run the name server that nameserver/run-ns runs on this port with the key; wait until it answers."""
        env = {"PYRO_HMAC_KEY": self.key, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.nameserver = self._spawn("nameserver", [sys.executable, "-m", "pyro_compute.naming", "-n", HOST,
                                                     "-p", str(self.port)], env)

        def answers() -> bool:
            assert self.nameserver is not None and self.nameserver.poll() is None, self.log_tail()
            try:
                with Pyro4.locateNS(HOST, self.port, hmac_key=self.key_bytes) as ns:
                    ns.ping()
                return True
            except Pyro4.errors.PyroError:
                return False

        wait_until(answers, 20, f"the name server on {self.ns}")

    def stop_nameserver(self) -> None:
        assert self.nameserver is not None
        self.nameserver.terminate()
        self.nameserver.wait(timeout=10)

    def start_worker(self, name: str, *args: str, env: dict[str, str] | None = None,
                     key_in_env: bool = True) -> subprocess.Popen[bytes]:
        """Run ``python -m pyro_compute.worker`` registering as ``NAME_PREFIX + name``."""
        cmd = [sys.executable, "-m", "pyro_compute.worker", "--ns", self.ns, "--name", name,
               "--allow-module", "remote_tasks", *args]
        full_env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **(env or {})}
        if key_in_env:
            full_env["PYRO_COMPUTE_HMAC_KEY"] = self.key
        proc = self._spawn(name, cmd, full_env)
        self.workers.append(proc)
        return proc

    def registered(self) -> dict[str, tuple[str, set[str]]]:
        """``{name: (uri, metadata)}`` of the workers in the name server; empty if it is down."""
        try:
            with Pyro4.locateNS(HOST, self.port, hmac_key=self.key_bytes) as ns:
                listing = ns.list(prefix=NAME_PREFIX, return_metadata=True)
        except Pyro4.errors.PyroError:
            return {}
        return {name: (uri, set(meta)) for name, (uri, meta) in listing.items()}

    def wait_registered(self, name: str, timeout: float = 30) -> tuple[str, set[str]]:
        full = NAME_PREFIX + name

        def check() -> tuple[str, set[str]] | None:
            for proc in self.workers:
                assert proc.poll() is None, f"a worker exited with {proc.returncode}:\n{self.log_tail()}"
            return self.registered().get(full)

        return wait_until(check, timeout, f"{full} to register")  # type: ignore[no-any-return]

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        terminate(self.workers, [self.nameserver] if self.nameserver else [])


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.close()


# -- the command line ------------------------------------------------------------------------------

def test_compute_worker_help_exits_0() -> None:
    out = subprocess.run([script("compute-worker"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "compute-worker" in out.stdout and "--ns" in out.stdout and "PYRO_COMPUTE_HMAC_KEY" in out.stdout


def test_worker_with_an_unknown_setting_exits_with_an_error() -> None:
    env = {**os.environ, "PYRO_COMPUTE_NOT_A_SETTING": "1"}
    out = subprocess.run([sys.executable, "-m", "pyro_compute.worker", "--ns", f"{HOST}:{free_port()}"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "PYRO_COMPUTE_NOT_A_SETTING" in out.stderr


# -- calls through the name server (session cluster) ---------------------------------------------

@pytest.fixture
def worker_names(cluster: LocalCluster) -> list[str]:
    """The names of the workers registered now (other test modules may add some to the cluster)."""
    names = sorted(cluster.registered())
    assert names, "the session cluster has no registered worker"
    return names


@pytest.fixture
def evaluator(cluster: LocalCluster, worker_names: list[str]) -> Iterator[Any]:
    """A proxy to the first cluster worker, found by name through the name server."""
    host, port = cluster.settings.ns_address
    with proxy(f"PYRONAME:{worker_names[0]}@{host}:{port}", cluster.settings.hmac_bytes) as p:
        yield p


@pytest.mark.parametrize("samples, seed", [(0, 1), (1, 2), (kernels.LANES + 1, 3), (10**6, 7),
                                           (12_345, 2**63), (1000, 2**64 - 1)])
def test_pi_hits_over_the_wire_equals_the_kernel(evaluator: Any, samples: int, seed: int) -> None:
    assert evaluator.pi_hits(samples, seed) == kernels.pi_hits(samples, np.uint64(seed))


def test_every_worker_gives_the_same_answer(cluster: LocalCluster, worker_names: list[str]) -> None:
    answers = []
    for name in worker_names:
        with proxy(cluster.registered()[name], cluster.settings.hmac_bytes) as p:
            answers.append((p.pi_hits(100_000, 5), p.integrate("ball", 10_000, 5, -1, 1, 3)))
    assert len(answers) >= 2 and all(a == answers[0] for a in answers)
    lower, upper = np.full(3, -1.0), np.full(3, 1.0)
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index("ball"), 10_000, np.uint64(5), lower, upper)
    assert answers[0][1] == {"n": n, "sum": total, "sumsq": total_sq}


def test_batch_over_the_wire(evaluator: Any) -> None:
    out = evaluator.batch("pi_hits", [[1000], [2000]], None, [11, 12])
    assert out["results"] == [kernels.pi_hits(1000, 11), kernels.pi_hits(2000, 12)]
    out = evaluator.batch("pyro_compute.tasks:increment", [[1], ["x"]])
    assert out["results"] == [2, None]
    assert [e[:3] for e in out["errors"]] == [[1, "builtins", "TypeError"]]


def test_remote_failure_carries_the_marked_line(evaluator: Any) -> None:
    out = evaluator.batch("remote_tasks:fail", [["boom"]])
    (index, module, qualname, args, tb), = out["errors"]
    assert (index, module, qualname, args) == (0, "builtins", "ValueError", ["boom"])
    assert "# REMOTE-MARKER" in tb and "remote_tasks.py" in tb


def test_registration_metadata(cluster: LocalCluster, worker_names: list[str]) -> None:
    host, port = cluster.settings.ns_address
    with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
        listing = ns.list(prefix=NAME_PREFIX, return_metadata=True)
    assert sorted(listing) == worker_names
    for name, (uri, metadata) in listing.items():
        assert uri.startswith(f"PYRO:{name}@{HOST}:")
        assert set(metadata) == {"pyro_compute.evaluator", "kernels:pi_hits,integrate",
                                 f"cores:{os.cpu_count()}", f"host:{socket.gethostname()}",
                                 f"version:{__version__}"}
    with Pyro4.locateNS(host, port, hmac_key=cluster.settings.hmac_bytes) as ns:
        found = ns.list(metadata_all={"pyro_compute.evaluator", "kernels:pi_hits,integrate"})
    assert sorted(found) == worker_names


def test_info_and_stats_over_the_wire(evaluator: Any, worker_names: list[str]) -> None:
    info = evaluator.info()
    assert info["name"] == worker_names[0]
    assert info["pid"] in {p.pid for p in psutil.Process().children(recursive=True)}
    assert "remote_tasks" in info["modules"] and info["kernels"] == ["pi_hits", "integrate"]
    before = evaluator.stats()
    evaluator.pi_hits(12_345, 1)
    after = evaluator.stats()
    assert after["tasks"] == before["tasks"] + 1
    assert after["samples"] == before["samples"] + 12_345
    assert after["uptime"] > before["uptime"] > 0


NUMPY_VALUES = [
    np.float64(1.5), np.float32(-2.25), np.int32(-7), np.int64(2**62), np.uint64(2**64 - 1), np.int8(-128),
    np.bool_(True), np.bool_(False), np.complex128(1 - 2j),
    np.arange(12.0).reshape(3, 4), np.arange(-6, 6, dtype=np.int32).reshape(4, 3),
    np.arange(24, dtype=np.uint16).reshape(2, 3, 4), np.array([[True, False]]), np.zeros((0, 3)),
    np.array(3.5), np.arange(10.0).reshape(2, 5)[:, ::2], np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.arange(4, dtype=">f8"), np.array([np.nan, np.inf, -0.0]), np.array([1 + 1j, 2 - 2j]),
]


@pytest.mark.parametrize("value", NUMPY_VALUES, ids=lambda v: f"{type(v).__name__}-{v.dtype.str}-{np.shape(v)}")
def test_numpy_values_round_trip(evaluator: Any, value: Any) -> None:
    out = evaluator.batch("remote_tasks:identity", [[value]])
    assert out["errors"] == []
    back = out["results"][0]
    assert type(back) is type(value)
    assert back.dtype == value.dtype and np.shape(back) == np.shape(value)
    np.testing.assert_array_equal(back, value)
    # The worker saw numpy too, not a list or a plain float.
    seen = evaluator.batch("remote_tasks:type_name", [[value]])["results"][0]
    assert seen == f"numpy.{type(value).__name__}"


def test_numpy_arithmetic_on_the_worker(evaluator: Any) -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    out = evaluator.batch("remote_tasks:add", [[a, a], [np.float32(1.5), np.float32(2)]])
    np.testing.assert_array_equal(out["results"][0], 2 * a)
    assert out["results"][1] == np.float32(3.5) and type(out["results"][1]) is np.float32


def test_object_arrays_are_refused_both_ways(evaluator: Any) -> None:
    with pytest.raises(TypeError, match="numpy dtype object cannot cross the wire"):
        evaluator.batch("remote_tasks:identity", [[np.array([None, 1], dtype=object)]])
    # A result that cannot cross fails its own task only (issue 9 item 13), not the whole call.
    reply = evaluator.batch("remote_tasks:object_array", [[3]])
    assert reply["errors"][0][:3] == [0, "builtins", "TypeError"]
    assert "cannot be sent back: numpy dtype object" in reply["errors"][0][3][0]
    assert evaluator.pi_hits(1000, 1) == kernels.pi_hits(1000, 1)


@pytest.mark.parametrize("call, error, match", [
    (lambda e: e.pi_hits(-1), KernelError, "samples must be between"),
    (lambda e: e.pi_hits(10, -5), KernelError, "seed must be between"),
    (lambda e: e.pi_hits(2**41), KernelError, "samples must be between"),
    (lambda e: e.pi_hits(1.5), TypeError, "samples must be an integer"),
    (lambda e: e.pi_hits(None), TypeError, "samples must be an integer"),
    (lambda e: e.integrate("cube", 10), KernelError, "unknown integrand"),
    (lambda e: e.integrate("ball", 10, 0, float("nan")), KernelError, "lower must be finite"),
    (lambda e: e.integrate("ball", 10, 0, [[0.0]], 1.0), TypeError, "lower must be"),
    (lambda e: e.integrate("ball", 10, 0, 0.0, 1.0, 0), KernelError, "dims must be between"),
    (lambda e: e.batch("os:system", [["true"]]), KernelError, "not allowed"),
    (lambda e: e.batch("builtins:eval", [["1"]]), KernelError, "not among"),
    (lambda e: e.batch("nope", [[1]]), KernelError, "unknown kernel"),
    (lambda e: e.batch("pi_hits", 5), TypeError, "args must be a list"),
    (lambda e: e.pi_hits(), TypeError, "samples"),
    (lambda e: e.no_such_method(), AttributeError, "no_such_method"),
])
def test_bad_arguments_raise_clear_errors_and_the_worker_survives(
        evaluator: Any, call: Callable[[Any], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        call(evaluator)
    assert type(info.value) is error  # the exact type survives the wire
    assert evaluator.pi_hits(1000, 2) == kernels.pi_hits(1000, 2)


def test_remote_errors_carry_the_worker_traceback(evaluator: Any) -> None:
    with pytest.raises(KernelError) as info:
        evaluator.pi_hits(-1)
    remote = "".join(info.value._pyroTraceback)  # type: ignore[attr-defined]
    assert "evaluator.py" in remote and "check_count" in remote


def test_concurrent_callers_get_their_own_answers(cluster: LocalCluster, worker_names: list[str]) -> None:
    host, port = cluster.settings.ns_address
    uri = f"PYRONAME:{worker_names[0]}@{host}:{port}"

    def call(seed: int) -> int:
        with proxy(uri, cluster.settings.hmac_bytes) as p:  # one proxy per thread
            return p.pi_hits(200_000, seed)  # type: ignore[no-any-return]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {seed: pool.submit(call, seed) for seed in range(100, 112)}
        results = {seed: f.result(timeout=60) for seed, f in futures.items()}
    assert results == {seed: kernels.pi_hits(200_000, seed) for seed in futures}


# -- authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, b"", b"wrong key"])
def test_worker_refuses_clients_without_the_key(cluster: LocalCluster, worker_names: list[str],
                                                key: bytes | None) -> None:
    uri = cluster.registered()[worker_names[0]]
    with proxy(uri, key) as p:
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            p.pi_hits(10, 1)
    with proxy(uri, cluster.settings.hmac_bytes) as p:
        assert p.pi_hits(10, 1) == kernels.pi_hits(10, 1)


@pytest.mark.parametrize("key", [None, b"wrong key"])
def test_name_server_refuses_clients_without_the_key(cluster: LocalCluster, key: bytes | None) -> None:
    host, port = cluster.settings.ns_address
    with proxy(f"PYRO:Pyro.NameServer@{host}:{port}", key) as ns:
        with pytest.raises(Pyro4.errors.CommunicationError, match="hmac"):
            ns.list()
    with pytest.raises(Pyro4.errors.NamingError):
        Pyro4.locateNS(host, port, hmac_key=key)
    with pytest.raises(Pyro4.errors.NamingError):
        with proxy(f"PYRONAME:{NAME_PREFIX}anything@{host}:{port}", key) as p:
            p.pi_hits(10, 1)


# -- lifecycle (processes of our own) ------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unregisters_and_exits_0(procs: Processes, sig: signal.Signals) -> None:
    procs.start_nameserver()
    worker = procs.start_worker("sig")
    uri, _ = procs.wait_registered("sig")
    with proxy(uri, procs.key_bytes) as p:
        assert p.pi_hits(1000, 3) == kernels.pi_hits(1000, 3)
    started = time.monotonic()
    worker.send_signal(sig)
    assert worker.wait(timeout=10) == 0, procs.log_tail()
    assert time.monotonic() - started < 5, "the worker took too long to stop"
    assert NAME_PREFIX + "sig" not in procs.registered()
    assert procs.nameserver is not None and procs.nameserver.poll() is None


def test_worker_reads_the_key_from_a_file(procs: Processes, tmp_path: Path) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text(procs.key + "\n")
    procs.start_nameserver()
    procs.start_worker("keyfile", "--hmac-key-file", str(key_file), key_in_env=False)
    uri, _ = procs.wait_registered("keyfile")
    with proxy(uri, procs.key_bytes) as p:
        assert p.pi_hits(1000, 4) == kernels.pi_hits(1000, 4)


def test_worker_registers_again_after_a_name_server_restart(procs: Processes) -> None:
    procs.start_nameserver()
    worker = procs.start_worker("phoenix")  # default discovery_interval: 2 s
    uri, metadata = procs.wait_registered("phoenix")
    procs.stop_nameserver()
    assert procs.registered() == {}
    # The worker keeps serving direct calls while the name server is away.
    with proxy(uri, procs.key_bytes) as p:
        assert p.pi_hits(1000, 5) == kernels.pi_hits(1000, 5)
    procs.start_nameserver()
    assert procs.registered() == {}  # a fresh name server knows nobody
    assert procs.wait_registered("phoenix", timeout=15) == (uri, metadata)
    with proxy(f"PYRONAME:{NAME_PREFIX}phoenix@{procs.ns}", procs.key_bytes) as p:
        assert p.pi_hits(1000, 6) == kernels.pi_hits(1000, 6)
    assert worker.poll() is None


def test_worker_started_before_the_name_server_registers_when_it_appears(procs: Processes) -> None:
    worker = procs.start_worker("early", env={"PYRO_COMPUTE_DISCOVERY_INTERVAL": "0.5"})
    wait_until(lambda: "ready" in (procs.logs / "early.log").read_text(errors="replace")
               or worker.poll() is not None, 30, "the worker to start")
    assert worker.poll() is None, procs.log_tail()
    procs.start_nameserver()
    procs.wait_registered("early", timeout=10)


# -- when Numba loads (issue 12 item 5) ------------------------------------------------------------

def _maps_numba(pid: int) -> bool:
    return any("llvmlite" in m.path for m in psutil.Process(pid).memory_maps(grouped=True))


def test_a_worker_warms_its_kernels_before_serving_unless_told_to_load_them_lazily(procs: Processes) -> None:
    procs.start_nameserver()
    warm = procs.start_worker("warm")
    lazy = procs.start_worker("lazy", "--lazy-kernels")
    uri_warm, _ = procs.wait_registered("warm")
    uri_lazy, meta_lazy = procs.wait_registered("lazy")
    assert "kernels:pi_hits,integrate" in meta_lazy, "a lazy worker still offers every kernel"
    assert _maps_numba(warm.pid) and not _maps_numba(lazy.pid)
    expected = kernels.pi_hits(20_001, np.uint64(5))
    with proxy(uri_lazy, procs.key_bytes) as p:
        assert p.info()["kernels"] == ["pi_hits", "integrate"]
        assert not _maps_numba(lazy.pid), "info() does not load Numba"
        assert p.pi_hits(20_001, 5) == expected
        assert p.integrate("ball", 1000, 5)["n"] == 1000
    with proxy(uri_warm, procs.key_bytes) as p:
        assert p.pi_hits(20_001, 5) == expected
    assert _maps_numba(lazy.pid), "the first kernel call loaded Numba"


def test_supervised_workers_share_the_warm_kernels_by_default(procs: Processes) -> None:
    procs.start_nameserver()
    supervisor = procs.start_worker("many", "-n", "2")
    for i in range(2):
        procs.wait_registered(f"many.{i}")
    assert _maps_numba(supervisor.pid), "compute-worker -n N warms before forking"
