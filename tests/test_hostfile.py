"""The hostfile launcher over real ssh: two sshd "hosts" in network namespaces, nothing left behind.

Layout (root namespace = the launcher, its name server and the client)::

    root ns 10.213.1.1 ── veth ── 10.213.1.2  namespace mh1: sshd (ssh alias host1)
    root ns 10.213.2.1 ── veth ── 10.213.2.2  namespace mh2: sshd (ssh alias host2)

Keys, sshd configuration and an ssh_config with the two aliases are made by the test in tmp
directories; the machine's own ssh configuration is not touched. Needs root, iproute2 and
openssh-server (.ci/system-packages installs it); the parsing tests run anywhere.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from launch_helpers import REPO, TESTS, child_env, kill_all, ns_names, wait_until, with_marker
from pyro_compute import Pool, Settings
from pyro_compute.errors import ConfigError
from pyro_compute.hostfile import Host, limit, parse_hostfile

SUBNET = "10.213"  # test_netns.py uses 10.77; nothing else here uses 10.213
LOCK = Path("/tmp/pyro_compute_netns_10.213.lock")
SSHD = "/usr/sbin/sshd"


def test_hostfile_lines_comments_counts_and_ranges() -> None:
    text = textwrap.dedent("""\
        # workers per host
        node1 4
        user@node2    2   # a comment after the count

        gpu[07-09,12] 1
        lonely
    """)
    assert parse_hostfile(text) == [
        Host("node1", 4), Host("user@node2", 2), Host("gpu07", 1), Host("gpu08", 1), Host("gpu09", 1),
        Host("gpu12", 1), Host("lonely", None)]
    assert Host("user@localhost").local and not Host("node1").local
    assert Host("user@node2").label == "node2"


@pytest.mark.parametrize("text, message", [
    ("node1 two", "is not 'HOST \\[COUNT\\]'"), ("node1 1 2", "is not 'HOST"), ("node1 0", "0 workers"),
    ("# nothing\n\n", "names no host"), ("n[5-2]", "not of the form")])
def test_bad_hostfiles_say_which_line_and_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_hostfile(text)


def test_limit_fills_hosts_in_order_then_goes_round() -> None:
    hosts = [Host("a", 4), Host("b", 2), Host("c")]
    assert limit(hosts, 3) == [Host("a", 3)]
    assert limit(hosts, 7) == [Host("a", 4), Host("b", 2), Host("c", 1)]
    assert limit(hosts, 10) == [Host("a", 5), Host("b", 3), Host("c", 2)]
    with pytest.raises(ConfigError):
        limit(hosts, 0)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class Hosts:
    """Two namespaces with an sshd each, and an ssh_config naming them host1 and host2."""

    def __init__(self, tmp: Path) -> None:
        tag = os.getpid()
        self.tmp = tmp
        self.ns = {n: f"mh{n}_{tag}" for n in (1, 2)}
        self.outer = {n: f"mhr{n}_{tag}" for n in (1, 2)}
        self.sshd: dict[int, subprocess.Popen[bytes]] = {}
        self.config = tmp / "ssh_config"

    def build(self) -> None:
        for n in (1, 2):
            ip("netns", "add", self.ns[n])
            inner = f"mhn{n}_{os.getpid()}"
            ip("link", "add", self.outer[n], "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", self.ns[n])
            ip("addr", "add", f"{SUBNET}.{n}.1/24", "dev", self.outer[n])
            ip("link", "set", self.outer[n], "up")
            ip("-n", self.ns[n], "link", "set", "lo", "up")
            ip("-n", self.ns[n], "addr", "add", f"{SUBNET}.{n}.2/24", "dev", inner)
            ip("-n", self.ns[n], "link", "set", inner, "up")
            ip("-n", self.ns[n], "route", "add", "default", "via", f"{SUBNET}.{n}.1")
        key = self.tmp / "id_ed25519"
        for path in (key, self.tmp / "host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
        shutil.copy(f"{key}.pub", self.tmp / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)
        entries = []
        for n in (1, 2):
            with open(self.tmp / f"sshd{n}.log", "wb") as log:
                self.sshd[n] = subprocess.Popen(
                    ["ip", "netns", "exec", self.ns[n], SSHD, "-D", "-e", "-f", "/dev/null",
                     "-o", f"HostKey={self.tmp / 'host_key'}", "-o", f"ListenAddress={SUBNET}.{n}.2:22",
                     "-o", f"AuthorizedKeysFile={self.tmp / 'authorized_keys'}",
                     "-o", f"PidFile={self.tmp}/sshd{n}.pid", "-o", "StrictModes=no",
                     "-o", "PermitRootLogin=prohibit-password"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            entries.append(f"Host host{n}\n  HostName {SUBNET}.{n}.2\n  User root\n  IdentityFile {key}\n"
                           "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                           "  LogLevel ERROR\n")
        self.config.write_text("".join(entries))
        for n in (1, 2):
            wait_until(lambda: self.ssh(n, "true").returncode == 0, 30, f"sshd on host{n} did not answer")

    def ssh(self, n: int, command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ssh", "-F", str(self.config), "-o", "BatchMode=yes", f"host{n}", command],
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)

    def launcher_options(self) -> list[str]:
        remote_python = f"env PYTHONPATH={REPO}:{TESTS} {sys.executable}"
        return ["--ssh", f"ssh -F {self.config}", "--python", remote_python]

    def destroy(self) -> None:
        for proc in self.sshd.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        for n in (1, 2):
            ip("netns", "del", self.ns[n], check=False)
            ip("link", "del", self.outer[n], check=False)


def remove_leftovers() -> None:
    """Namespaces and veths of an earlier, killed run (we hold LOCK, so none is live)."""
    for name in ip("netns", "list", check=False).stdout.split():
        if re.fullmatch(r"mh\d_\d+", name):
            ip("netns", "del", name, check=False)
    for name in re.findall(r"^\d+: ([^:@]+)", ip("-o", "link", "show", check=False).stdout, re.M):
        if re.fullmatch(r"mh[rn]\d_\d+", name):
            ip("link", "del", name, check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists(SSHD):
        pytest.skip("needs root, iproute2 and openssh-server (run .ci/system-packages)")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_leftovers()
        h = Hosts(tmp_path_factory.mktemp("ssh"))
        try:
            h.build()
            yield h
        finally:
            h.destroy()


SCRIPT = '''\
import json, os, sys, time
import psutil
from pyro_compute import futures

def where(x):
    """Square x and say which host (sshd address) and process did it."""
    return x * x, os.environ.get("SSH_CONNECTION", "").split()[2], os.getpid()

if __name__ == "__main__":
    if sys.argv[1] == "forever":
        print("started", flush=True)
        while True:
            list(futures.map(where, range(4)))
            time.sleep(0.05)
    secret = os.environ["PYRO_COMPUTE_HMAC_KEY"]
    exposed = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if secret in " ".join(p.info["cmdline"] or ())]
    results = list(futures.map(where, range(60)))
    print(json.dumps({"results": results, "exposed": exposed, "arg": sys.argv[1]}))
'''


def launch(hosts: Hosts, tmp: Path, words: list[str], *args: str, secret: str = "") -> subprocess.Popen[str]:
    (tmp / "hosts").write_text("# two hosts\nhost1 2\n\nhost2 1   # one worker\n")
    (tmp / "script.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "pyro_compute.cluster_cli", *words, "--hostfile", str(tmp / "hosts"),
           *hosts.launcher_options(), *args]
    env = child_env(PYRO_COMPUTE_HMAC_KEY=secret or secrets.token_hex(16))
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp, start_new_session=True)


def leftovers(launcher_pid: int) -> list[psutil.Process]:
    """Processes of this launch anywhere on the machine (the namespaces share our pid namespace)."""
    return with_marker(f"ssh.{launcher_pid}.")


def test_a_script_runs_on_both_hosts_and_nothing_is_left(hosts: Hosts, tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    started = time.monotonic()
    proc = launch(hosts, tmp_path, ["run"], "script.py", "hello", secret=secret)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert [r[0] for r in report["results"]] == [x * x for x in range(60)]
    assert {r[1] for r in report["results"]} == {f"{SUBNET}.1.2", f"{SUBNET}.2.2"}, "both hosts did work"
    assert report["exposed"] == [], "the secret appeared on a command line"
    assert report["arg"] == "hello"
    print(f"\nhostfile run (2 hosts, 3 workers, 60 tasks) took {elapsed:.2f} s")
    wait_until(lambda: not leftovers(proc.pid), 15, f"processes were left behind: {leftovers(proc.pid)}")


def test_ctrl_c_stops_every_host(hosts: Hosts, tmp_path: Path) -> None:
    proc = launch(hosts, tmp_path, ["run"], "script.py", "forever")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert len(leftovers(proc.pid)) >= 4, "a name server and two hosts' workers run"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole foreground group
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "interrupted" in err, err
        wait_until(lambda: not leftovers(proc.pid), 15, "processes were left behind after Ctrl-C")
    finally:
        proc.kill()
        kill_all(leftovers(proc.pid))


def test_a_killed_ssh_session_takes_its_workers_down(hosts: Hosts, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = launch(hosts, tmp_path, ["cluster", "up"], "--foreground", "--state", str(state), "-v")
    try:
        wait_until(state.exists, 60, "the cluster did not come up")
        info = json.loads(state.read_text())
        assert info["workers"] == 3
        ssh_clients = {n: [p for p in psutil.Process(proc.pid).children() if p.name() == "ssh"
                           and f"host{n}" in p.cmdline()] for n in (1, 2)}
        assert all(len(c) == 1 for c in ssh_clients.values()), ssh_clients
        host2 = [p for p in leftovers(proc.pid) if ".1.host2" in " ".join(p.cmdline())]
        assert host2, "host2 runs its workers"

        ssh_clients[2][0].kill()  # the ssh client dies: host2's side must stop by itself
        wait_until(lambda: not any(p.is_running() for p in host2), 30, "host2's workers outlived their ssh")

        session = [p for p in psutil.Process(hosts.sshd[1].pid).children(recursive=True)
                   if p.name() == "sshd"]  # the server side of host1's session
        host1 = [p for p in leftovers(proc.pid) if ".0.host1" in " ".join(p.cmdline())]
        assert session and host1
        kill_all(session)
        wait_until(lambda: not any(p.is_running() for p in host1), 30, "host1's workers outlived their session")

        key = Path(info["key_file"]).read_text().strip()
        wait_until(lambda: not ns_names(info["ns"], key), 15, "the dead hosts' workers did not unregister")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert not state.exists()
        wait_until(lambda: not leftovers(proc.pid), 15, "processes were left behind")
    finally:
        proc.kill()
        kill_all(leftovers(proc.pid))


def with_pid(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cluster_up_and_down(hosts: Hosts, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    up = launch(hosts, tmp_path, ["cluster", "up"], "--state", str(state))
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    env = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.M))
    pid = json.loads(state.read_text())["pid"]
    try:
        settings = Settings(ns=env["PYRO_COMPUTE_NS"], hmac_key_file=shlex.split(env["PYRO_COMPUTE_HMAC_KEY_FILE"])[0])
        with Pool(settings=settings) as pool:
            assert pool.submit(pow, 3, 4).result(timeout=60) == 81
        down = subprocess.run([sys.executable, "-m", "pyro_compute.cluster_cli", "cluster", "down", "--state",
                               str(state)], capture_output=True, text=True, timeout=120, env=child_env())
        assert down.returncode == 0, down.stderr
        assert not state.exists()
        wait_until(lambda: not with_pid(pid), 10, "the cluster's process outlived 'cluster down'")
        wait_until(lambda: not leftovers(pid), 15, "processes were left behind after cluster down")
    finally:
        kill_all(leftovers(pid))
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_host_that_cannot_start_workers_fails_the_run_with_its_reason(hosts: Hosts, tmp_path: Path) -> None:
    proc = launch(hosts, tmp_path, ["run"], "--python", "/nonexistent/python3", "script.py", "x")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert re.search(r"host[12] exited with status 127", err) and "/nonexistent/python3: No such file" in err, err
    assert "Traceback" not in err
    wait_until(lambda: not leftovers(proc.pid), 15, "processes were left behind")


def test_localhost_lines_start_their_workers_here_without_ssh(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("localhost 2\n")
    (tmp_path / "script.py").write_text(
        "import os\nfrom pyro_compute import futures\n\ndef f(x):\n    return x + 1, os.getppid()\n\n"
        "if __name__ == '__main__':\n    r = list(futures.map(f, range(30)))\n"
        "    print(sum(a for a, _ in r), len({p for _, p in r}), r[0][1] != os.getpid())\n")
    proc = subprocess.Popen([sys.executable, "-m", "pyro_compute.cluster_cli", "run", "--hostfile",
                             str(tmp_path / "hosts"), "--ssh", "/nonexistent/ssh", "--python", sys.executable,
                             str(tmp_path / "script.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == [str(sum(range(1, 31))), "1", "True"], "workers forked by one supervisor, not the launcher"
    wait_until(lambda: not leftovers(proc.pid), 15, "processes were left behind")
