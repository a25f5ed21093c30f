"""What the hostfile launcher runs on each host (and for its name server): secrets on stdin, EOF stops it.

The launcher starts ``python -m pyro_compute.remote worker|nameserver ARGS`` (over ``ssh`` for
remote hosts) and writes to its stdin::

    {"secret": "...", "script": "name.py", "size": 1234, "sha256": "..."}\\n   one JSON line
    <size bytes of the script>
    \\n \\n \\n ...                                                          a heartbeat every few seconds

Nothing secret is ever on a command line. The process stops (workers drain and unregister) when
stdin reaches EOF -- the launcher exited, closed it, or the ssh connection went away -- or when no
heartbeat arrived for ``--timeout`` seconds (a silently dead link).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

from .config import Settings
from .errors import ComputeError, ConfigError

log = logging.getLogger(__name__)
HEADER_LIMIT = 64 * 1024
SCRIPT_LIMIT = 64 * 1024 * 1024


class Stdin:
    """Unbuffered reads of the launcher's pipe, so ``select`` sees every byte still unread."""

    def __init__(self, fd: int = 0, timeout: float = 15.0) -> None:
        self.fd = fd
        self.timeout = timeout
        self._buffer = b""
        self._heard = time.monotonic()
        self.closed = False

    def _fill(self, wait: float) -> bool:
        """Read what is there within ``wait`` seconds; False at EOF."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            data = os.read(self.fd, 65536)
            if not data:
                self.closed = True
                return False
            self._buffer += data
            self._heard = time.monotonic()
        return True

    def _need(self, size: int, until: float) -> None:
        """Fill the buffer to ``size`` bytes, or raise ConfigError when stdin ends first or time runs out."""
        while len(self._buffer) < size:
            if not self._fill(max(0.0, until - time.monotonic())) or time.monotonic() > until:
                raise ConfigError("the launcher's stdin ended early; start this through "
                                  "'pyro-compute cluster up' or 'python -m pyro_compute --hostfile'")

    def read_exactly(self, size: int, until: float) -> bytes:
        """``size`` bytes, or ConfigError when the launcher sends less before ``until``."""
        self._need(size, until)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read_line(self, until: float) -> bytes:
        """One line (without its newline) of at most HEADER_LIMIT bytes."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > HEADER_LIMIT:
                raise ConfigError("the launcher's header line is too long")
            self._need(len(self._buffer) + 1, until)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def gone(self, wait: float) -> bool:
        """Wait up to ``wait`` s for heartbeats; True once stdin is at EOF or silent too long."""
        if self.closed or not self._fill(wait):
            log.info("the launcher closed the connection; stopping")
            return True
        self._buffer = b""
        if time.monotonic() - self._heard > self.timeout:
            log.warning("no heartbeat from the launcher for %.0f s; stopping", self.timeout)
            return True
        return False


def read_header(stdin: Stdin, wait: float = 30.0) -> tuple[dict[str, Any], bytes]:
    """The launcher's JSON header and the script bytes that follow it, checked against its hash.

    Raises:
        ConfigError: malformed header, oversized script or a hash mismatch.
    """
    until = time.monotonic() + wait
    try:
        header = json.loads(stdin.read_line(until))
    except ValueError:
        raise ConfigError("the launcher's first line is not JSON; is this the same pyro-compute "
                          "version on both machines?") from None
    if not isinstance(header, dict) or not isinstance(header.get("secret", ""), str):
        raise ConfigError("the launcher's header is not a JSON object with a 'secret' string")
    size = int(header.get("size") or 0)
    if not 0 <= size <= SCRIPT_LIMIT:
        raise ConfigError(f"a script of {size} bytes is refused (the limit is {SCRIPT_LIMIT})")
    script = stdin.read_exactly(size, until) if size else b""
    if size and hashlib.sha256(script).hexdigest() != header.get("sha256"):
        raise ConfigError("the script arrived damaged (its SHA-256 differs); try again")
    return header, script


def route_to(host: str, port: int) -> str:
    """The local address this machine uses to reach ``host`` (no packet is sent)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        s.connect(info[4])
        return str(s.getsockname()[0])


def _save_script(header: dict[str, Any], script: bytes, directory: str) -> str | None:
    if not header.get("script"):
        return None
    path = os.path.join(directory, os.path.basename(str(header["script"])))
    with open(path, "wb") as f:
        f.write(script)
    return path


def run_worker(args: argparse.Namespace) -> int:
    """Read the header, then serve ``args.workers`` forked workers until stdin closes."""
    from .supervisor import serve_many  # numba and the kernels: only where workers run
    from .worker import configure_pyro

    stdin = Stdin(timeout=args.timeout)
    header, script = read_header(stdin)
    ns_host, ns_port = Settings(ns=args.ns).ns_address
    settings = Settings.from_env(ns=args.ns, hmac_key=header["secret"], host=args.host or route_to(ns_host, ns_port),
                                 allow_modules=",".join(args.allow_module) or None)
    configure_pyro(settings)
    directory = tempfile.mkdtemp(prefix="pyro-compute-")
    try:
        path = _save_script(header, script, directory)
        return serve_many(settings, args.workers, name=args.name, script=path,
                          by_value=args.allow_by_value, watch=stdin.gone)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_nameserver(args: argparse.Namespace) -> int:
    """Serve a Pyro4 name server with the header's secret until stdin closes."""
    import Pyro4

    from .naming import Pruner
    from .server import GuardedNameServerDaemon
    from .wire import register_wire

    stdin = Stdin(timeout=args.timeout)
    header, _ = read_header(stdin)
    Pyro4.config.SERIALIZERS_ACCEPTED = {"serpent"}
    Pyro4.config.SERIALIZER = "serpent"
    Pyro4.config.POLLTIMEOUT = 0.5  # how often the request loop checks stdin
    register_wire()
    daemon = GuardedNameServerDaemon(args.host, args.port)  # strangers held as in run-ns
    daemon._pyroHmacKey = header["secret"].encode() or None
    print(f"ready {daemon.uriFor(daemon.nameserver)}", flush=True)
    pruner = Pruner(daemon.nameserver, daemon._pyroHmacKey)  # drop names of dead workers
    pruner.thread.start()
    try:
        with daemon:
            daemon.requestLoop(loopCondition=lambda: not stdin.gone(0))
    finally:
        pruner.stop.set()
        pruner.thread.join(timeout=10)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``python -m pyro_compute.remote``: started by the launcher, not by hand."""
    from .supervisor import worker_count

    p = argparse.ArgumentParser(prog="python -m pyro_compute.remote",
                                description="Started by the hostfile launcher; reads its secret from stdin.")
    p.add_argument("--timeout", type=float, default=15.0, help="stop after this long without a heartbeat")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="serve forked workers")
    w.add_argument("--ns", required=True, help="name server HOST:PORT")
    w.add_argument("--host", help="interface to bind (default: the one that reaches the name server)")
    w.add_argument("--name", required=True, help="base name of the workers")
    w.add_argument("-n", "--workers", type=worker_count, default="auto")
    w.add_argument("--allow-module", action="append", default=[])
    w.add_argument("--allow-by-value", action="store_true")
    n = sub.add_parser("nameserver", help="serve a name server")
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--port", type=int, default=0)
    n.add_argument("--name", help="a label for ps: which launcher started this")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the role named on the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {socket.gethostname()} %(name)s %(levelname)s %(message)s")
    try:
        return run_worker(args) if args.role == "worker" else run_nameserver(args)
    except (ComputeError, OSError) as e:
        print(f"pyro-compute on {socket.gethostname()}: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
