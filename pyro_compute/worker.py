"""The ``compute-worker`` daemon: warm up kernels, serve an Evaluator, keep it registered."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

import Pyro4
import Pyro4.errors
import Pyro4.naming

from . import __version__, kernels
from .config import NAME_PREFIX, Settings, require_secret
from .errors import ComputeError, ConfigError
from .evaluator import KERNELS, Evaluator
from .references import Resolver
from .server import GuardedDaemon
from .wire import register_wire

log = logging.getLogger(__name__)
NS_TIMEOUT = 10.0  # seconds a call to the name server may take
STARTUP_RETRY = 0.1  # seconds between registration attempts until the first succeeds


def configure_pyro(settings: Settings) -> None:
    """Set Pyro4's process-wide options for a server: safe serializers only, bounded messages.

    marshal is accepted beside serpent because pools send plain-data batches with it (much
    faster); pickle, dill and cloudpickle are refused.
    """
    Pyro4.config.SERIALIZER = "serpent"
    Pyro4.config.SERIALIZERS_ACCEPTED = {"serpent", "marshal"}
    Pyro4.config.MAX_MESSAGE_SIZE = settings.max_message_size
    Pyro4.config.POLLTIMEOUT = 0.2
    Pyro4.config.SOCK_NODELAY = True
    # Threads serve requests only; connections wait for them in GuardedDaemon's select loop.
    Pyro4.config.THREADPOOL_SIZE = 64
    # Timeout of the worker's own calls (to the name server).
    Pyro4.config.COMMTIMEOUT = NS_TIMEOUT
    register_wire()


def locate_ns(settings: Settings) -> Any:
    """A fresh proxy to the name server named in ``settings``."""
    host, port = settings.ns_address
    return Pyro4.locateNS(host, port, hmac_key=settings.hmac_bytes)


class Worker:
    """One Pyro4 daemon hosting one Evaluator, registered in the name server while it serves."""

    def __init__(self, settings: Settings, name: str | None = None, port: int = 0,
                 script: str | None = None, by_value: bool = False) -> None:
        self.settings = settings
        self.name = NAME_PREFIX + (name or f"{socket.gethostname()}.{os.getpid()}")
        self._stop = threading.Event()
        if by_value and settings.hmac_bytes is None:
            raise ConfigError("--allow-by-value runs code that callers send, so it needs a shared "
                              "secret: set PYRO_COMPUTE_HMAC_KEY or PYRO_COMPUTE_HMAC_KEY_FILE")
        resolver = Resolver(settings.allowed_modules, script, by_value)
        self._busy = threading.Lock()
        self.evaluator = Evaluator(resolver, self.name, self._busy)
        kernels.warm_up()
        self.daemon = GuardedDaemon(host=settings.host, port=port, idle_timeout=settings.idle_timeout)
        self.daemon._pyroHmacKey = settings.hmac_bytes
        self.uri = self.daemon.register(self.evaluator, objectId=self.name)
        self.metadata = {"pyro_compute.evaluator", f"kernels:{','.join(KERNELS)}",
                         f"cores:{os.cpu_count() or 1}", f"host:{socket.gethostname()}",
                         f"version:{__version__}"}
        self._registrar = threading.Thread(target=self._keep_registered, name="registrar", daemon=True)

    def serve(self) -> None:
        """Register, then serve until ``stop()``; unregister and close on the way out."""
        self._registrar.start()
        log.info("worker %s serving at %s", self.name, self.uri)
        try:
            self.daemon.requestLoop(loopCondition=lambda: not self._stop.is_set())
        finally:
            self._stop.set()
            self.daemon.transportServer.stop_listening()
            self._registrar.join(timeout=5)
            self._unregister()
            self._drain(min(self.settings.call_timeout, 30.0))
            self.daemon.close()
            log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        """Ask the request loop to finish; safe from a signal handler and to call twice."""
        self._stop.set()

    def _drain(self, timeout: float) -> None:
        """Let a running batch finish so its pool gets the result instead of retrying it."""
        if self._busy.acquire(timeout=timeout):
            self._busy.release()
        else:
            log.warning("worker %s stops with a batch still running; its pool will retry it", self.name)

    def _register(self, quiet: bool = False) -> bool:
        try:
            with locate_ns(self.settings) as ns:
                ns.register(self.name, self.uri, metadata=self.metadata)
            return True
        except Pyro4.errors.PyroError as e:
            log.log(logging.DEBUG if quiet else logging.WARNING, "cannot register %s with the name "
                    "server at %s: %s", self.name, self.settings.ns, e)
            return False

    def _keep_registered(self) -> None:
        """Register (retrying quickly until the name server is up), then check now and then."""
        while not self._register(quiet=True):
            if self._stop.wait(STARTUP_RETRY):
                return
        while not self._stop.wait(self.settings.discovery_interval):
            where = self._registered()
            if where is None or where == str(self.uri):
                continue
            if where:
                # Anyone with the secret may overwrite a name; say so loudly, then take it back.
                log.warning("the name %s points to %s, not to this worker (%s): another secret "
                            "holder registered it; registering it again", self.name, where, self.uri)
            if self._register():
                log.info("registered %s again", self.name)

    def _registered(self) -> str | None:
        """The URI the name server maps our name to ("" when none); None when it cannot be reached."""
        try:
            ns = locate_ns(self.settings)
        except Pyro4.errors.PyroError:
            return None
        with ns:
            try:
                # list() answers plain strings; lookup() would rebuild a URI object.
                return str(ns.list(prefix=self.name).get(self.name, ""))
            except Pyro4.errors.PyroError:
                return None

    def _unregister(self) -> None:
        try:
            with locate_ns(self.settings) as ns:
                if ns.list(prefix=self.name).get(self.name) == str(self.uri):
                    ns.remove(self.name)
        except Pyro4.errors.PyroError as e:
            log.warning("cannot unregister %s: %s", self.name, e)


def build_parser() -> argparse.ArgumentParser:
    """The ``compute-worker`` command line."""
    p = argparse.ArgumentParser(
        prog="compute-worker",
        description="Serve pyro_compute's Evaluator (Numba Monte Carlo kernels and allowed "
                    "functions) and register it in a Pyro4 name server.",
        epilog="Secrets come from PYRO_COMPUTE_HMAC_KEY or PYRO_COMPUTE_HMAC_KEY_FILE, never "
               "the command line. Run one worker per core.")
    p.add_argument("--ns", help="name server HOST:PORT (default: $PYRO_COMPUTE_NS or 127.0.0.1:9090)")
    p.add_argument("--host", help="interface to bind (default: $PYRO_COMPUTE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: any free port)")
    p.add_argument("--name", help="register as pyro_compute.evaluator.NAME (default: HOST.PID)")
    p.add_argument("--script", help="a script whose functions callers may run (as __main__)")
    p.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                   help="a module whose functions callers may run; repeat for more")
    p.add_argument("--allow-by-value", action="store_true",
                   help="accept cloudpickled functions from authenticated callers (needs a secret)")
    p.add_argument("--hmac-key-file", help="file holding the shared secret")
    p.add_argument("--insecure", action="store_true",
                   help="serve without a secret (anyone who can connect may call); loopback only")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    from .supervisor import add_workers_argument  # here: supervisor imports this module
    add_workers_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    modules = ",".join(filter(None, [os.environ.get("PYRO_COMPUTE_ALLOW_MODULES", ""), *args.allow_module]))
    from . import slurm, supervisor
    try:
        slurm.apply_environment(args)  # under srun: name, name server, address and -n from Slurm
        settings = Settings.from_env(ns=args.ns, host=args.host, hmac_key_file=args.hmac_key_file,
                                     allow_modules=modules or None)
        require_secret(settings, args.insecure, "compute-worker", settings.host)
        configure_pyro(settings)
        if (args.workers or 1) > 1:
            return supervisor.serve_many(settings, args.workers, name=args.name, port=args.port,
                                         script=args.script, by_value=args.allow_by_value)
        worker = Worker(settings, name=args.name, port=args.port, script=args.script,
                        by_value=args.allow_by_value)
    except (ComputeError, OSError) as e:
        print(f"compute-worker: error: {e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    print(f"ready {worker.name} {worker.uri}", flush=True)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
