"""Results that are objects of the script's own classes: sent as plain state, rebuilt by the client.

A client decodes no pickle from the wire. An object of a class the script defines, whose state
is its ``__dict__``, travels instead as ``{STATE: [qualname, vars(obj)]}``; the client rebuilds it
with ``object.__new__`` only if its own script defines a class of that name that qualifies too.
No code runs but the client's own, so a worker can at worst give a wrong answer.
"""
from __future__ import annotations

import sys
from typing import Any

from .references import MAIN, SCRIPT_MODULE

STATE = "__pyro_compute_state__"
MAX_DEPTH = 32
_SCRIPT = (MAIN, SCRIPT_MODULE)
_OBJECT_DEFAULTS = ("__new__", "__reduce__", "__reduce_ex__", "__getstate__")  # object has __getstate__ from 3.11
_CONTAINERS = (list, tuple, dict)


def qualifies(kind: type) -> bool:
    """True for a class of the script whose instances are their ``__dict__`` and nothing else."""
    return (kind.__module__ in _SCRIPT and "<locals>" not in kind.__qualname__
            and all(c is object or c.__module__ in _SCRIPT for c in kind.__mro__)
            and all("__slots__" not in vars(c) for c in kind.__mro__)
            and all(_inherited(kind, name) for name in _OBJECT_DEFAULTS)
            and not hasattr(kind, "__setstate__"))


def _inherited(kind: type, name: str) -> bool:
    """True if ``kind`` takes ``name`` from ``object`` (or neither has it)."""
    return bool(getattr(kind, name, None) is getattr(object, name, None))


def as_state(values: list[Any]) -> tuple[list[Any], bool]:
    """``values`` with each qualifying object (in lists, tuples and dict values) as its state; True if any was."""
    if not any(kind in _CONTAINERS or qualifies(kind) for kind in set(map(type, values))):
        return values, False  # numpy results, say: no walk on the reply's path
    found = [False]
    converted = [_as_state(v, 0, found) for v in values]
    return (converted, True) if found[0] else (values, False)


def _as_state(value: Any, depth: int, found: list[bool]) -> Any:
    kind = type(value)
    if depth > MAX_DEPTH:
        return value
    if kind is list or kind is tuple:
        items = [_as_state(v, depth + 1, found) for v in value]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {k: _as_state(v, depth + 1, found) for k, v in value.items()}
    if hasattr(value, "__dict__") and qualifies(kind) \
            and all(type(k) is str for k in vars(value)):
        found[0] = True
        return {STATE: [kind.__qualname__, _as_state(dict(vars(value)), depth + 1, found)]}
    return value


def rebuild(values: list[Any]) -> list[Any]:
    """``values`` with every ``{STATE: [qualname, state]}`` made an object of this script's class.

    Raises:
        TypeError: the script here defines no qualifying class of that name.
    """
    return [_rebuild(v, 0) for v in values]


def _rebuild(value: Any, depth: int) -> Any:
    kind = type(value)
    if depth > MAX_DEPTH or kind not in _CONTAINERS:
        return value
    if kind is not dict:
        items = [_rebuild(v, depth + 1) for v in value]
        return items if kind is list else tuple(items)
    if len(value) == 1 and STATE in value:
        return _object(value[STATE], depth)
    return {k: _rebuild(v, depth + 1) for k, v in value.items()}


def _object(entry: Any, depth: int) -> Any:
    if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is str and type(entry[1]) is dict
            and all(type(k) is str for k in entry[1])):
        raise TypeError("a result names an object of the script but is malformed")
    qualname, state = entry
    obj: Any = object.__new__(_script_class(qualname))
    obj.__dict__.update(_rebuild(state, depth + 1))
    return obj


def _script_class(qualname: str) -> type:
    """The class ``qualname`` of this process's script (``__main__``, or a worker's script module)."""
    for name in _SCRIPT:
        found: Any = sys.modules.get(name)
        for part in qualname.split("."):  # through namespaces only: no getattr, no property runs
            space = vars(found) if found is not None and (found is sys.modules.get(name)
                                                          or isinstance(found, type)) else {}
            found = space.get(part) if part.isidentifier() and not part.startswith("__") else None
        if isinstance(found, type) and found.__qualname__ == qualname and qualifies(found):
            return found
    raise TypeError(f"a result is an object of class {qualname}, which the script here does not define "
                    "as a plain class (its state its __dict__, no __slots__, __reduce__ or __setstate__); "
                    "return its data instead (a tuple, a dict such as vars(obj), a list)")
