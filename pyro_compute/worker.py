"""The ``compute-worker`` daemon: warm up kernels, serve an Evaluator, keep it registered."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import Pyro4
import Pyro4.errors
import Pyro4.naming

from . import __version__, kernels, lifeline
from .config import NAME_PREFIX, Settings, is_loopback, require_secret
from .diagnose import explain, explain_bind, peer_alive
from .errors import ComputeError, ConfigError
from .evaluator import KERNELS, Evaluator
from .references import Resolver
from .server import GuardedDaemon
from .wire import register_wire

log = logging.getLogger(__name__)
NS_TIMEOUT = 10.0  # seconds a call to the name server may take
STARTUP_RETRY = 0.1  # seconds before the second registration attempt; doubles up to discovery_interval
REPEAT_AFTER = 60.0  # seconds before the same registration problem is logged again


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


def check_reachable(settings: Settings) -> None:
    """Refuse a loopback worker that would register in a name server on another address.

    Raises:
        ConfigError: the worker binds a loopback address but the name server is elsewhere, so
            the URI it registers (127.0.0.1:PORT) would send every other machine's clients to itself.
    """
    ns_host = settings.ns_address[0]
    if not is_loopback(settings.host) or is_loopback(ns_host) or not _resolves(ns_host):
        return
    raise ConfigError(f"this worker would listen on {settings.host} (loopback) but register in the name "
                      f"server at {settings.ns}, which is not on loopback: clients on other machines "
                      f"would be sent to their own {settings.host}. Start it with --host set to this "
                      "machine's address on the network the name server and clients use (e.g. "
                      "--host 10.0.0.7, or PYRO_COMPUTE_HOST)")


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


class Worker:
    """One Pyro4 daemon hosting one Evaluator, registered in the name server while it serves."""

    def __init__(self, settings: Settings, name: str | None = None, port: int = 0,
                 script: str | None = None, by_value: bool = False, warm: bool = True) -> None:
        self.settings = settings
        self.name = NAME_PREFIX + (name or f"{socket.gethostname()}.{os.getpid()}")
        # A plain flag for signal handlers (an Event's lock taken twice by nested handlers
        # deadlocks); the Event wakes the registrar and is set by the main thread only.
        self._stopping = False
        self._stop = threading.Event()
        self._ns: Any = None  # the name server's proxy, used by the registration thread only
        if by_value and settings.hmac_bytes is None:
            raise ConfigError("--allow-by-value runs code that callers send, so it needs a shared "
                              "secret: set PYRO_COMPUTE_HMAC_KEY or PYRO_COMPUTE_HMAC_KEY_FILE")
        check_reachable(settings)
        resolver = Resolver(settings.allowed_modules, script, by_value)
        self._busy = threading.Lock()
        self.evaluator = Evaluator(resolver, self.name, self._busy)
        if warm:  # else Numba loads on the first kernel call (kernels.py)
            kernels.warm_up()
        try:
            self.daemon = GuardedDaemon(host=settings.host, port=port, idle_timeout=settings.idle_timeout)
        except OSError as e:
            raise ConfigError(explain_bind(e, settings.host, port, "the worker")) from None
        self.daemon._pyroHmacKey = settings.hmac_bytes
        self.uri = self.daemon.register(self.evaluator, objectId=self.name)
        self.metadata = {"pyro_compute.evaluator", f"kernels:{','.join(KERNELS)}",
                         f"cores:{os.cpu_count() or 1}", f"host:{socket.gethostname()}",
                         f"version:{__version__}"}
        self.registered = threading.Event()  # set once the name server maps our name to us
        self._last_problem = ("", 0.0)
        self._registrar = threading.Thread(target=self._keep_registered, name="registrar", daemon=True)

    def serve(self) -> None:
        """Register, then serve until ``stop()``; unregister and close on the way out."""
        self._registrar.start()
        log.info("worker %s serving at %s", self.name, self.uri)
        try:
            self.daemon.requestLoop(loopCondition=lambda: not self._stopping)
        finally:
            self._stopping = True
            self._stop.set()
            self.daemon.transportServer.stop_listening()
            self._registrar.join(timeout=2 * NS_TIMEOUT)
            self._unregister()
            self._drain(min(self.settings.call_timeout, 30.0))
            self.daemon.close()
            log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        """Ask the request loop to finish; sets a flag and wakes the loop, so safe in (nested) signal handlers."""
        self._stopping = True
        # The loop would notice within its 0.2 s tick; the wake-up byte (no lock taken) ends it now.
        server = getattr(self.daemon, "transportServer", None)  # None once the daemon is closed
        if server is not None:
            server.wakeup()

    def _drain(self, timeout: float) -> None:
        """Let a running batch finish, and its reply go out, so its pool gets the result instead of retrying it."""
        deadline = time.monotonic() + timeout
        if self._busy.acquire(timeout=timeout):
            self._busy.release()
        else:
            log.warning("worker %s stops with a batch still running; its pool will retry it", self.name)
            return
        # The run lock is free before the reply is written: wait for that too before closing.
        if not self.daemon.transportServer.wait_quiet(max(0.0, deadline - time.monotonic())):
            log.warning("worker %s stops while a reply is still being sent", self.name)

    def _keep_registered(self) -> None:
        """Hold our name: retry (saying why) until it is ours, then check it now and then."""
        wait = STARTUP_RETRY
        try:
            while not self._stopping:
                if self._hold():
                    wait = self.settings.discovery_interval
                else:
                    wait = min(wait * 2, self.settings.discovery_interval)
                if self._stop.wait(wait):
                    return
        finally:
            self._forget_name_server()

    def _hold(self) -> bool:
        """One round: make the name server map our name to us unless a live worker holds it."""
        try:
            ns = self._name_server()
            current = ns.list(prefix=self.name).get(self.name)
            if current == str(self.uri):
                return True
            if current and not self._take_over(ns, current):
                return False
            ns.register(self.name, self.uri, safe=True, metadata=self.metadata)
        except Pyro4.errors.NamingError as e:
            if "already registered" in str(e):  # another worker took it between our list and register
                return False
            self._problem(f"cannot register {self.name}: " + explain(e, self.settings.ns, "the name server"))
            return False
        except Pyro4.errors.PyroError as e:
            self._forget_name_server()
            self._problem(f"cannot register {self.name}: " + explain(e, self.settings.ns, "the name server")
                          + "; retrying")
            return False
        self._registered_now()
        return True

    def _name_server(self) -> Any:
        """The name server's proxy, kept between rounds: a new connection every round for every
        worker costs the name server a handshake per worker per discovery interval."""
        if self._ns is not None:
            try:
                self._ns.ping()  # a name server restarted meanwhile closed the connection
                return self._ns
            except Pyro4.errors.CommunicationError:
                self._forget_name_server()
        self._ns = locate_ns(self.settings)
        return self._ns

    def _forget_name_server(self) -> None:
        if self._ns is not None:
            self._ns._pyroRelease()
            self._ns = None

    def _take_over(self, ns: Any, current: str) -> bool:
        """Free the name from a dead holder; False (said loudly) while a live worker holds it."""
        if peer_alive(current, self.settings.hmac_bytes):
            self._problem(f"the name {self.name} is held by another live worker at {current}; this "
                          f"worker ({self.uri}) serves unregistered and takes the name only when that "
                          "one is gone. Give each worker its own --name.", level=logging.ERROR)
            return False
        if ns.list(prefix=self.name).get(self.name) == current:  # still the dead one: remove it
            ns.remove(self.name)
        log.warning("the name %s points to %s, which does not answer; this worker (%s) takes the name",
                    self.name, current, self.uri)
        return True

    def _problem(self, text: str, level: int = logging.WARNING) -> None:
        """Log a registration problem when it is new, and again only every REPEAT_AFTER seconds."""
        last, when = self._last_problem
        now = time.monotonic()
        if text != last or now - when > REPEAT_AFTER:
            log.log(level, "%s", text)
            self._last_problem = (text, now)

    def _registered_now(self) -> None:
        again = self.registered.is_set()
        self.registered.set()
        self._last_problem = ("", 0.0)
        log.info("registered %s in the name server at %s%s", self.name, self.settings.ns,
                 " again" if again else "")

    def _unregister(self) -> None:
        try:
            with locate_ns(self.settings) as ns:
                if ns.list(prefix=self.name).get(self.name) == str(self.uri):
                    ns.remove(self.name)
        except Pyro4.errors.PyroError as e:
            log.warning("cannot unregister %s: %s", self.name, explain(e, self.settings.ns, "the name server"))


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
    p.add_argument("--lazy-kernels", action="store_true",
                   help="load Numba and the kernels on the first kernel call instead of before "
                        "serving: starts 0.3 s sooner, but with -n N each worker loads its own copy")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    # LocalCluster's: fork -n workers that are not restarted, report them on this pipe (forkserver.py).
    p.add_argument("--status-fd", type=int, default=-1, help=argparse.SUPPRESS)
    lifeline.add_argument(p)
    from .supervisor import add_workers_argument  # here: supervisor imports this module
    add_workers_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; return the exit status (130 after Ctrl-C while starting)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("compute-worker: interrupted", file=sys.stderr)
        return 130
    except (ComputeError, OSError) as e:
        print(f"compute-worker: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Check the settings, then serve one worker or supervise ``-n`` forked ones."""
    from . import slurm, supervisor
    modules = ",".join(filter(None, [os.environ.get("PYRO_COMPUTE_ALLOW_MODULES", ""), *args.allow_module]))
    slurm.apply_environment(args)  # under srun: name, name server, address and -n from Slurm
    settings = Settings.from_env(ns=args.ns, host=args.host, hmac_key_file=args.hmac_key_file,
                                 allow_modules=modules or None)
    require_secret(settings, args.insecure, "compute-worker", settings.host)
    check_reachable(settings)
    configure_pyro(settings)
    if args.status_fd >= 0:
        from .forkserver import serve_for_cluster
        serve_for_cluster(settings, args.workers or 1, args.name, args.script, args.allow_by_value,
                          args.status_fd, warm=not args.lazy_kernels, lifeline=args.lifeline_fd)
    if (args.workers or 1) > 1:
        return supervisor.serve_many(settings, args.workers, name=args.name, port=args.port,
                                     script=args.script, by_value=args.allow_by_value,
                                     warm=not args.lazy_kernels, lifeline=args.lifeline_fd)
    worker = Worker(settings, name=args.name, port=args.port, script=args.script,
                    by_value=args.allow_by_value, warm=not args.lazy_kernels)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    lifeline.watch(args.lifeline_fd, worker.stop, "worker")
    print(f"ready {worker.name} {worker.uri}", flush=True)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
