"""Issue 11 item 4: every misconfiguration says what is wrong and what to do, within seconds.

Real processes only: pyro_compute.naming name servers and compute-worker processes on 127.0.0.1
(and one network namespace for the loopback-worker case).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import Pyro4
import pytest

from pyro_compute.cluster import LocalCluster, free_port
from pyro_compute.config import NAME_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SECRET = "the-right-secret"
SOON = 20.0  # seconds: "within seconds" on a 2-core machine shared with other test runs


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYRO")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    return {**base, **extra}


def wait_for(check: Callable[[], object], timeout: float = SOON, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.1)


class Proc:
    """A child process whose stdout and stderr go to a file we can read while it runs."""

    def __init__(self, cmd: list[str], log: Path, **extra: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      env=env(**extra))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(label: str, *cmd: str, **extra: str) -> Proc:
        proc = Proc([sys.executable, "-m", *cmd], tmp_path / f"{label}.log", **extra)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):  # workers first, so they can unregister
        proc.stop()


def nameserver(procs: Callable[..., Proc], port: int, secret: str = SECRET, host: str = "127.0.0.1") -> Proc:
    ns = procs(f"ns{port}", "pyro_compute.naming", "-n", host, "-p", str(port), PYRO_HMAC_KEY=secret)
    wait_for(lambda: "NS running" in ns.text(), what="the name server starts")
    return ns


def worker(procs: Callable[..., Proc], label: str, ns: str, secret: str = SECRET, *args: str) -> Proc:
    return procs(label, "pyro_compute.worker", "--ns", ns, *args, PYRO_COMPUTE_HMAC_KEY=secret)


def names(ns: str, secret: str = SECRET) -> dict[str, str]:
    host, port = ns.rsplit(":", 1)
    with Pyro4.locateNS(host, int(port), hmac_key=secret.encode()) as proxy:
        return dict(proxy.list(prefix=NAME_PREFIX))


def test_worker_with_the_wrong_secret_says_so_once_and_keeps_trying(procs: Callable[..., Proc]) -> None:
    port = free_port()
    nameserver(procs, port)
    w = worker(procs, "w", f"127.0.0.1:{port}", "a-wrong-secret", "--name", "wrong")
    wait_for(lambda: "uses a different secret" in w.text(), what="the worker names the secret mismatch")
    time.sleep(3)  # several retries later
    text = w.text()
    assert "message hmac mismatch" in text  # Pyro4's own reason
    assert "PYRO_COMPUTE_HMAC_KEY" in text  # and what to do
    assert text.count("uses a different secret") == 1, text
    assert w.p.poll() is None, "the worker must keep retrying, not exit"
    assert names(f"127.0.0.1:{port}") == {}


def test_worker_started_before_its_name_server_says_why_then_once_that_it_registered(
        procs: Callable[..., Proc]) -> None:
    port = free_port()
    ns = f"127.0.0.1:{port}"
    w = worker(procs, "w", ns, SECRET, "--name", "early")
    wait_for(lambda: "nothing is listening at " + ns in w.text(), what="the worker says nothing listens")
    assert "Connection refused" in w.text()
    time.sleep(2)
    assert w.text().count("nothing is listening") == 1
    nameserver(procs, port)
    wait_for(lambda: NAME_PREFIX + "early" in names(ns), what="the worker registers once the name server is up")
    wait_for(lambda: "registered " + NAME_PREFIX + "early in the name server" in w.text(), what="it logs that")
    time.sleep(2.5)  # a few check rounds later: still one line
    assert w.text().count("registered " + NAME_PREFIX + "early") == 1, w.text()


def test_client_tells_secret_mismatch_from_nothing_listening_from_no_answer(procs: Callable[..., Proc]) -> None:
    port = free_port()
    ns = nameserver(procs, port)

    def status(address: str, secret: str, command: tuple[str, ...] = ("status",)) -> tuple[str, float]:
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pyro_compute", *command, "--ns", address],
                           env=env(PYRO_COMPUTE_HMAC_KEY=secret), capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr, time.monotonic() - started

    wrong, _ = status(f"127.0.0.1:{port}", "a-wrong-secret")
    assert "uses a different secret (message hmac mismatch)" in wrong
    wrong, _ = status(f"127.0.0.1:{port}", "a-wrong-secret", ("pi", "--samples", "1e6"))
    assert "uses a different secret (message hmac mismatch)" in wrong
    nobody, _ = status(f"127.0.0.1:{free_port()}", SECRET)
    assert "nothing is listening at" in nobody and "Connection refused" in nobody
    os.kill(ns.p.pid, signal.SIGSTOP)
    try:
        silent, seconds = status(f"127.0.0.1:{port}", SECRET)
    finally:
        os.kill(ns.p.pid, signal.SIGCONT)
    assert "did not answer" in silent and "stopped" in silent
    assert seconds < SOON


def test_two_workers_with_one_name_never_both_hold_it(procs: Callable[..., Proc]) -> None:
    port = free_port()
    ns = f"127.0.0.1:{port}"
    nameserver(procs, port)
    first = worker(procs, "first", ns, SECRET, "--name", "dup")
    wait_for(lambda: NAME_PREFIX + "dup" in names(ns), what="the first worker registers")
    held_by_first = names(ns)[NAME_PREFIX + "dup"]
    second = worker(procs, "second", ns, SECRET, "--name", "dup")
    wait_for(lambda: "is held by another live worker" in second.text(), what="the second one says so")
    assert "--name" in second.text()
    time.sleep(3)
    assert names(ns)[NAME_PREFIX + "dup"] == held_by_first, "the live holder must keep its name"
    first.p.kill()  # gone without unregistering: the second takes over, loudly
    first.p.wait(timeout=10)
    wait_for(lambda: names(ns).get(NAME_PREFIX + "dup") not in (None, held_by_first),
             what="the second worker takes the name of the dead one")
    assert "does not answer; this worker" in second.text()


def test_dead_workers_are_pruned_and_a_stopped_one_is_kept() -> None:
    with LocalCluster(4, startup_timeout=120) as c:
        before = c.registered()
        assert len(before) == 4
        stopped = c.workers[3]
        for proc in c.workers[:3]:
            proc.kill()
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            wait_for(lambda: len(c.registered()) == 1, timeout=30, what="three stale names pruned")
            pruned_after = time.monotonic() - started
            time.sleep(8)  # more prune rounds: the stopped worker still accepts connections
            assert list(c.registered()) == [f"{NAME_PREFIX}local.{os.getpid()}.3"]
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        assert pruned_after < 30


def one_line_error(cmd: list[str], **extra: str) -> str:
    """The error line of a command that must fail with status 2 and no traceback.

    With ``-n`` the sibling workers that did start log their own start and stop first.
    """
    r = subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "-n" in cmd or len(lines) == 1, r.stderr
    assert "error:" in lines[-1], r.stderr
    return lines[-1]


def test_ports_in_use_and_foreign_hosts_get_one_line_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ns = one_line_error([str(ROOT / "nameserver" / "run-ns"), "--insecure", f"127.0.0.1:{port}"])
        assert f"127.0.0.1:{port}" in ns and "in use" in ns
        w = one_line_error([sys.executable, "-m", "pyro_compute.worker", "--port", str(port)],
                           PYRO_COMPUTE_HMAC_KEY=SECRET)
        assert f"127.0.0.1:{port}" in w and "in use" in w
        many = one_line_error([sys.executable, "-m", "pyro_compute.worker", "-n", "2", "--port", str(port)],
                              PYRO_COMPUTE_HMAC_KEY=SECRET)
        assert f"127.0.0.1:{port}" in many and "in use" in many
    foreign = one_line_error([sys.executable, "-m", "pyro_compute.worker", "--host", "192.0.2.7",
                              "--ns", "192.0.2.1:9090"], PYRO_COMPUTE_HMAC_KEY=SECRET)
    assert "192.0.2.7" in foreign and "not an address of this machine" in foreign and "--host" in foreign


def test_command_line_manners(cluster: LocalCluster) -> None:
    def cli(*argv: str, code: int) -> str:
        r = subprocess.run([sys.executable, "-m", "pyro_compute", *argv], capture_output=True, text=True,
                           timeout=60, env=env(PYRO_COMPUTE_HMAC_KEY=cluster.settings.hmac_key))
        assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
        return r.stdout + r.stderr

    assert cli("--version", code=0).strip().startswith("pyro-compute 0.")
    assert "did you mean 'status'?" in cli("stauts", code=2)
    assert "local." in cli("--verbose", "status", "--ns", cluster.ns, code=0)
    assert "at least 1" in cli("-n", "0", "script.py", code=2)
    r = subprocess.run([sys.executable, "-m", "pyro_compute.worker", "-n", "0"], capture_output=True,
                       text=True, timeout=60, env=env())
    assert r.returncode == 2 and "at least 1" in r.stderr


def test_ctrl_c_stops_without_a_traceback_or_leftovers(tmp_path: Path) -> None:
    p = Proc([sys.executable, "-m", "pyro_compute", "pi", "-n", "1", "--samples", "1e13"], tmp_path / "pi.log")
    try:
        wait_for(lambda: any("pyro_compute.worker" in " ".join(c.cmdline()) for c in _children(p.p.pid)),
                 what="the embedded cluster starts")
        time.sleep(3)
        p.p.send_signal(signal.SIGINT)
        assert p.p.wait(timeout=60) == 130
    finally:
        p.stop()
    assert "Traceback" not in p.text() and "interrupted" in p.text(), p.text()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def test_worker_survives_a_burst_of_signals(procs: Callable[..., Proc]) -> None:
    """Nested signal handlers only set a flag: a burst of SIGTERMs stops the worker cleanly."""
    port = free_port()
    ns = f"127.0.0.1:{port}"
    nameserver(procs, port)
    w = worker(procs, "w", ns, SECRET, "--name", "burst")
    wait_for(lambda: NAME_PREFIX + "burst" in names(ns), what="the worker registers")
    for _ in range(200):
        w.p.send_signal(signal.SIGTERM)
    assert w.p.wait(timeout=30) == 0
    assert "Traceback" not in w.text()
    assert names(ns) == {}, "it unregistered on the way out"


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, our address, its address)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag, k = os.getpid(), os.getpid() % 250 + 1
    name, outer, inner = f"pcm{tag}", f"pcmr{tag}", f"pcmn{tag}"
    ours, theirs = f"10.79.{k}.1", f"10.79.{k}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("netns", "add", name)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("addr", "add", f"{ours}/24", "dev", outer)
        ip("link", "set", outer, "up")
        ip("-n", name, "addr", "add", f"{theirs}/24", "dev", inner)
        ip("-n", name, "link", "set", inner, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield name, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_loopback_worker_is_refused_by_a_name_server_elsewhere(
        procs: Callable[..., Proc], netns: tuple[str, str, str], tmp_path: Path) -> None:
    name, ours, theirs = netns
    port = free_port()
    nameserver(procs, port, host=ours)
    ns = f"{ours}:{port}"
    inside = ["ip", "netns", "exec", name, sys.executable, "-m", "pyro_compute.worker", "--ns", ns]
    started = time.monotonic()
    refused = one_line_error([*inside, "--name", "lo"], PYRO_COMPUTE_HMAC_KEY=SECRET)
    assert time.monotonic() - started < SOON
    assert "127.0.0.1 (loopback)" in refused and ns in refused and "--host" in refused
    ok = Proc([*inside, "--name", "there", "--host", theirs], tmp_path / "there.log",
              PYRO_COMPUTE_HMAC_KEY=SECRET)
    try:
        wait_for(lambda: NAME_PREFIX + "there" in names(ns), what="the worker with --host registers")
        assert f"@{theirs}:" in names(ns)[NAME_PREFIX + "there"]
    finally:
        ok.stop()


def test_worker_pointed_at_an_absent_host_says_it_cannot_reach_it(
        procs: Callable[..., Proc], netns: tuple[str, str, str]) -> None:
    _, ours, theirs = netns
    nobody = theirs.rsplit(".", 1)[0] + ".99"  # in the namespace's subnet; no host answers ARP
    w = worker(procs, "w", f"{nobody}:9090", SECRET, "--name", "lost", "--host", ours)
    wait_for(lambda: "cannot register" in w.text(), what="the worker says why it cannot register")
    text = w.text()
    assert f"cannot reach {nobody}:9090" in text, text
    assert "nothing is listening" not in text and "different secret" not in text
    assert w.p.poll() is None
