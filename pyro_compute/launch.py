"""SSHCluster: a name server here and forked workers on every hostfile host, started over ``ssh``.

::

    this machine                                   each host in the hostfile
    SSHCluster ── python -m pyro_compute.remote nameserver   (stdin: secret, then heartbeats)
       └──────── ssh HOST 'exec python3 -m pyro_compute.remote worker ...'
                     stdin: {"secret", "script" + sha256} + script bytes, then a heartbeat every 2 s
                     └── supervisor ── forked workers, registered in the name server here

The system ``ssh`` client does the connecting, so keys, ``~/.ssh/config`` aliases and jump hosts
work as they do for the user. The secret and the script travel over ssh's stdin, never on a
command line. Every remote side stops -- workers drain and unregister -- when its stdin ends: on
``close()``, on Ctrl-C, when this process dies however it dies, or when the ssh connection drops.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any, Sequence

import Pyro4
import Pyro4.errors

from .config import NAME_PREFIX, Settings
from .errors import ClusterError, ConfigError
from .hostfile import Host
from .remote import route_to

log = logging.getLogger(__name__)
SSH_OPTIONS = ("-T", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")


class _Remote:
    """One launched process (ssh or local) with its stdin pipe and log file."""

    def __init__(self, label: str, cmd: list[str], log_path: Path, header: bytes) -> None:
        self.label, self.log_path = label, log_path
        with open(log_path, "wb") as out:
            # A session of its own: Ctrl-C in the terminal reaches only the launcher, which then
            # tears down in order instead of every ssh dying at once.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.lost = False
        assert self.proc.stdin is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.send(header)

    def send(self, data: bytes) -> bool:
        """Write to the process's stdin; False once it is gone."""
        try:
            self.stdin.write(data)
            self.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def tail(self) -> str:
        return f"--- {self.label}\n" + self.log_path.read_text(errors="replace")[-3000:]


def header(secret: str, script: str | None) -> bytes:
    """The first bytes every remote side reads: the JSON line, then the script."""
    body = Path(script).read_bytes() if script else b""
    line = {"secret": secret, "script": os.path.basename(script) if script else None,
            "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(line).encode() + b"\n" + body


def ssh_target(ssh: Sequence[str], host: str) -> str:
    """The address ``ssh`` will really connect to for ``host`` (``ssh -G`` applies ~/.ssh/config)."""
    try:
        out = subprocess.run([*ssh, "-G", host], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot run {ssh[0]!r} to look up {host}: {e}") from e
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname":
            return value.strip()
    return host.rpartition("@")[2]


class SSHCluster:
    """Start a name server here and workers on each host; ``close()`` stops them all.

    Args:
        hosts: where to start workers and how many (see ``pyro_compute.hostfile``).
        script: a script whose functions the workers may run; it is shipped to every host.
        python: the Python command on the hosts (e.g. ``/opt/venv/bin/python``); a shell word list.
        ssh: the ssh command and options (e.g. ``ssh -F cfg``); the host is appended.
        ns_host: the address of this machine the hosts reach (default: the route to the first host).
        secret: the shared secret (default: the configured one, else a random one).
        allow_modules: further modules whose functions the workers may run.
        by_value: let the workers accept functions by value.
        startup_timeout: seconds until every host must have its workers registered.
        heartbeat: seconds between heartbeats; a host stops after ``remote_timeout`` s without one.

    Raises:
        ClusterError: a host failed to start its workers (the message holds its output).
    """

    def __init__(self, hosts: Sequence[Host], *, script: str | None = None, python: str = "python3",
                 ssh: Sequence[str] = ("ssh",), ns_host: str | None = None, secret: str | None = None,
                 allow_modules: Sequence[str] = (), by_value: bool = False, startup_timeout: float = 120.0,
                 heartbeat: float = 2.0, remote_timeout: float = 15.0) -> None:
        if not hosts:
            raise ConfigError("an ssh cluster needs at least one host")
        self.hosts = list(hosts)
        self.script = os.path.abspath(script) if script else None
        self.secret = secret if secret is not None else (
            (Settings.from_env().hmac_bytes or b"").decode() or secrets.token_hex(16))
        self.heartbeat, self.remote_timeout = heartbeat, remote_timeout
        self._logs = tempfile.TemporaryDirectory(prefix="pyro-compute-ssh-")
        self._remotes: list[_Remote] = []
        self._stopped = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="ssh-heartbeat", daemon=True)
        self._finalizer = weakref.finalize(self, _teardown, self._remotes, self._stopped, self._beater, 40.0)
        try:
            ns_host = ns_host or self._guess_ns_host(list(ssh))
            self.ns = self._start_nameserver(ns_host)
            self.settings = Settings(ns=self.ns, hmac_key=self.secret)
            for i, host in enumerate(self.hosts):
                self._remotes.append(self._start_host(i, host, list(ssh), python, allow_modules, by_value))
            self._beater.start()
            self._wait_for_workers(startup_timeout)
        except BaseException:
            self.close()
            raise

    def base_name(self, index: int) -> str:
        """The base worker name of the host on hostfile line ``index``; workers add ``.0``, ``.1``..."""
        return f"ssh.{os.getpid()}.{index}.{self.hosts[index].label}"

    def _guess_ns_host(self, ssh: list[str]) -> str:
        remote = [h for h in self.hosts if not h.local]
        if not remote:
            return "127.0.0.1"
        target = ssh_target(ssh, remote[0].name)
        try:
            return route_to(target, 22)
        except OSError as e:
            raise ConfigError(f"cannot tell which address of this machine {target} reaches ({e}); "
                              "give it with --ns-host ADDRESS") from e

    def _start_nameserver(self, host: str) -> str:
        cmd = [sys.executable, "-m", "pyro_compute.remote", "nameserver", "--host", host, "--port", "0",
               "--name", f"ssh.{os.getpid()}.nameserver"]
        ns = _Remote("nameserver", cmd, Path(self._logs.name) / "nameserver.log", header(self.secret, None))
        self._remotes.append(ns)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ns.proc.poll() is None:
            for line in ns.log_path.read_text(errors="replace").splitlines():
                if line.startswith("ready "):
                    uri = Pyro4.URI(line.split()[1])
                    return f"{uri.host}:{uri.port}"
            time.sleep(0.05)
        raise ClusterError(f"the name server did not start on {host}:\n{ns.tail()}")

    def _start_host(self, index: int, host: Host, ssh: list[str], python: str,
                    allow_modules: Sequence[str], by_value: bool) -> _Remote:
        args = ["-m", "pyro_compute.remote", "--timeout", str(self.remote_timeout), "worker",
                "--ns", self.ns, "--name", self.base_name(index), "-n", str(host.count or "auto")]
        args += [a for m in allow_modules for a in ("--allow-module", m)]
        args += ["--allow-by-value"] if by_value else []
        if host.local:
            cmd = [*shlex.split(python), *args]
        else:
            remote = "exec " + " ".join([*(shlex.quote(w) for w in shlex.split(python)), *map(shlex.quote, args)])
            cmd = [*ssh, *SSH_OPTIONS, host.name, remote]
        log.info("starting workers on %s", host.name)
        return _Remote(host.name, cmd, Path(self._logs.name) / f"host{index}.log",
                       header(self.secret, self.script))

    def registered(self) -> dict[str, str]:
        """Worker names and URIs in this cluster's name server."""
        host, port = self.settings.ns_address
        with Pyro4.locateNS(host, port, hmac_key=self.secret.encode()) as ns:
            return dict(ns.list(prefix=NAME_PREFIX))

    def _wait_for_workers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            names = self.registered()
            missing = [i for i, h in enumerate(self.hosts)
                       if sum(n.startswith(f"{NAME_PREFIX}{self.base_name(i)}.") for n in names) < (h.count or 1)]
            if not missing:
                log.info("ssh cluster up: name server %s, %d workers on %d hosts", self.ns, len(names), len(self.hosts))
                return
            for r in self._remotes:
                if r.proc.poll() is not None:
                    raise ClusterError(f"{r.label} exited with status {r.proc.returncode} while starting "
                                       f"its workers:\n{r.tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(self._remotes[i + 1].tail() for i in missing)
                raise ClusterError(f"{', '.join(self.hosts[i].name for i in missing)} did not register "
                                   f"their workers within {timeout:.0f} s:\n{tails}")
            time.sleep(0.1)

    def _beat(self) -> None:
        """Heartbeats keep the remote sides alive; report hosts whose ssh went away."""
        while not self._stopped.wait(self.heartbeat):
            for r in self._remotes:
                if not r.lost and (r.proc.poll() is not None or not r.send(b"\n")):
                    r.lost = True
                    log.warning("lost %s (exit status %s); its workers are gone:\n%s", r.label,
                                r.proc.returncode, r.tail())

    @property
    def lost(self) -> list[str]:
        """Hosts (and the name server) whose process has exited."""
        return [r.label for r in self._remotes if r.proc.poll() is not None]

    def close(self) -> None:
        """Close every stdin (the remote sides drain, unregister, exit), then kill what is left. Idempotent."""
        self._finalizer()
        self._logs.cleanup()

    def __enter__(self) -> SSHCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _teardown(remotes: list[_Remote], stopped: threading.Event, beater: threading.Thread, timeout: float) -> None:
    """Workers' stdin first (the name server must outlive their unregistering), then the name server."""
    stopped.set()
    if beater.is_alive():
        beater.join(timeout=timeout)
    workers, nameservers = remotes[1:], remotes[:1]
    for group in (workers, nameservers):
        for r in group:
            try:
                r.stdin.close()
            except BrokenPipeError:
                pass  # it is gone already
        deadline = time.monotonic() + timeout
        for r in group:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", r.label, timeout)
                r.proc.kill()
                r.proc.wait(timeout=10)

