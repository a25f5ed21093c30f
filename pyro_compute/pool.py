"""Pool: a concurrent.futures.Executor that fans tasks out over every registered worker.

Data flow::

    submit/map ──► Chunk (task ref, argument tuples, seeds, Future)
                     │  Feeder thread per map call: reads the input lazily,
                     │  sizes chunks from measured task times, bounds chunks in flight
                     ▼
               pending deque ◄── chunks of lost or hung workers go back in front (scheduler.py)
                     │            a chunk is taken only by a dispatcher whose worker is free
       ┌─────────────┼──────────────┐   one Link per worker found in the name server,
       ▼             ▼              ▼   SLOTS dispatcher threads per link, each with its own proxy
   dispatcher    dispatcher     dispatcher ── Evaluator.batch() over Pyro4 (binary.py, HMAC):
       │             │              │         marshal for the structure, arrays as raw bytes,
       │             │              │         big ones as MAC'd parts after the message (bulk.py);
       │             │              │         broadcast values once per worker (broadcast.py)
       │             │              │         health.py: probes overdue workers, revives them
       └─────► chunk.resolve(results, errors) ──► Future ──► map / map_as_completed / map_reduce
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import sys
import threading
import time
import types
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import Pyro4.errors
from tqdm.auto import tqdm

from .broadcast import Broadcast
from .chunk import Chunk, items
from .config import Settings
from .dashboard_state import DashboardRun
from .errors import ConfigError
from .feeder import Feeder
from .health import Health
from .links import new_proxy
from .references import SCRIPT_MODULE, by_value_needed, reference_of
from .scheduler import Scheduler
from .wire import foreign, register_wire

T = TypeVar("T")
REFS_KEPT = 256  # top-level functions whose references a pool remembers
log = logging.getLogger(__name__)


class Pool(concurrent.futures.Executor):
    """Run tasks on the compute workers registered in a Pyro4 name server.

    A task is an Evaluator kernel by name (``"pi_hits"``) or a module-level function sent by
    reference (module and qualified name) that the worker imports from its allow-list.

    Args:
        ns: name server ``HOST:PORT``; default from ``settings``, ``cluster`` or ``PYRO_COMPUTE_NS``.
        cluster: a LocalCluster (anything with ``.settings``) to connect to.
        settings: explicit settings; overrides the environment.
        seed: pool-level seed; each map call then draws its own child seeds from it.
        by_value: send lambdas, nested functions and functions defined in ``__main__`` (a notebook)
            by value with cloudpickle; workers must run with ``--allow-by-value`` and a secret.
        show_output: print here what tasks print (stdout, stderr, logging), each line prefixed
            by its worker, as SCOOP does; the launcher and ``futures`` turn it on.
        dashboard: True serves this pool's own live page (task stream, tasks queued, running and
            done) on 127.0.0.1 at a free port until ``shutdown()``; its address is in
            ``dashboard_url``, the run in ``dashboard_run``. A DashboardRun is reported to
            without serving it. A URL (``"http://127.0.0.1:8787"``) reports to the
            ``pyro-compute dashboard`` there, from a background thread, until ``shutdown()``.

    Raises:
        WorkerUnavailableError: the name server cannot be reached or does not answer within
            ``settings.ns_timeout``.
    """

    def __init__(self, ns: str | None = None, *, cluster: Any = None, settings: Settings | None = None,
                 seed: int | None = None, by_value: bool = False, show_output: bool = False,
                 dashboard: bool | str | DashboardRun = False) -> None:
        base = settings or (cluster.settings if cluster is not None else Settings.from_env())
        self.settings = dataclasses.replace(base, ns=ns or base.ns)
        register_wire()
        self.seed = seed
        self.by_value = by_value
        # Weak keys: a lambda sent by value is forgotten with the caller's last reference to it.
        self._code: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
        self._calls = itertools.count()
        # Top-level functions sent by reference, with their module's namespace: checked there on
        # each submit (one lookup) instead of walking the module again.
        self._refs: dict[Callable[..., Any], tuple[tuple[str, bytes | None], dict[str, Any]]] = {}
        self._broadcasts: weakref.WeakSet[Broadcast] = weakref.WeakSet()  # released at shutdown
        self._scheduler = Scheduler(self.settings)
        self._scheduler.by_value = by_value
        self._scheduler.show_output = show_output
        self._health = Health(self._scheduler)
        self._health.start()  # fails fast on a wrong or hung name server
        # A pool dropped without shutdown() still stops its threads once its work is done.
        self._finalizer = weakref.finalize(self, self._scheduler.shutdown, False, False)
        self.dashboard_url: str | None = None
        self.dashboard_run: DashboardRun | None = None  # what this pool reports to
        self._dashboard: Callable[[], Any] | None = None  # a weakref.finalize
        if isinstance(dashboard, str):
            self._report_to(dashboard)
        elif dashboard is not False:
            self._attach(DashboardRun("pool") if dashboard is True else dashboard, serve=dashboard is True)

    # -- public API -------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T] | str, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on some worker.

        Returns:
            A Future that resolves to the result or the task's (rebuilt) exception.

        Raises:
            RuntimeError: the pool was shut down.
            TypeError: fn cannot be sent by reference.
        """
        chunk = Chunk(self._task_of(fn), [args], kwargs or None, None, single=True)
        self._scheduler.submit(chunk)
        return chunk.future

    def map(self, fn: Callable[..., T] | str, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, seed: int | None = None,
            progress: bool = False) -> Iterator[T]:
        """Like built-in ``map`` run on the workers: results in input order, input read lazily.

        Args:
            fn: kernel name or module-level function.
            iterables: argument iterables, zipped; may be endless generators.
            timeout: seconds from this call after which waiting for a result raises TimeoutError.
            chunksize: tasks per RMI call; default chosen from measured task times.
            seed: task ``i`` gets keyword ``seed`` = child ``i`` of ``SeedSequence(seed)``.
            progress: show a tqdm progress bar.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        feeder = self._feed(fn, iterables, chunksize, seed, ordered=True)
        return self._results(feeder, deadline, progress)

    def map_as_completed(self, fn: Callable[..., T] | str, *iterables: Iterable[Any],
                         timeout: float | None = None, chunksize: int | None = None,
                         seed: int | None = None, progress: bool = False) -> Iterator[T]:
        """Like ``map`` but yields each result as soon as it is ready, in completion order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        feeder = self._feed(fn, iterables, chunksize, seed, ordered=False)
        return self._results(feeder, deadline, progress)

    def map_reduce(self, fn: Callable[..., Any] | str, reduction: Callable[[Any, Any], T],
                   *iterables: Iterable[Any], timeout: float | None = None,
                   chunksize: int | None = None, seed: int | None = None,
                   progress: bool = False) -> T:
        """Fold ``fn``'s results with ``reduction`` as they arrive and return the total.

        Raises:
            TypeError: the input was empty.
        """
        results = self.map_as_completed(fn, *iterables, timeout=timeout, chunksize=chunksize,
                                        seed=seed, progress=progress)
        total: T = functools.reduce(reduction, results)
        return total

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work, optionally cancel queued tasks, optionally wait for the rest.

        Maps started before keep reading their input and deliver every result. It is safe to
        call this method several times.
        """
        self._scheduler.shutdown(wait, cancel_futures)
        if wait and self._scheduler.over.is_set():  # else a map started before still runs
            self._health.join(timeout=5)
        if wait:
            self._release_broadcasts()
        elif self._broadcasts and not self._scheduler.over.is_set():
            threading.Thread(target=self._release_broadcasts, args=(self._scheduler.over,),
                             name="pool-release", daemon=True).start()
        else:
            self._release_broadcasts()
        if self._dashboard is not None:
            self._dashboard()  # closes the page's server once

    def broadcast(self, value: Any) -> Broadcast:
        """Send ``value`` once to each worker that runs a task taking the returned handle.

        Pass the handle as a task argument (``pool.map(f, xs, [h] * len(xs))`` or
        ``pool.submit(f, h)``): the task receives the value. A worker gets the value with its first
        call that needs it (arrays as raw bytes, in parts when big) and keeps it until
        ``handle.release()``, the end of ``with pool.broadcast(x) as h:`` or this pool's shutdown.

        Raises:
            TypeError: the value holds something the wire cannot carry.
        """
        if foreign(value):
            raise TypeError(f"{type(value).__name__} values cannot be broadcast: send plain data "
                            "(numbers, strings, lists, tuples, dicts) or numpy arrays")
        handle = Broadcast(value, functools.partial(_release_on_workers, self.settings))
        self._broadcasts.add(handle)
        return handle

    def _release_broadcasts(self, after: threading.Event | None = None) -> None:
        """Release this pool's broadcast values on the workers (once its work is over, if ``after``)."""
        if after is not None:
            after.wait()
        for handle in list(self._broadcasts):
            handle.release()

    @property
    def workers(self) -> list[str]:
        """Names of the workers currently taking work."""
        with self._scheduler.lock:
            return self._scheduler.usable()

    # -- scheduling -------------------------------------------------------------------------

    def _attach(self, run: DashboardRun, serve: bool) -> None:
        """Report every finished call to ``run``; with ``serve``, also serve its page until shutdown."""
        if not isinstance(run, DashboardRun):
            raise TypeError(f"dashboard must be True, False or a DashboardRun, not {type(run).__name__}")
        self._scheduler.reporter = self.dashboard_run = run
        if not serve:
            return
        from .dashboard import serve_for_run  # only pools that serve a page need the HTTP server
        try:
            server = serve_for_run(self.settings, run)
        except OSError:
            self._scheduler.shutdown(False, False)
            raise
        self._dashboard = weakref.finalize(self, _close_dashboard, server, run)
        self.dashboard_url = server.url
        log.info("pool dashboard at %s", server.url)
        print(f"pyro-compute dashboard: {server.url}", file=sys.stderr, flush=True)

    def _report_to(self, url: str) -> None:
        """Report every finished call to the dashboard at ``url`` (another process) until shutdown."""
        from .dashboard_client import RemoteRun  # only reporting pools need the HTTP client
        try:
            run = RemoteRun(url, self.settings).start()
        except ConfigError:
            self._scheduler.shutdown(False, False)
            raise
        self._scheduler.reporter = self.dashboard_run = run
        self._dashboard = weakref.finalize(self, run.close)  # sends the last reports, then stops
        self.dashboard_url = url

    def _task_of(self, fn: Callable[..., Any] | str) -> tuple[str, bytes | None]:
        """How ``fn`` travels: a reference, or (by_value pools) cloudpickled bytes."""
        known = self._refs.get(fn) if type(fn) is types.FunctionType else None
        if known is not None and known[1].get(fn.__name__) is fn:  # type: ignore[union-attr]
            return known[0]  # still what its module's top-level name is bound to
        task = self._find_task(fn)
        if type(fn) is types.FunctionType and fn.__qualname__ == fn.__name__ and task[1] is None \
                and fn.__module__ not in (SCRIPT_MODULE, "__main__") and fn.__module__ in sys.modules:
            if len(self._refs) >= REFS_KEPT:
                self._refs.clear()
            self._refs[fn] = (task, vars(sys.modules[fn.__module__]))
        return task

    def _find_task(self, fn: Callable[..., Any] | str) -> tuple[str, bytes | None]:
        """``_task_of`` without the cache."""
        ref = _script_reference(fn)
        if ref is not None:
            return ref, None
        if not (self.by_value and by_value_needed(fn)):
            return reference_of(fn), None
        try:
            code = self._code.get(fn)
        except TypeError:  # not weakly referenceable: pickled anew on every call
            code = None
        if code is None:
            import cloudpickle  # only by-value pools need it
            code = cloudpickle.dumps(fn)
            with contextlib.suppress(TypeError):  # not weakly referenceable: not cached
                self._code[fn] = code
        return f"by-value:{getattr(fn, '__qualname__', fn)}", code

    def _feed(self, fn: Callable[..., Any] | str, iterables: Sequence[Iterable[Any]],
              chunksize: int | None, seed: int | None, ordered: bool) -> Feeder:
        if not iterables:
            raise TypeError("map needs at least one iterable of arguments")
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        key: tuple[int, ...] = ()
        if seed is None and self.seed is not None:
            seed, key = self.seed, (next(self._calls),)
        try:
            total: int | None = min(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            total = None
        task = self._task_of(fn)
        flat = len(iterables) == 1  # one iterable: its items travel as they are, no 1-tuple per task
        args = iter(iterables[0]) if flat else zip(*iterables)
        sched = self._scheduler
        sched.feeder_started()
        feeder = Feeder(task, args, total=total, flat=flat,
                        size=lambda remaining: chunksize or sched.chunk_size(task[0], remaining),
                        submit=sched.enqueue, done=sched.feeder_stopped,
                        seed=seed, key=key, ordered=ordered, in_flight=sched.in_flight_bound())
        feeder.start()
        return feeder

    def _results(self, feeder: Feeder, deadline: float | None, progress: bool) -> Iterator[Any]:
        bar = tqdm(disable=not progress, unit="task", dynamic_ncols=True)
        try:
            for chunk in feeder.chunks(deadline):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                results, errors = chunk.future.result(remaining)
                feeder.release(chunk)
                del chunk  # nothing here keeps a consumed chunk's arguments alive
                bar.update(len(results))
                yield from items(results, errors)
        finally:
            feeder.stop()
            bar.close()


def _release_on_workers(settings: Settings, key: str, uris: list[str]) -> None:
    """Tell each worker at ``uris`` to forget broadcast ``key``; a worker that is gone holds nothing."""
    for uri in uris:
        try:
            with new_proxy(uri, "marshal", settings, settings.probe_timeout) as proxy:
                proxy.release_broadcast([key])
        except Pyro4.errors.PyroError as e:
            log.debug("releasing broadcast %s on %s: %s", key, uri, e)


def _close_dashboard(server: Any, run: DashboardRun) -> None:
    """Mark the run finished and stop serving its page."""
    run.finish()
    server.close()


def _script_reference(fn: Any) -> str | None:
    """Inside a worker, a top-level function of the launcher's script, named as its client names it."""
    if getattr(fn, "__module__", None) != SCRIPT_MODULE or "<" in getattr(fn, "__qualname__", "<"):
        return None
    module = sys.modules.get(SCRIPT_MODULE)
    if module is None or getattr(module, fn.__qualname__.split(".")[0], None) is None:
        return None
    options = {"script": module.__file__, "sha256": module.__dict__["__pyro_compute_sha256__"]}
    return f"__main__:{fn.__qualname__} {options!r}"
