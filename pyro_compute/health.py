"""Health: follow the name server, probe workers whose calls run long, revive those that answer.

Two threads per pool: ``pool-discovery`` scans the name server every ``discovery_interval``;
``pool-health`` ticks every TICK seconds. A worker whose call has run for more than HUNG_AFTER
is probed with a fresh handshake (again every ``discovery_interval``); no answer within
``probe_timeout`` marks it down and requeues its chunks. Down workers are probed every
``discovery_interval`` and used again when they answer (resumed, or restarted on the same
port). ``pool-health`` is not a daemon thread: the interpreter does not exit while tasks are
queued or running, which is what the stdlib executors guarantee with a private atexit hook.
"""
from __future__ import annotations

import logging
import threading
import time

import Pyro4
import Pyro4.constants
import Pyro4.errors

from .config import NAME_PREFIX, Settings
from .errors import WorkerUnavailableError
from .diagnose import explain
from .links import ANSWERS, DOWN, OK, PIPELINE_SECONDS, RETIRED, SILENT, Link, new_proxy, probe
from .scheduler import Scheduler

log = logging.getLogger(__name__)

TICK = 0.05        # seconds between health checks
HUNG_AFTER = 1.0   # a call is overdue this long after it started, at the earliest


def scan(settings: Settings) -> dict[str, str]:
    """Worker names and URIs registered in the name server, waiting at most ``ns_timeout``.

    Raises:
        WorkerUnavailableError: the name server did not answer in time or refused us.
    """
    host, port = settings.ns_address
    host = f"[{host}]" if ":" in host else host
    uri = f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{host}:{port}"
    try:
        with new_proxy(uri, "serpent", settings, settings.ns_timeout) as ns:
            return dict(ns.list(prefix=NAME_PREFIX))
    except Pyro4.errors.PyroError as e:
        raise WorkerUnavailableError(f"cannot reach the name server: {explain(e, settings.ns, 'the name server')} "
                                     f"(waited at most {settings.ns_timeout:g} s)") from e


class Health:
    """The discovery and health threads of one scheduler."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.settings = sched.settings
        self.no_worker_since: float | None = None
        self.discovery = threading.Thread(target=self.discover, name="pool-discovery", daemon=True)
        self.watcher = threading.Thread(target=self.watch, name="pool-health", daemon=False)

    def start(self) -> None:
        """Scan once (fails fast on a wrong address), then start both threads."""
        self.update_links(scan(self.settings))
        self.discovery.start()
        self.watcher.start()

    def join(self, timeout: float) -> None:
        """Wait for both threads to exit (after the scheduler is over)."""
        for t in (self.discovery, self.watcher):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout)

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> None:
        """Follow the name server: add new workers, retire unregistered ones."""
        while not self.sched.over.wait(self.settings.discovery_interval):
            try:
                self.update_links(scan(self.settings))
            except WorkerUnavailableError as e:
                log.warning("%s; keeping the %d workers already known", e, len(self.sched.usable()))

    def update_links(self, names: dict[str, str]) -> None:
        """Retire links whose name left or moved; add links for new names or new URIs."""
        sched = self.sched
        with sched.lock:
            if sched.over.is_set():
                return
            for name, link in list(sched.links.items()):
                if names.get(name) != link.uri:
                    del sched.links[name]
                    sched.set_state(link, RETIRED)
            for name, uri in names.items():
                if name not in sched.links:
                    sched.add_link(name, uri)
            sched.wake_idle()

    # -- health ----------------------------------------------------------------------------

    def watch(self) -> None:
        """Tick until the scheduler is over, or the interpreter exits with nothing left to run."""
        sched = self.sched
        while not sched.over.wait(TICK):
            with sched.lock:
                if not threading.main_thread().is_alive() and not sched.outstanding():
                    return  # interpreter shutdown: the pool was never shut down, nothing is lost
                now = time.monotonic()
                for link in list(sched.links.values()):
                    self.check(link, now)
                self.check_starved(now)
            sched.flush()

    def check(self, link: Link, now: float) -> None:
        """Probe an overdue or down worker; duplicate a chunk stuck behind an overrun call."""
        if link.probing:
            return
        if link.state == DOWN and now - link.last_probe >= self.settings.discovery_interval:
            self.start_probe(link)
        if link.state != OK or not link.calls:
            return
        calls = list(link.calls.values())
        if len(calls) > 1:
            calls.sort(key=lambda c: c.started)
        running = calls[0]
        late = now - running.started
        # Busy workers answer a probe at once, so probing every running call past HUNG_AFTER
        # costs a handshake now and then and finds a stopped worker within seconds.
        if late > HUNG_AFTER and now - link.last_probe >= self.settings.discovery_interval:
            self.start_probe(link)
        for queued in calls[1:]:
            # Pipelined behind a call that turned out long: let an idle worker run it too.
            if not queued.chunk.duplicated and late > (running.expected or 0.0) + PIPELINE_SECONDS:
                queued.chunk.duplicated = True
                self.sched.requeue(queued.chunk)
                self.sched.wake_idle()

    def start_probe(self, link: Link) -> None:
        link.probing = True
        threading.Thread(target=self.probe, args=(link,), name=f"pool-probe-{link.name}",
                         daemon=True).start()

    def probe(self, link: Link) -> None:
        """Probe one worker: down and answering -> used again; up and silent -> given up on."""
        found = probe(link.uri, self.settings)
        with self.sched.lock:
            link.probing = False
            link.last_probe = time.monotonic()
            if found == ANSWERS and link.state == DOWN:
                log.warning("worker %s answers again; using it", link.name)
                self.sched.set_state(link, OK)
            # REFUSED: a worker draining on SIGTERM still sends its running calls' results back,
            # and a dead one's connections fail by themselves: only silence means hung.
            elif found == SILENT and link.state == OK and link.calls:
                self.sched.give_up_on(link, f"did not answer a handshake within "
                                            f"{self.settings.probe_timeout:g} s while a call was overdue")

    def check_starved(self, now: float) -> None:
        """Fail queued work once no worker has been usable for ``worker_wait`` seconds."""
        sched = self.sched
        if sched.ok or not sched.outstanding() or not sched.pending:
            self.no_worker_since = None
            return
        self.no_worker_since = self.no_worker_since or now
        if now - self.no_worker_since < self.settings.worker_wait:
            return
        silent = ", ".join(sorted(sched.links)) or "none is registered"
        sched.fail_pending(WorkerUnavailableError(
            f"no worker was reachable through {self.settings.ns} for "
            f"{self.settings.worker_wait:.0f} s (not answering: {silent}); start workers with "
            f"'compute-worker --ns {self.settings.ns}' or check that they are not stopped"))
        self.no_worker_since = None
