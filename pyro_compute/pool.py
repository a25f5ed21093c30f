"""Pool: a concurrent.futures.Executor that fans tasks out over every registered worker.

Data flow::

    submit/map ──► Chunk (task ref, argument tuples, seeds, Future)
                     │  Feeder thread per map call: reads the input lazily,
                     │  sizes chunks from measured task times, bounds chunks in flight
                     ▼
               pending deque ◄── failed chunks go back in front (worker lost)
                     │
       ┌─────────────┼──────────────┐   one _Link per worker found in the name server,
       ▼             ▼              ▼   SLOTS dispatcher threads per link, each with its own proxy
   dispatcher    dispatcher     dispatcher ── Evaluator.batch() over Pyro4 (serpent, HMAC)
       │             │              │
       └─────► chunk.resolve(results, errors) ──► Future ──► map / map_as_completed / map_reduce
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import marshal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar, cast

import Pyro4
import Pyro4.errors
from tqdm.auto import tqdm

from .chunk import Chunk, items, with_remote_cause
from .config import NAME_PREFIX, Settings
from .errors import WorkerUnavailableError
from .feeder import Feeder
from .references import by_value_needed, reference_of
from .wire import from_serpent, is_plain, plain_rows, register_wire

log = logging.getLogger(__name__)
T = TypeVar("T")

SLOTS = 2              # calls in flight per worker, so none idles while a result travels back
TARGET_SECONDS = 0.02  # work carried by one RMI call once task times are known
MAX_CHUNK = 4096
CHUNKS_PER_SLOT = 4    # chunks in flight per dispatcher for streaming map calls
PROBE_TIMEOUT = 2.0    # seconds a worker that hung up has to prove it is alive


class _Link:
    """A worker the pool knows: its name, URI and whether it may still take work."""

    def __init__(self, name: str, uri: str) -> None:
        self.name, self.uri = name, uri
        self.dead = False
        self.leaving = False
        self.threads: list[threading.Thread] = []


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

    Raises:
        WorkerUnavailableError: the name server cannot be reached.
    """

    def __init__(self, ns: str | None = None, *, cluster: Any = None, settings: Settings | None = None,
                 seed: int | None = None, by_value: bool = False) -> None:
        base = settings or (cluster.settings if cluster is not None else Settings.from_env())
        self.settings = dataclasses.replace(base, ns=ns or base.ns)
        register_wire()
        self.seed = seed
        self.by_value = by_value
        self._code: dict[Any, bytes] = {}
        self._calls = itertools.count()
        self._cond = threading.Condition()
        self._closed = threading.Event()  # wakes the discovery thread on shutdown
        self._pending: collections.deque[Chunk] = collections.deque()
        self._links: dict[str, _Link] = {}
        self._dead_uris: set[str] = set()
        self._per_item: dict[str, float] = {}
        self._busy = 0
        self._shutdown = False
        self._no_worker_since: float | None = None
        self._update_links(self._scan())  # fails fast on a wrong address
        self._discovery = threading.Thread(target=self._discover, name="pool-discovery", daemon=True)
        self._discovery.start()

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
        self._enqueue([chunk])
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
        feeder = self._feed(fn, iterables, chunksize, seed, ordered=True)
        return self._results(feeder, timeout, progress)

    def map_as_completed(self, fn: Callable[..., T] | str, *iterables: Iterable[Any],
                         timeout: float | None = None, chunksize: int | None = None,
                         seed: int | None = None, progress: bool = False) -> Iterator[T]:
        """Like ``map`` but yields each result as soon as it is ready, in completion order."""
        feeder = self._feed(fn, iterables, chunksize, seed, ordered=False)
        return self._results(feeder, timeout, progress)

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
        """Stop accepting work, optionally cancel pending tasks, then stop the dispatchers.

        It is safe to call this method several times.
        """
        self._closed.set()
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft().future.cancel()
            self._cond.notify_all()
        if wait:
            with self._cond:
                self._cond.wait_for(lambda: not self._pending and not self._busy)
            for link in list(self._links.values()):
                for t in link.threads:
                    t.join(timeout=5)
            self._discovery.join(timeout=5)

    @property
    def workers(self) -> list[str]:
        """Names of the workers currently taking work."""
        with self._cond:
            return [n for n, link in self._links.items() if not (link.dead or link.leaving)]

    # -- scheduling -------------------------------------------------------------------------

    def _task_of(self, fn: Callable[..., Any] | str) -> tuple[str, bytes | None]:
        """How ``fn`` travels: a reference, or (by_value pools) cloudpickled bytes."""
        if not (self.by_value and by_value_needed(fn)):
            return reference_of(fn), None
        code = self._code.get(fn)
        if code is None:
            import cloudpickle  # only by-value pools need it
            code = self._code[fn] = cloudpickle.dumps(fn)
        return f"by-value:{getattr(fn, '__qualname__', fn)}", code

    def _enqueue(self, chunks: list[Chunk]) -> None:
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new tasks after the pool was shut down")
            self._pending.extend(chunks)
            self._cond.notify(len(chunks))

    def _chunk_size(self, task: str, remaining: int | None) -> int:
        """Tasks per call: TARGET_SECONDS of measured work; 1 while unmeasured.

        With a known number of ``remaining`` tasks, chunks shrink towards the end (guided
        scheduling) so that no worker is left with a long chunk while the others idle.
        """
        per_item = self._per_item.get(task)
        if per_item is None:
            return 1
        size = min(MAX_CHUNK, int(TARGET_SECONDS / max(per_item, 1e-9)))
        if remaining is not None:
            size = min(size, -(-remaining // (2 * SLOTS * max(1, len(self.workers)))))
        return max(1, size)

    def _record(self, task: str, seconds: float, items: int) -> None:
        sample = seconds / items
        old = self._per_item.get(task)
        self._per_item[task] = sample if old is None else 0.7 * old + 0.3 * sample

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
        feeder = Feeder(task, zip(*iterables), total=total,
                        size=lambda remaining: chunksize or self._chunk_size(task[0], remaining),
                        submit=lambda chunk: self._enqueue([chunk]), seed=seed, key=key, ordered=ordered,
                        in_flight=max(8, CHUNKS_PER_SLOT * SLOTS * len(self.workers)))
        feeder.start()
        return feeder

    def _results(self, feeder: Feeder, timeout: float | None, progress: bool) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(disable=not progress, unit="task", dynamic_ncols=True)
        try:
            for chunk in feeder.chunks(deadline):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                results, errors = chunk.future.result(remaining)
                feeder.release()
                bar.update(len(results))
                yield from items(results, errors)
        finally:
            feeder.stop()
            bar.close()

    def _next_chunk(self, link: _Link) -> Chunk | None:
        """Block until there is work for ``link``; None when it should stop."""
        with self._cond:
            while True:
                if link.dead or link.leaving or (self._shutdown and not self._pending):
                    return None
                if self._pending:
                    chunk = self._pending.popleft()
                    # A chunk handed back by a lost worker is running already.
                    if chunk.future.running() or chunk.future.set_running_or_notify_cancel():
                        self._busy += 1
                        return chunk
                    if self._shutdown:
                        self._cond.notify_all()  # a cancelled chunk may have been the last one
                    continue
                self._cond.wait()

    def _finished(self, chunk: Chunk, link: _Link, lost: BaseException | None) -> None:
        """Account for a chunk; requeue it in front if its worker was lost."""
        with self._cond:
            self._busy -= 1
            if lost is not None:
                link.dead = True
                self._dead_uris.add(link.uri)
                chunk.tried.append(link.name)
                if len(chunk.tried) < self.settings.max_retries:
                    self._pending.appendleft(chunk)
                else:
                    chunk.future.set_exception(WorkerUnavailableError(
                        f"task {chunk.task} (chunk of {len(chunk.args)}) failed on "
                        f"{len(chunk.tried)} workers, which were lost: {', '.join(chunk.tried)}; "
                        f"last error: {lost}"))
            # Waking every dispatcher per chunk costs the caller GIL time: only when it matters.
            if lost is not None or (self._shutdown and not self._pending and not self._busy):
                self._cond.notify_all()

    def _dispatch(self, link: _Link) -> None:
        """One dispatcher: its own proxies, one call at a time, until the link stops.

        Plain-data chunks travel with marshal (C speed); anything else with serpent.
        """
        proxies: dict[str, Pyro4.Proxy] = {}
        try:
            while (chunk := self._next_chunk(link)) is not None:
                packed = plain_rows(chunk.args) and is_plain(chunk.kwargs)
                kind = "marshal" if packed else "serpent"
                if kind not in proxies:
                    proxies[kind] = self._proxy(link.uri, kind)
                lost = self._call(proxies[kind], chunk, link, packed)
                if lost is not None:
                    log.warning("worker %s lost: %s", link.name, lost)
                self._finished(chunk, link, lost)
        finally:
            for proxy in proxies.values():
                proxy._pyroRelease()

    def _proxy(self, uri: str, serializer: str) -> Pyro4.Proxy:
        proxy = Pyro4.Proxy(uri)
        proxy._pyroSerializer = serializer
        proxy._pyroHmacKey = self.settings.hmac_bytes
        proxy._pyroTimeout = self.settings.call_timeout
        return proxy

    def _call(self, proxy: Pyro4.Proxy, chunk: Chunk, link: _Link, packed: bool) -> BaseException | None:
        """Run one chunk; return the communication error if the worker was lost."""
        try:
            args = marshal.dumps(chunk.args) if packed else chunk.args
            reply = proxy.batch(chunk.task, args, chunk.kwargs, chunk.seeds, chunk.code)
            if "packed" in reply:
                reply["results"] = marshal.loads(reply["packed"])
            elif "serpent" in reply:
                reply["results"] = from_serpent(reply["serpent"])
        except (Pyro4.errors.SerializeError, Pyro4.errors.MessageTooLargeError) as e:
            chunk.future.set_exception(e)
        except Pyro4.errors.ConnectionClosedError as e:
            if not self._answers(link.uri):
                return cast(BaseException, e)
            # Alive but hung up on this call: Pyro4 does that to a message over its size limit.
            chunk.future.set_exception(Pyro4.errors.MessageTooLargeError(
                f"worker {link.name} closed the connection on task {chunk.task} but still answers: "
                "the call or its result is probably larger than the workers' message size limit "
                f"(PYRO_COMPUTE_MAX_MESSAGE_SIZE, {self.settings.max_message_size} bytes here)"))
        except Pyro4.errors.CommunicationError as e:
            return cast(BaseException, e)
        except Exception as e:  # the Evaluator rejected the whole call: the caller's error
            chunk.future.set_exception(with_remote_cause(e))
        else:
            self._record(chunk.task, reply["seconds"], len(chunk.args))
            chunk.resolve(reply["results"], reply["errors"])
        return None

    def _answers(self, uri: str) -> bool:
        """Whether a worker completes a fresh handshake within PROBE_TIMEOUT."""
        try:
            with self._proxy(uri, "serpent") as probe:
                probe._pyroTimeout = PROBE_TIMEOUT
                probe._pyroBind()
            return True
        except Pyro4.errors.CommunicationError:
            return False

    # -- discovery --------------------------------------------------------------------------

    def _scan(self) -> dict[str, str]:
        host, port = self.settings.ns_address
        try:
            with Pyro4.locateNS(host, port, hmac_key=self.settings.hmac_bytes) as ns:
                return dict(ns.list(prefix=NAME_PREFIX))
        except Pyro4.errors.PyroError as e:
            raise WorkerUnavailableError(
                f"cannot reach the name server at {self.settings.ns}: {e}. Start one "
                "(nameserver/run-ns) or pass the right --ns / PYRO_COMPUTE_NS and secret") from e

    def _update_links(self, names: dict[str, str]) -> None:
        with self._cond:
            if self._shutdown:
                return
            for name, link in self._links.items():
                if names.get(name) != link.uri:
                    link.leaving = True
            for name, uri in names.items():
                known = self._links.get(name)
                if uri in self._dead_uris or (known is not None and known.uri == uri
                                              and not (known.dead or known.leaving)):
                    continue
                self._links[name] = link = _Link(name, uri)
                for slot in range(SLOTS):
                    t = threading.Thread(target=self._dispatch, args=(link,), daemon=True,
                                         name=f"dispatch-{name}-{slot}")
                    link.threads.append(t)
                    t.start()
            self._cond.notify_all()

    def _discover(self) -> None:
        """Follow the name server: add new workers, retire unregistered ones, fail on none."""
        while True:
            if self._closed.wait(self.settings.discovery_interval):
                return
            try:
                self._update_links(self._scan())
            except WorkerUnavailableError as e:
                log.warning("%s; keeping the %d workers already known", e, len(self.workers))
            self._check_starved()

    def _check_starved(self) -> None:
        with self._cond:
            if self.workers or not self._pending:
                self._no_worker_since = None
                return
            now = time.monotonic()
            self._no_worker_since = self._no_worker_since or now
            if now - self._no_worker_since < self.settings.worker_wait:
                return
            error = WorkerUnavailableError(
                f"no worker was reachable through {self.settings.ns} for "
                f"{self.settings.worker_wait:.0f} s; start workers with 'compute-worker --ns "
                f"{self.settings.ns}'")
            while self._pending:
                chunk = self._pending.popleft()
                if chunk.future.running() or chunk.future.set_running_or_notify_cancel():
                    chunk.future.set_exception(error)
            self._cond.notify_all()
