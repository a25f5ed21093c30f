"""Functions sent by reference: how a client names one and which ones a worker may call."""
from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib
import importlib.util
import math
import operator
import os
import sys
import threading
import types
from typing import Any, Callable, Iterable

from .errors import KernelError

MAIN = "__main__"
MAX_OPTIONS = 1 << 16  # characters of literal options a reference may carry (partial arguments)
_SHA256 = "__pyro_compute_sha256__"  # the loaded script's hash, kept on its module
SCRIPT_MODULE = "__pyro_compute_script__"
PROJECT_MODULES = ("pyro_compute.tasks",)
_OPERATOR_EXCLUDED = {"attrgetter", "itemgetter", "methodcaller", "call"}
_SAFE_BUILTINS = {"abs", "all", "any", "bool", "complex", "divmod", "float", "int", "len", "max",
                  "min", "pow", "round", "sorted", "str", "sum", "tuple", "list", "dict", "set",
                  "frozenset", "hash", "repr", "reversed", "zip", "enumerate"}


def by_value_needed(fn: Callable[..., Any] | str) -> bool:
    """True for callables no worker can import by exact name: lambdas, nested and interactive
    functions, functions of ``__main__``, methods bound to an object, partials of any of these."""
    if isinstance(fn, str):
        return False
    target = fn.func if isinstance(fn, functools.partial) else fn
    if getattr(target, "__module__", None) == MAIN:
        return True
    return _refusal(fn) is not None


def reference_of(fn: Callable[..., Any] | str) -> str:
    """Name a task for the wire: a kernel name as given, a function as ``module:qualname``.

    Only exact names are made: calling what the reference names on a worker must do what
    calling ``fn`` does here. A classmethod is named through the class it is bound to; a
    ``functools.partial`` of a named function with literal arguments carries them as options
    (``module:qualname {'args': [...], 'kwargs': {...}}``); a function of a script (``__main__``)
    carries the script's path and content hash so a worker running another script refuses it.

    Raises:
        TypeError: fn is a lambda, a nested function, a method bound to an object, a partial
            of such or with non-literal arguments, or no function at all.
    """
    if isinstance(fn, str):
        return fn
    why = _refusal(fn)
    if why:
        raise TypeError(why)
    options: dict[str, Any] = {}
    if isinstance(fn, functools.partial):
        options.update(args=list(fn.args), kwargs=dict(fn.keywords))
        fn = fn.func
    module, qualname = _name(fn)
    if module == MAIN:
        options.update(_script_identity(fn, qualname))
    ref = f"{module}:{qualname}"
    return f"{ref} {options!r}" if options else ref


def _refusal(fn: Any) -> str | None:
    """Why ``fn`` cannot go by reference, or None if it can."""
    if isinstance(fn, functools.partial):
        return _partial_refusal(fn)
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, (type, types.ModuleType)):
        return (f"{fn!r:.200} is a method bound to a {type(owner).__name__} object; a worker "
                "cannot rebuild that object from a name, and calling the method by name would "
                "take your first argument as self. Call a module-level function that takes the "
                f"object's data as arguments, or {_BY_VALUE}")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if isinstance(owner, type):  # a classmethod: named through the class it is bound to
        module, qualname = owner.__module__, f"{owner.__qualname__}.{getattr(fn, '__name__', '')}"
    if not callable(fn) or not isinstance(module, str) or not isinstance(qualname, str):
        return f"a task must be a kernel name or a module-level function, not {fn!r:.200}"
    if "<" in qualname:
        return (f"{qualname} cannot be sent by reference: workers import functions by module "
                f"and name, so define it at the top level of a module or script, or {_BY_VALUE}")
    found = _walk(sys.modules.get(module), qualname)
    if found is _MISSING or found is fn or (owner is not None and found == fn):
        return None
    return (f"{module}:{qualname} names {'nothing' if found is None else 'another object'} in "
            f"{module}, not {fn!r:.200} (a decorator that does not keep the name, or a name bound "
            "again later?), so a worker could not run it as it is; give the function its own "
            f"module-level name, or {_BY_VALUE}")


def _partial_refusal(fn: functools.partial[Any]) -> str | None:
    """Why a partial cannot go by reference: its function cannot, or its arguments are no short literals."""
    why = _refusal(fn.func)
    if why:
        return f"a partial of a function that cannot be sent by reference: {why}"
    if _literal(list(fn.args)) and _literal(dict(fn.keywords)) and len(repr((fn.args, fn.keywords))) < MAX_OPTIONS:
        return None
    return (f"{fn!r:.200} holds arguments that are not short plain literals (numbers, strings, "
            "bytes, None and lists, tuples or dicts of them), so it cannot be sent by reference; "
            f"pass them as map arguments, or {_BY_VALUE}")


_BY_VALUE = ("send it by value with Pool(by_value=True) (workers then need --allow-by-value "
             "and an HMAC secret)")
_MISSING = object()


def _name(fn: Any) -> tuple[str, str]:
    """``(module, qualname)`` of a function, or of a classmethod through the class it is bound to."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return owner.__module__, f"{owner.__qualname__}.{fn.__name__}"
    return fn.__module__, fn.__qualname__


def _walk(root: Any, qualname: str) -> Any:
    """What ``qualname`` names inside ``root`` (a module), or _MISSING if unknown here."""
    if root is None:
        return _MISSING
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return None
    return obj


def _literal(value: Any, depth: int = 0) -> bool:
    """True if ``repr(value)`` is a Python literal that ``ast.literal_eval`` turns back into an equal value."""
    kind = type(value)
    if depth > 32:
        return False
    if kind in (type(None), bool, str, bytes):
        return True
    if kind is int:
        return bool(value.bit_length() < 10_000)  # repr of longer ints may exceed the digit limit
    if kind is float:
        return math.isfinite(value)  # repr(nan) and repr(inf) are no literals
    if kind in (list, tuple):
        return all(_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(_literal(k, depth + 1) and _literal(v, depth + 1) for k, v in value.items())
    return False


_hash_cache: dict[tuple[str, int, int], str] = {}


def _script_identity(fn: Any, qualname: str) -> dict[str, str]:
    """The path and sha256 of the script that defined ``fn`` in ``__main__``.

    Raises:
        TypeError: ``__main__`` has no file (an interactive session or notebook).
    """
    inner = getattr(fn, "__func__", fn)
    path = getattr(inner, "__globals__", {}).get("__file__") or getattr(sys.modules.get(MAIN), "__file__", None)
    if not path or not os.path.isfile(path):
        raise TypeError(f"{qualname} was defined in an interactive session, not a script file, so no "
                        f"worker can import it; {_BY_VALUE}")
    path = os.path.abspath(path)
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _hash_cache:
        _hash_cache[key] = script_hash(path)
    return {"script": path, "sha256": _hash_cache[key]}


def script_hash(path: str) -> str:
    """sha256 of a script's bytes, in hex."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _safe_stdlib() -> dict[str, dict[str, Any]]:
    def public(mod: types.ModuleType, excluded: Iterable[str] = ()) -> dict[str, Any]:
        return {n: getattr(mod, n) for n in dir(mod)
                if not n.startswith("_") and n not in excluded and callable(getattr(mod, n))}
    return {"operator": public(operator, _OPERATOR_EXCLUDED), "_operator": public(operator, _OPERATOR_EXCLUDED),
            "math": public(math), "builtins": {n: getattr(builtins, n) for n in _SAFE_BUILTINS}}


class Resolver:
    """Turns ``module:qualname`` into a callable, importing only what the worker allows.

    Allowed: the launcher's script (as ``__main__``), modules named when the worker started,
    ``pyro_compute.tasks``, and public functions of ``operator``, ``math`` and a few builtins.
    """

    def __init__(self, modules: Iterable[str] = (), script: str | None = None,
                 by_value: bool = False) -> None:
        self.modules = tuple(dict.fromkeys((*PROJECT_MODULES, *modules)))
        self.script = os.path.abspath(script) if script else None
        if self.script is not None:  # modules next to the script import on workers as in the client
            _on_path(os.path.dirname(self.script))
        self.by_value = by_value
        self._stdlib = _safe_stdlib()
        self._cache: dict[str, Callable[..., Any]] = {}
        self._script_sha256 = ""
        self._lock = threading.Lock()  # a script half-loaded by one thread must not serve another

    def resolve(self, ref: str) -> Callable[..., Any]:
        """Return the callable named by ``ref``.

        Raises:
            KernelError: the reference is malformed or names something this worker may not call.
        """
        name, _, text = ref.partition(" ")
        options = _options(ref, text)
        fn = self._cache.get(name)
        if fn is None:
            with self._lock:
                fn = self._cache.get(name) or self._lookup(name)
                self._cache[name] = fn
        if "sha256" in options:
            self._check_script(name, options)
        if "args" in options:
            return functools.partial(fn, *options["args"], **options["kwargs"])
        return fn

    def _check_script(self, name: str, options: dict[str, Any]) -> None:
        """Refuse a reference into another script than the one this worker runs."""
        if not name.startswith(MAIN + ":"):
            raise KernelError(f"task reference {name!r} carries a script hash but does not name __main__")
        self._load_script()
        if options["sha256"] != self._script_sha256:
            raise KernelError(
                f"{name} comes from the script {options['script']} (sha256 {options['sha256'][:16]}), "
                f"but this worker runs the script {self.script} (sha256 {self._script_sha256[:16]}); "
                "they differ, so the function of the same name here may do something else. Start "
                "the workers with --script naming the same file (or 'python -m pyro_compute "
                "script.py', which does), or run the client with the workers' script")

    def load(self, code: bytes) -> Callable[..., Any]:
        """Unpickle a function sent by value (cloudpickle), if this worker opted in.

        Raises:
            KernelError: the worker was not started with --allow-by-value, or the bytes are no function.
        """
        if not self.by_value:
            raise KernelError("this worker does not accept functions by value; start it with "
                              "--allow-by-value and an HMAC secret, or send a module-level function")
        key = "by-value:" + hashlib.sha256(code).hexdigest()
        fn = self._cache.get(key)
        if fn is None:
            import cloudpickle  # only workers that opted in need it
            fn = cloudpickle.loads(code)
            if not callable(fn):
                raise KernelError(f"the value sent is a {type(fn).__name__}, not a function")
            self._cache[key] = fn
        return fn

    def _lookup(self, ref: str) -> Callable[..., Any]:
        module_name, sep, qualname = ref.partition(":")
        parts = qualname.split(".")
        if not sep or not module_name or not all(p.isidentifier() for p in parts):
            raise KernelError(f"task reference {ref!r} is not of the form 'module:function'")
        if any(p.startswith("_") for p in parts):
            raise KernelError(f"{ref!r} is refused: private names cannot be called remotely")
        if module_name in self._stdlib:
            fn = self._stdlib[module_name].get(qualname)
            if fn is None:
                raise KernelError(f"{ref!r} is not among the {module_name} functions workers may call")
            return fn  # type: ignore[no-any-return]
        module = self._module(module_name, ref)
        obj: Any = module
        for part in parts:
            obj = getattr(obj, part, None)
            if obj is None or isinstance(obj, types.ModuleType):
                raise KernelError(f"{ref!r} names nothing callable in module {module_name}")
        if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
            raise KernelError(f"{ref!r} is refused: only functions defined in {module_name} itself "
                              "can be called through it")
        return obj  # type: ignore[no-any-return]

    def _module(self, name: str, ref: str) -> types.ModuleType:
        if name == MAIN:
            if self.script is None:
                raise KernelError(f"{ref!r} was defined in a script this worker does not know; run the "
                                  "script with 'python -m pyro_compute script.py' or start the worker "
                                  "with --script PATH")
            return self._load_script()
        if name not in self.modules:
            raise KernelError(f"module {name!r} is not allowed on this worker (allowed: "
                              f"{', '.join(self.modules)}); start the worker with --allow-module {name}")
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise KernelError(f"allowed module {name!r} cannot be imported on this worker: {e}") from None

    def _load_script(self) -> types.ModuleType:
        if self.script is None:
            raise KernelError("this worker runs no script; start it with --script PATH")
        module = sys.modules.get(SCRIPT_MODULE)
        # Another Resolver in this process may have loaded a different script under the same name.
        if module is not None and getattr(module, "__file__", None) == self.script:
            self._script_sha256 = module.__dict__[_SHA256]
            return module
        spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, self.script)
        if spec is None or spec.loader is None:
            raise KernelError(f"cannot load the script {self.script}")
        module = importlib.util.module_from_spec(spec)
        module.__dict__[_SHA256] = self._script_sha256 = script_hash(self.script)
        sys.modules[SCRIPT_MODULE] = module
        _on_path(os.path.dirname(self.script))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[SCRIPT_MODULE]
            raise
        return module


_OPTION_TYPES = {"args": list, "kwargs": dict, "script": str, "sha256": str}
_OPTION_SETS = ({"args", "kwargs"}, {"script", "sha256"}, {"args", "kwargs", "script", "sha256"})


def _options(ref: str, text: str) -> dict[str, Any]:
    """The literal dict of options after a reference's name: partial arguments, script identity."""
    if not text:
        return {}
    if len(text) > MAX_OPTIONS:
        raise KernelError(f"the options of task reference {ref[:80]!r}... are over {MAX_OPTIONS} characters")
    try:
        options = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        options = None
    if not (isinstance(options, dict) and set(options) in _OPTION_SETS
            and all(isinstance(options[k], _OPTION_TYPES[k]) for k in options)):
        raise KernelError(f"task reference {ref!r:.200} is not of the form 'module:function' followed "
                          "by an optional dict of options (args and kwargs, or script and sha256)")
    if "kwargs" in options and not all(isinstance(k, str) for k in options["kwargs"]):
        raise KernelError("the keyword arguments of a partial must have string names")
    return options


def _on_path(directory: str) -> None:
    """Put ``directory`` first on ``sys.path`` (as running a script there does), once."""
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _class_name(kind: type) -> str:
    """``Point (a class of your script)`` or ``module.Class``."""
    if kind.__module__ in (MAIN, SCRIPT_MODULE):
        return f"{kind.__qualname__} (a class of your script)"
    return f"{kind.__module__}.{kind.__qualname__}"


def object_result_refusal(value: Any) -> str:
    """Why a task's result that is an object (not plain data) does not come back, and what to do.

    Results are refused by design: a client rebuilds only plain data and numpy from the wire,
    because decoding pickle would let whoever answers in a worker's name run code in the client.
    """
    return (f"it is an object of class {_class_name(type(value))}, and results come back as plain "
            "data, numpy arrays, or objects of your script's own plain classes (their state in "
            "__dict__; no __slots__, __reduce__ or __setstate__), never pickled: a pyro_compute "
            "client decodes no pickle from the network, since whoever answers in a worker's name "
            "could run code in the client with it. Return the object's data instead (a tuple, a "
            "dict such as vars(obj), a list or a numpy array) and rebuild the object in the client")


def first_object(value: Any, depth: int = 8) -> Any:
    """The first object in ``value`` that is no plain data (builtin scalars and containers, numpy), or None."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset) and depth > 0:
        return next((o for o in map(functools.partial(first_object, depth=depth - 1), value) if o is not None), None)
    if kind is dict and depth > 0:
        return first_object([*value.keys(), *value.values()], depth - 1)
    if kind.__module__ in ("builtins", "numpy") or kind.__module__.startswith("numpy."):
        return None
    return value


def object_argument_refusal(args: Any) -> str:
    """Why arguments holding an object (not plain data) cannot go to workers that take no code by value."""
    value = first_object(args)
    return (f"an argument is an object of class {_class_name(type(value))}; objects cross the wire "
            "only by value (pickled), from a pool with by_value=True to workers started with "
            "--allow-by-value. Pass its data instead (numbers, strings, lists, dicts, numpy arrays), "
            "or send it by value: 'python -m pyro_compute script.py' does on its own cluster; on a "
            "shared cluster start the workers with --allow-by-value and use Pool(by_value=True)")
