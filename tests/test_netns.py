"""Two worker "hosts" in Linux network namespaces; one loses its link mid-run and nothing is lost.

Layout (root namespace = the client and the name server)::

    root ns: pool, name server on 10.77.1.1
      ├── veth 10.77.1.1/24 ── 10.77.1.2  namespace 1: compute-worker host1
      └── veth 10.77.2.1/24 ── 10.77.2.2  namespace 2: compute-worker host2 (route to 10.77.1.0/24 via 10.77.2.1)

Needs root and iproute2 (CI has both); skipped otherwise. Everything it creates is removed in
``finally``, and leftovers of an earlier run that was killed are removed first.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import Pyro4
import Pyro4.constants
import Pyro4.errors
import pytest

import remote_tasks
from pyro_compute import Pool
from pyro_compute.config import NAME_PREFIX, Settings

TESTS = Path(__file__).parent
PREFIX = "pcw"              # namespaces pcwN_TAG, root-side veths pcrN_TAG, inner veths pcnN_TAG
LOCK = Path("/tmp/pyro_compute_netns.lock")  # the subnets are fixed: one run at a time per machine
TASKS = 200


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def remove_leftovers() -> None:
    """Delete what an earlier, killed run left behind; call with LOCK held.

    Every run holds LOCK while its namespaces exist, so under the lock any name of ours is a leftover.
    """
    names = ip("netns", "list", check=False).stdout.split()
    links = re.findall(r"^\d+: ([^:@]+)", ip("-o", "link", "show", check=False).stdout, re.M)
    for name in names:
        if re.fullmatch(r"pcw\d_\d+", name):
            ip("netns", "del", name, check=False)
    for name in links:
        if re.fullmatch(r"pc[rn]\d_\d+", name):
            ip("link", "del", name, check=False)
    taken = ip("-o", "addr", "show", "to", "10.77.0.0/16", check=False).stdout.strip()
    if taken:
        pytest.fail(f"10.77.0.0/16 is already in use in the root namespace; remove it first:\n{taken}")


class Net:
    """Two namespaces, each joined to the root namespace by a veth pair."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.hosts = (1, 2)
        self.ns = {n: f"{PREFIX}{n}_{tag}" for n in self.hosts}
        self.outer = {n: f"pcr{n}_{tag}" for n in self.hosts}
        self.inner = {n: f"pcn{n}_{tag}" for n in self.hosts}
        self.created: list[int] = []

    def addr(self, n: int, side: int) -> str:
        return f"10.77.{n}.{side}"

    def build(self) -> None:
        for n in self.hosts:
            ns, outer, inner = self.ns[n], self.outer[n], self.inner[n]
            ip("netns", "add", ns)
            self.created.append(n)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("addr", "add", f"{self.addr(n, 1)}/24", "dev", outer)
            ip("link", "set", outer, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(n, 2)}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            # The name server listens on 10.77.1.1, a root address; the root namespace takes
            # packets for its own addresses on any interface, so no forwarding is needed.
            ip("-n", ns, "route", "add", "default", "via", self.addr(n, 1))

    def cut(self, n: int) -> None:
        ip("link", "set", self.outer[n], "down")

    def destroy(self) -> None:
        for n in self.created:
            ip("netns", "del", self.ns[n], check=False)
            ip("link", "del", self.outer[n], check=False)  # normally gone with its peer


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (the ip command) is not installed")
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run held {LOCK} for 120 s")
                time.sleep(0.2)
        remove_leftovers()
        probe = f"{PREFIX}0_{os.getpid()}"
        added = ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            pytest.skip(f"'ip netns add' failed: {added.stderr.strip()}")
        ip("netns", "del", probe, check=False)
        n = Net()
        try:
            n.build()
            yield n
        finally:
            n.destroy()


class Processes:
    """Children of this test: name server and workers; ``close()`` stops them all."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, label: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
        with open(self.logs / f"{label}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**base, **env})
        self.procs[label] = proc
        return proc

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        # A worker whose link is down cannot unregister and would wait for its name server:
        # give each a short grace period, then kill it.
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def registered(ns_host: str, port: int, key: bytes) -> dict[str, str]:
    """Workers in the name server; empty while it does not answer (within 5 s)."""
    try:
        with Pyro4.Proxy(f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{ns_host}:{port}") as ns:
            ns._pyroHmacKey = key
            ns._pyroTimeout = 5
            return dict(ns.list(prefix=NAME_PREFIX))
    except Pyro4.errors.PyroError:
        return {}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_pool_survives_a_host_losing_its_link_mid_map(net: Net, tmp_path: Path) -> None:
    started = time.monotonic()
    key = secrets.token_hex(16)
    ns_host = net.addr(1, 1)
    port = free_port(ns_host)
    procs = Processes(tmp_path)
    try:
        procs.spawn("nameserver", [sys.executable, "-m", "pyro_compute.naming", "-n", ns_host, "-p", str(port), "-x"],
                    {"PYRO_HMAC_KEY": key, "PYRO_SERIALIZERS_ACCEPTED": "serpent"})
        worker_env = {"PYRO_COMPUTE_HMAC_KEY": key, "PYRO_COMPUTE_DISCOVERY_INTERVAL": "0.5",
                      "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
        for n in net.hosts:
            procs.spawn(f"host{n}", ["ip", "netns", "exec", net.ns[n], sys.executable, "-m", "pyro_compute.worker",
                                     "--host", net.addr(n, 2), "--ns", f"{ns_host}:{port}", "--name", f"host{n}",
                                     "--allow-module", "remote_tasks"], worker_env)
        deadline = time.monotonic() + 60
        while len(names := registered(ns_host, port, key.encode())) < 2:
            for label, proc in procs.procs.items():
                assert proc.poll() is None, f"{label} exited with {proc.returncode}\n{procs.log_tail()}"
            assert time.monotonic() < deadline, f"workers did not register in 60 s\n{procs.log_tail()}"
            time.sleep(0.2)
        assert {Pyro4.URI(u).host for u in names.values()} == {net.addr(1, 2), net.addr(2, 2)}

        settings = Settings(ns=f"{ns_host}:{port}", hmac_key=key, call_timeout=3, discovery_interval=0.5)
        with Pool(settings=settings) as pool:
            results = []
            mapped = pool.map(remote_tasks.sleep_then, [0.05] * TASKS, range(TASKS), timeout=60)
            try:
                for i, value in enumerate(mapped):
                    results.append(value)
                    if i == 40:
                        assert host_did_work(names[NAME_PREFIX + "host2"], key), "host2 got no work before the cut"
                        net.cut(2)
            finally:
                mapped.close()  # on failure, cancel what no worker has started
            assert results == list(range(TASKS))
            assert pool.workers == [NAME_PREFIX + "host1"]
        assert procs.procs["host1"].poll() is None
    finally:
        procs.close()
    assert time.monotonic() - started < 60, "the test took too long"


def host_did_work(uri: str, key: str) -> bool:
    with Pyro4.Proxy(uri) as p:
        p._pyroHmacKey = key.encode()
        p._pyroTimeout = 5
        stats: dict[str, Any] = p.stats()
    return stats["tasks"] > 0
