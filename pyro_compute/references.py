"""Functions sent by reference: how a client names one and which ones a worker may call."""
from __future__ import annotations

import builtins
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
SCRIPT_MODULE = "__pyro_compute_script__"
PROJECT_MODULES = ("pyro_compute.tasks",)
_OPERATOR_EXCLUDED = {"attrgetter", "itemgetter", "methodcaller", "call"}
_SAFE_BUILTINS = {"abs", "all", "any", "bool", "complex", "divmod", "float", "int", "len", "max",
                  "min", "pow", "round", "sorted", "str", "sum", "tuple", "list", "dict", "set",
                  "frozenset", "hash", "repr", "reversed", "zip", "enumerate"}


def by_value_needed(fn: Callable[..., Any] | str) -> bool:
    """True for functions no worker can import by name: lambdas, nested and interactive ones."""
    if isinstance(fn, str):
        return False
    return "<" in getattr(fn, "__qualname__", "<") or getattr(fn, "__module__", None) == MAIN


def reference_of(fn: Callable[..., Any] | str) -> str:
    """Name a task for the wire: a kernel name as given, a function as ``module:qualname``.

    Raises:
        TypeError: fn is a lambda, a nested function or not a function at all.
    """
    if isinstance(fn, str):
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname:
        raise TypeError(f"a task must be a kernel name or a module-level function, not {fn!r}")
    if "<" in qualname:
        raise TypeError(f"{qualname} cannot be sent by reference: workers import functions by "
                        "module and name, so define it at the top level of a module or script, "
                        "or send it by value with Pool(by_value=True) (workers then need "
                        "--allow-by-value and an HMAC secret)")
    if module == "builtins" and qualname in _SAFE_BUILTINS:
        return f"builtins:{qualname}"
    return f"{module}:{qualname}"


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
        self.by_value = by_value
        self._stdlib = _safe_stdlib()
        self._cache: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()  # a script half-loaded by one thread must not serve another

    def resolve(self, ref: str) -> Callable[..., Any]:
        """Return the callable named by ``ref``.

        Raises:
            KernelError: the reference is malformed or names something this worker may not call.
        """
        fn = self._cache.get(ref)
        if fn is None:
            with self._lock:
                fn = self._cache.get(ref) or self._lookup(ref)
                self._cache[ref] = fn
        return fn

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
        module = sys.modules.get(SCRIPT_MODULE)
        # Another Resolver in this process may have loaded a different script under the same name.
        if module is not None and getattr(module, "__file__", None) == self.script:
            return module
        assert self.script is not None
        spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, self.script)
        if spec is None or spec.loader is None:
            raise KernelError(f"cannot load the script {self.script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[SCRIPT_MODULE] = module
        sys.path.insert(0, os.path.dirname(self.script))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[SCRIPT_MODULE]
            raise
        return module
