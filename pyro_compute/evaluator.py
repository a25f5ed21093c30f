"""The remote object a worker hosts: validate arguments, run kernels and tasks, return plain data."""
from __future__ import annotations

import functools
import importlib.metadata
import itertools
import marshal
import os
import platform
import socket
import sys
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import Pyro4
import Pyro4.errors

from . import binary, broadcast, kernels, objects, store, taskctx
from .activity import Activity
from .errors import KernelError
from .references import Resolver
from .replies import error_entry, fail_unsendable, pack_plain, short_repr
from .serializers import plain
from .wire import sent_bytes, to_serpent

MAX_SAMPLES = 1 << 40
MAX_DIMS = 64
MAX_BATCH = 1_000_000
KERNELS = ("pi_hits", "integrate")
MARSHAL_ID = Pyro4.util.MarshalSerializer.serializer_id
PACKING_IDS = (MARSHAL_ID, binary.SERIALIZER_ID)  # serializers that carry marshal-packed args and results


def check_count(name: str, value: Any, maximum: int = MAX_SAMPLES, minimum: int = 0) -> int:
    """Return ``value`` as an int in [minimum, maximum] or raise a TypeError/KernelError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} {short_repr(value)}")
    if not minimum <= value <= maximum:
        raise KernelError(f"{name} must be between {minimum} and {maximum}, not {short_repr(value)}")
    return int(value)


def check_seed(seed: Any) -> np.uint64:
    """Return ``seed`` as a uint64, or raise if it is not an integer in [0, 2**64)."""
    return np.uint64(check_count("seed", seed, (1 << 64) - 1))


def _bounds(name: str, value: Any, dims: int) -> np.ndarray:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        value = [value] * dims
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != dims:
        raise TypeError(f"{name} must be a number or a list of {dims} numbers, not {short_repr(value)}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must contain only numbers, not {short_repr(value)}") from None
    if arr.shape != (dims,):  # nested lists would reach Numba and fail there with a TypingError
        raise TypeError(f"{name} must be a number or a flat list of {dims} numbers, not {short_repr(value)}")
    if not np.all(np.isfinite(arr)):
        raise KernelError(f"{name} must be finite, not {short_repr(value)}")
    return arr


@Pyro4.expose
@Pyro4.behavior(instance_mode="single")
class Evaluator:
    """Runs Monte Carlo kernels and allowed functions for remote callers; never dies of bad input."""

    def __init__(self, resolver: Resolver | None = None, name: str = "",
                 run_lock: threading.Lock | None = None, settings: Any = None) -> None:
        self.name = name
        self._resolver = resolver or Resolver()
        self._lock = threading.Lock()
        # One batch at a time: a worker is one core's worth of work; a pool's second call
        # in flight waits here instead of competing with the first.
        self._run_lock = run_lock or threading.Lock()
        self._started = time.time()
        self._tasks = self._samples = self._errors = 0
        self._busy = 0.0
        self._activity = Activity()
        store.install()  # broadcast values arrive with requests and stay until released
        # Tasks on this worker reach its cluster through futures without configuration.
        taskctx.install(taskctx.Host(name or f"pid{os.getpid()}", functools.partial(_worker_settings, settings),
                                     self._run_lock, self._run_inline, self._resolver.by_value,
                                     resolve=self._function))

    def pi_hits(self, samples: int, seed: int = 0) -> int:
        """Count hits of ``samples`` random points inside the quarter circle.

        Raises:
            TypeError, KernelError: samples or seed is not an integer in range.
        """
        n = check_count("samples", samples)
        with self._activity.busy():
            started = time.perf_counter()
            hits = int(kernels.pi_hits(n, check_seed(seed)))
            self._record(1, n, time.perf_counter() - started)
        return hits

    def integrate(self, integrand: str, samples: int, seed: int = 0, lower: Any = 0.0,
                  upper: Any = 1.0, dims: int = 1) -> dict[str, float]:
        """Sample ``integrand`` over the box [lower, upper]; return ``{n, sum, sumsq}``.

        Raises:
            TypeError, KernelError: unknown integrand or bad samples, seed, bounds or dims.
        """
        if integrand not in kernels.INTEGRANDS:
            raise KernelError(f"unknown integrand {integrand!r}; choose one of "
                              + ", ".join(kernels.INTEGRANDS))
        d = check_count("dims", dims, MAX_DIMS, 1)
        lo, hi = _bounds("lower", lower, d), _bounds("upper", upper, d)
        if not np.all(hi > lo):
            raise KernelError("every upper bound must be greater than its lower bound")
        with np.errstate(over="ignore"):
            volume = np.prod(hi - lo)
        if not np.isfinite(volume):
            raise KernelError("the box between lower and upper is too large: its volume overflows a "
                              "float, so every sample would be inf or nan; integrate over a smaller box")
        n = check_count("samples", samples)
        with self._activity.busy():
            started = time.perf_counter()
            count, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index(integrand), n,
                                                       check_seed(seed), lo, hi)
            self._record(1, n, time.perf_counter() - started)
        return {"n": int(count), "sum": float(total), "sumsq": float(total_sq)}

    def batch(self, task: str, args: Sequence[Sequence[Any]], kwargs: dict[str, Any] | None = None,
              seeds: Sequence[int] | None = None, code: bytes | None = None,
              rows: bytes | None = None, run: str | None = None, output: bool = False,
              flat: bool = False) -> dict[str, Any]:
        """Run ``task`` once per argument tuple; ``seeds[i]`` (if given) becomes keyword ``seed``.

        With ``code`` (a cloudpickled function, only where the worker allows it) that function
        runs instead and ``task`` is just its label. ``rows`` (same condition) are the argument
        lists cloudpickled, for objects plain data cannot carry; ``args`` is then ignored.
        ``run`` names the calling pool, whose constants (``set_shared``) its tasks read. With
        ``output``, what the tasks print comes back as ``[[stream, text], ...]`` under "output".
        Results are always plain data or numpy (a client never decodes pickle). Over marshal or
        our binary serializer, ``args`` may come packed as ``marshal.dumps(args)``, which skips
        the per-object pass on big batches. Arguments that are broadcast handles arrive as their
        values (``binary`` resolves them from ``store``). With ``flat``, each entry of ``args`` is
        its task's only argument (a map over one iterable sends no tuple per task).

        Returns:
            ``{"results": [...], "errors": [[index, module, type, args, traceback], ...],
            "seconds": time spent running}``; results of failed items are None. Over marshal or
            binary, plain results come packed: ``marshal.dumps(results)`` under "packed"; others
            come as they are over binary (arrays as raw bytes), serpent-encoded under "serpent"
            over marshal (numpy scalars would be mangled).

        Raises:
            TypeError, KernelError: the batch itself is malformed or names a forbidden task.
        """
        fn = self._function(task, code)
        over_marshal = Pyro4.current_context.serializer_id in PACKING_IDS
        if rows is not None:
            args = self._load_rows(sent_bytes(rows, "rows"))
        if isinstance(args, bytes) or (isinstance(args, dict) and "encoding" in args):  # serpent bytes
            if not over_marshal:
                raise TypeError("packed args (bytes) are accepted only over the marshal serializer")
            args = _unpack(args)
        if not isinstance(args, (list, tuple)) or len(args) > MAX_BATCH:
            raise TypeError(f"args must be a list of at most {MAX_BATCH} argument lists")
        if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
            raise TypeError("kwargs must be a dict with string keys or None")
        if seeds is not None and (not isinstance(seeds, (list, tuple)) or len(seeds) != len(args)):
            raise TypeError("seeds must be None or a list with one seed per argument list")
        if flat is not False and (flat is not True or rows is not None):
            raise TypeError("flat must be True or False, and False when rows are sent")
        with self._activity.waiting(len(args)), self._run_lock, self._activity.busy(), \
                taskctx.capture(output is True) as printed:
            started = time.perf_counter()
            results, errors = _run_all(fn, args, kwargs or {}, seeds, _run_name(run), flat)
            seconds = time.perf_counter() - started
        # Kernel methods record their own work; count only what they could not see.
        if ":" in task or code is not None:
            self._record(len(args), 0, seconds)
        reply = _reply(results, errors, seconds, Pyro4.current_context.serializer_id)
        if printed:  # what the tasks printed, for the caller's terminal
            reply["output"] = printed
        with self._lock:
            self._errors += len(errors)
        return reply

    def info(self) -> dict[str, Any]:
        """Describe this worker: name, host, pid, cores, kernels and library versions."""
        import importlib.metadata  # here: it pulls in email and zipfile, 9 ms of every worker's start
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                "cores": os.cpu_count() or 1, "kernels": list(KERNELS),
                "integrands": list(kernels.INTEGRANDS), "modules": list(self._resolver.modules),
                "script": self._resolver.script, "by_value": self._resolver.by_value, "python": platform.python_version(),
                "pyro4": Pyro4.__version__, "numpy": np.__version__, "numba": importlib.metadata.version("numba")}

    def stats(self) -> dict[str, Any]:
        """Counters since start, recent busy seconds and tasks in flight.

        Returns:
            ``tasks``, ``samples``, ``errors``, ``busy_seconds`` and ``uptime`` since start;
            ``recent_busy`` seconds busy in the last ``recent_window`` seconds; ``in_flight``:
            tasks of batches running or queued here now.
        """
        with self._lock:
            counters = {"tasks": self._tasks, "samples": self._samples, "errors": self._errors,
                        "busy_seconds": self._busy, "uptime": time.time() - self._started}
        return {**counters, **self._activity.snapshot()}

    def _task(self, task: Any) -> Callable[..., Any]:
        if not isinstance(task, str):
            raise TypeError(f"task must be a kernel name or 'module:function' string, not {short_repr(task)}")
        if ":" in task:
            return self._resolver.resolve(task)
        if task not in KERNELS:
            raise KernelError(f"unknown kernel {task!r}; this worker offers {', '.join(KERNELS)} "
                              "or functions by 'module:function' reference")
        return getattr(self, task)  # type: ignore[no-any-return]

    def set_shared(self, run: str, constants: dict[str, Any]) -> None:
        """Keep constants (``shared.setConst``) for the tasks of pool ``run``; set once, read anywhere.

        Raises:
            TypeError: run is not a string or constants not a dict with string keys.
        """
        if not isinstance(constants, dict) or not all(isinstance(k, str) for k in constants):
            raise TypeError("constants must be a dict with string keys")
        taskctx.set_shared(_run_name(run), constants)

    def release_broadcast(self, keys: list[str]) -> int:
        """Forget the broadcast values of ``keys`` (``Broadcast.release``); return how many were held.

        Raises:
            TypeError: keys is not a list of strings.
        """
        if not (isinstance(keys, (list, tuple)) and all(isinstance(k, str) for k in keys)):
            raise TypeError("keys must be a list of broadcast keys (strings)")
        return store.drop(list(keys))

    def held(self) -> dict[str, int]:
        """How many broadcast values this worker keeps (``broadcasts``) and their ``bytes``."""
        return store.held()

    def _load_rows(self, rows: bytes) -> Any:
        """Argument lists sent pickled: only a worker that accepts code by value accepts them."""
        if not self._resolver.by_value:
            raise KernelError("this worker does not accept arguments by value (objects of classes the "
                              "wire cannot carry); start it with --allow-by-value and an HMAC secret, "
                              "or send plain data")
        import cloudpickle  # only workers that opted in need it
        return cloudpickle.loads(rows)

    def _function(self, task: str, code: Any) -> Callable[..., Any]:
        """A task's function: named by ``task``, or ``code`` by value where this worker allows it."""
        return self._task(task) if code is None else self._resolver.load(sent_bytes(code, "code"))

    def _run_inline(self, chunk: Any, run: str) -> None:
        """Run a chunk of a pool made in this process here, as part of the task that waits."""
        try:
            fn = self._function(chunk.task, chunk.code)
            args, kwargs = broadcast.values_of(chunk.args), broadcast.values_of(chunk.kwargs or {})
        except Exception as e:  # the chunk's failure, reported through its future
            chunk.fail(e)
            return
        results, errors = _run_all(fn, args, kwargs, chunk.seeds, run, chunk.flat)
        if ":" in chunk.task or chunk.code is not None:
            self._record(len(chunk.args), 0, 0.0)
        chunk.resolve(results, errors)

    def _record(self, tasks: int, samples: int, busy: float) -> None:
        with self._lock:
            self._tasks += tasks
            self._samples += samples
            self._busy += busy


def _run_all(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
             seeds: Sequence[int] | None, run: str = "", flat: bool = False) -> tuple[list[Any], list[list[Any]]]:
    """Run ``fn`` once per argument tuple (per argument if ``flat``): results, and errors of failed tasks."""
    results: list[Any] = []
    errors: list[list[Any]] = []
    frame = taskctx.Frame(None, run)  # one per batch, reset per task: a frame per task cost 1 µs
    stack = taskctx.frames()
    stack.append(frame)
    try:
        if seeds is None and (flat or set(map(type, args)) <= _ROW_TYPES):
            _run_unseeded(functools.partial(fn, **kwargs) if kwargs else fn, args, flat, results, errors)
        else:
            _run_each(fn, list(zip(args)) if flat else args, kwargs, seeds, frame, results, errors)
    finally:
        stack.pop()
    return results, errors


_ROW_TYPES = frozenset({tuple, list})


def _run_unseeded(fn: Callable[..., Any], args: Sequence[Any], flat: bool, results: list[Any],
                  errors: list[list[Any]]) -> None:
    """Unseeded tasks at C speed (``map``/``starmap``); a failed task's slot gets None and the rest go on.

    Without a seed a task's frame never changes (``taskctx.next_seed`` counts calls only of
    seeded tasks), so one frame serves the batch without a reset per task.
    """
    apply = map if flat else itertools.starmap
    while len(results) < len(args):
        try:  # list.extend keeps the results appended before a task raised
            results.extend(apply(fn, args[len(results):] if results else args))
        except Exception as e:  # a task's failure belongs to that task, never to the worker
            errors.append(error_entry(len(results), e))
            results.append(None)


def _run_each(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], seeds: Sequence[int] | None,
              frame: taskctx.Frame, results: list[Any], errors: list[list[Any]]) -> None:
    """Tasks one by one: seeded (each its own frame seed and count), or rows to check one by one."""
    for i, item in enumerate(args):
        frame.calls = 0
        try:
            if type(item) is not tuple and type(item) is not list and not isinstance(item, (list, tuple)):
                raise TypeError(f"argument list {i} must be a list or tuple, not {type(item).__name__}")
            if seeds is None:
                results.append(fn(*item, **kwargs))
            else:
                frame.seed = int(seeds[i])
                results.append(fn(*item, seed=seeds[i], **kwargs))
        except Exception as e:  # a task's failure belongs to that task, never to the worker
            results.append(None)
            errors.append(error_entry(i, e))


def _run_name(run: Any) -> str:
    if run is None:
        return ""
    if not isinstance(run, str) or len(run) > 64:
        raise TypeError("run must be a pool's run id (a short string) or None")
    return run


def _worker_settings(given: Any) -> Any:
    """The settings of the cluster this worker serves: given, or read like compute-worker does."""
    if given is not None:
        return given
    from .config import Settings
    from .worker import build_parser  # here: worker imports this module
    args, _ = build_parser().parse_known_args(sys.argv[1:])
    return Settings.from_env(ns=args.ns, host=args.host, hmac_key_file=args.hmac_key_file)


def _reply(results: list[Any], errors: list[list[Any]], seconds: float, serializer_id: int) -> dict[str, Any]:
    """The batch reply; results the wire cannot carry become their tasks' errors first.

    Over our binary serializer, results that marshal cannot carry (numpy) go as they are.
    Objects of the script's classes go as their state (``objects``), and the reply says so.
    """
    reply: dict[str, Any] = {"errors": errors, "seconds": seconds}
    over_marshal = serializer_id == MARSHAL_ID
    packing = over_marshal or serializer_id == binary.SERIALIZER_ID
    packed = pack_plain(results) if packing else None
    if packed is None:  # one pass in the common case; more only for objects or to find what fails
        results, converted = objects.as_state(results)
        if converted:
            reply["objects"] = True
            packed = pack_plain(results) if packing else None
    if packed is None and packing:
        fail_unsendable(results, errors, serpent=False)
        packed = pack_plain(results) if over_marshal else None
    if packed is not None:
        reply["packed"] = packed
    elif serializer_id == binary.SERIALIZER_ID:
        reply["results"] = results
    else:
        fail_unsendable(results, errors, serpent=True)
        if over_marshal:
            reply["serpent"] = to_serpent(results)
        else:
            reply["results"] = results
    return reply


def _unpack(data: Any) -> Any:
    """marshal-packed args: the same trust as Pyro4's marshal serializer, which sent them."""
    try:
        return plain(marshal.loads(data))
    except (EOFError, ValueError, TypeError, Pyro4.errors.SerializeError):
        raise TypeError("packed args are not valid marshal data of plain values") from None
