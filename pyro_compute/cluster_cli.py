"""Command-line front ends of the launchers: ``--hostfile`` runs and ``pyro-compute cluster up|down``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import futures
from .errors import ClusterError, ComputeError, ConfigError
from .hostfile import limit, read_hostfile
from .launch import SSHCluster
from .pool import Pool

STATE = Path("~/.pyro-compute/cluster.json")


def add_hostfile_options(parser: argparse.ArgumentParser) -> None:
    """``--hostfile`` and the ssh options, for ``run`` and ``cluster up``."""
    parser.add_argument("--hostfile", metavar="HOSTS",
                        help="start workers over ssh on the hosts in this SCOOP-style file ('HOST [COUNT]' "
                             "per line) and a name server here; -n N then caps the total")
    parser.add_argument("--python", default="python3", metavar="CMD",
                        help="the Python on the hosts, with pyro-compute installed (default: python3)")
    parser.add_argument("--ssh", default="ssh", metavar="CMD",
                        help="the ssh command and options, e.g. 'ssh -F ./ssh_config' (default: ssh)")
    parser.add_argument("--ns-host", metavar="ADDRESS",
                        help="this machine's address as the hosts reach it (default: the route to the first host)")
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="a module whose functions the workers may run; repeat for more")


def _cluster(args: argparse.Namespace, script: str | None = None) -> SSHCluster:
    hosts = read_hostfile(args.hostfile)
    if getattr(args, "workers", None):
        hosts = limit(hosts, args.workers)
    return SSHCluster(hosts, script=script, python=args.python, ssh=shlex.split(args.ssh),
                      ns_host=args.ns_host, allow_modules=args.allow_module,
                      by_value=getattr(args, "allow_by_value", False))


def run_script(pool: Pool, script: str, argv: list[str]) -> None:
    """Run ``script`` as ``__main__`` with ``pool`` behind ``pyro_compute.futures``."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    futures.set_default_pool(pool)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        futures.set_default_pool(None)
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_hostfile(args: argparse.Namespace) -> int:
    """``python -m pyro_compute --hostfile HOSTS [-n N] script.py [args]``: run, then tear everything down."""
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise ConfigError(f"no such script: {args.script}")
    if getattr(args, "ns", None):
        raise ConfigError("give either --ns (workers already running) or --hostfile (start them), not both")
    try:
        with _cluster(args, script) as cluster, Pool(settings=cluster.settings) as pool:
            run_script(pool, script, list(args.args))
    except KeyboardInterrupt:
        print("pyro-compute: interrupted; the workers on every host were stopped", file=sys.stderr)
        return 130
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cluster up|down`` to a ``pyro-compute`` subparsers object; return the ``cluster`` parser."""
    p = subparsers.add_parser("cluster", help="start or stop workers on the hosts of a hostfile",
                              description="Start a name server here and workers over ssh on every host "
                                          "of a hostfile; print the settings that reach them.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start the cluster; prints 'export PYRO_COMPUTE_...' lines for eval")
    add_hostfile_options(up)
    up.add_argument("-n", "--workers", type=int, metavar="N", help="start N workers in all")
    up.add_argument("--allow-by-value", action="store_true",
                    help="workers accept functions sent by value (lambdas, functions of any script)")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground until Ctrl-C")
    up.add_argument("--state", default=str(STATE), help=f"where to keep the cluster's state (default {STATE})")
    up.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    down = sub.add_parser("down", help="stop the cluster started by 'cluster up'")
    down.add_argument("--state", default=str(STATE), help=f"the state file of 'cluster up' (default {STATE})")
    down.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p  # type: ignore[no-any-return]


def cmd_cluster(args: argparse.Namespace) -> int:
    """Run ``cluster up`` or ``cluster down``."""
    if args.action == "down":
        return _down(Path(args.state).expanduser())
    if not args.hostfile:
        raise ConfigError("cluster up needs --hostfile HOSTS")
    read_hostfile(args.hostfile)  # fail here, not in the background, on a bad file
    return _up_foreground(args) if args.foreground else _up_detached(args)


def _up_foreground(args: argparse.Namespace) -> int:
    state = Path(args.state).expanduser()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = state.with_suffix(".key")
    try:
        with _cluster(args) as cluster:
            _write_private(key_file, cluster.secret + "\n")
            state.write_text(json.dumps({"pid": os.getpid(), "ns": cluster.ns, "key_file": str(key_file),
                                         "workers": len(cluster.registered())}))
            print(f"export PYRO_COMPUTE_NS={cluster.ns}\n"
                  f"export PYRO_COMPUTE_HMAC_KEY_FILE={shlex.quote(str(key_file))}", flush=True)
            while not stop.wait(1.0):
                pass
    finally:  # only once every host has stopped: 'cluster down' waits for this
        state.unlink(missing_ok=True)
        key_file.unlink(missing_ok=True)
    return 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc: kill(0) is all we know


def _up_detached(args: argparse.Namespace) -> int:
    """Start ``cluster up --foreground`` in its own session; return once it is up (or failed)."""
    state = Path(args.state).expanduser()
    if state.exists():
        raise ClusterError(f"a cluster is up already (see {state}); stop it with 'pyro-compute cluster down'")
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cmd = [sys.executable, "-m", "pyro_compute.cluster_cli", *_up_argv(args)]
    log_path = state.with_suffix(".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        while not state.exists():
            if proc.poll() is not None:
                raise ClusterError(f"the cluster did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
    except KeyboardInterrupt:
        proc.terminate()  # it stops whatever it started so far
        proc.wait(timeout=60)
        raise
    info = json.loads(state.read_text())
    print(f"export PYRO_COMPUTE_NS={info['ns']}\nexport PYRO_COMPUTE_HMAC_KEY_FILE={shlex.quote(info['key_file'])}")
    print(f"# {info['workers']} workers; log in {log_path}; stop with: pyro-compute cluster down", file=sys.stderr)
    return 0


def _up_argv(args: argparse.Namespace) -> list[str]:
    argv = ["cluster", "up", "--foreground", "--hostfile", os.path.abspath(args.hostfile), "--python", args.python,
            "--ssh", args.ssh, "--state", str(Path(args.state).expanduser())]
    argv += ["--ns-host", args.ns_host] if args.ns_host else []
    argv += ["-n", str(args.workers)] if args.workers else []
    argv += [a for m in args.allow_module for a in ("--allow-module", m)]
    argv += ["--allow-by-value"] if args.allow_by_value else []
    return argv + (["-v"] if args.verbose else [])


def _down(state: Path, timeout: float = 60.0) -> int:
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        raise ClusterError(f"no cluster is up (no readable {state}); start one with 'pyro-compute cluster up'") from None
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state.unlink(missing_ok=True)
        print(f"the cluster (pid {pid}) had stopped already; removed {state}", file=sys.stderr)
        return 0
    deadline = time.monotonic() + timeout
    while (state.exists() or _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if state.exists() or _alive(pid):
        raise ClusterError(f"the cluster (pid {pid}) did not stop within {timeout:.0f} s; kill it with 'kill {pid}'")
    print(f"stopped the cluster at {info['ns']}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser: ``run`` with ``--hostfile`` and ``cluster up|down`` (``python -m pyro_compute.cluster_cli``)."""
    p = argparse.ArgumentParser(prog="python -m pyro_compute.cluster_cli")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a script on the workers of a hostfile")
    add_hostfile_options(run)
    run.add_argument("-n", "--workers", type=int, metavar="N", help="start N workers in all")
    run.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER)
    add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``run --hostfile`` or ``cluster up|down``; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "run":
            if not args.hostfile:
                raise ConfigError("run needs --hostfile HOSTS here")
            return run_hostfile(args)
        return cmd_cluster(args)
    except ComputeError as e:
        print(f"pyro-compute: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyro-compute: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
