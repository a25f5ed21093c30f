"""Functions the test workers may run by reference (workers start with ``--allow-module remote_tasks``).

Keep them general and module-level: pool, worker and cluster tests all call them.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def identity(x: T) -> T:
    """Return ``x`` unchanged; round-trips a value through the wire both ways."""
    return x


def add(a: Any, b: Any) -> Any:
    """Return ``a + b``."""
    return a + b


def square(x: Any) -> Any:
    """Return ``x * x``."""
    return x * x


def fail(msg: str) -> None:
    """Raise ``ValueError(msg)`` on the marked line, for remote-traceback tests."""
    raise ValueError(msg)  # REMOTE-MARKER


def fail_with_args(*args: Any) -> None:
    """Raise ``ValueError(*args)``; args that are not plain data test how errors are reported."""
    raise ValueError(*args)


def call_args(*args: Any, **kwargs: Any) -> list[Any]:
    """Return ``[list(args), kwargs]``: shows exactly how the worker called it (e.g. the seed keyword)."""
    return [list(args), kwargs]


def sleep_then(seconds: float, value: T) -> T:
    """Sleep ``seconds``, then return ``value``; stands in for slow work."""
    time.sleep(seconds)
    return value


def pid() -> int:
    """The worker's process id, to tell which worker ran a task."""
    return os.getpid()


def serving_thread() -> int:
    """The worker thread running this task (the one serving the request)."""
    return threading.get_ident()


def type_name(x: Any) -> str:
    """``module.qualname`` of the type of ``x`` as the worker received it."""
    kind = type(x)
    return f"{kind.__module__}.{kind.__qualname__}"


def object_array(n: int) -> np.ndarray:
    """An object-dtype array, which the wire must refuse to send."""
    return np.array([None] * n, dtype=object)


def seeded_random(seed: int) -> float:
    """A uniform number in [0, 1) drawn from numpy's generator with ``seed``; tests seed plumbing."""
    return float(np.random.default_rng(seed).random())


def slow_pid(seconds: float) -> int:
    """Sleep ``seconds``, then return the worker's process id."""
    time.sleep(seconds)
    return os.getpid()


def crash(code: int = 3) -> None:
    """Kill the worker process at once, as a segfault would."""
    os._exit(code)


def loaded(name: str) -> bool:
    """True if module ``name`` has been imported in the worker; shows imports as side effects."""
    return name in sys.modules


class Scaler:
    """Methods of every kind, to check each travels to the worker as exactly what was meant."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def scale(self, x: Any) -> Any:
        """A method: needs the instance, so it cannot travel by name."""
        return self.factor * x

    @staticmethod
    def double(x: Any) -> Any:
        """A staticmethod: a plain function reached through the class."""
        return 2 * x

    @classmethod
    def kind(cls, x: Any) -> str:
        """A classmethod: names the class it was called on."""
        return f"{cls.__qualname__}:{x}"


class SubScaler(Scaler):
    """Inherits ``kind``; ``SubScaler.kind`` must run with cls = SubScaler."""


class Outer:
    """Holds a nested class."""

    class Inner:
        """A nested class with each kind of method."""

        offset = 100

        def shift(self, x: int) -> int:
            """A method of a nested class."""
            return self.offset + x

        @staticmethod
        def negate(x: int) -> int:
            """A staticmethod of a nested class."""
            return -x

        @classmethod
        def kind(cls, x: Any) -> str:
            """A classmethod of a nested class."""
            return f"{cls.__qualname__}:{x}"


DEFAULT_SCALER = Scaler(10)  # a module-level instance: its state on a client may differ from a worker's


def keywords(a: Any, b: Any = 0, *, c: Any = 0) -> list[Any]:
    """Return ``[a, b, c]``: shows how a partial's arguments and the call's were combined."""
    return [a, b, c]


def odd_result(kind: str, x: Any = 0) -> Any:
    """A result of the named kind, most of which the wire cannot carry; ``"plain"`` returns ``x``."""
    makers = {
        "plain": lambda: x,
        "bytes": lambda: bytes(range(256)),
        "numpy": lambda: np.float64(x),
        "iterator": lambda: iter([x]),
        "zip": lambda: zip([x], [x]),
        "generator": lambda: (i for i in [x]),
        "map": lambda: map(str, [x]),
        "range": lambda: range(3),
        "big_int": lambda: 10**5000 + int(x),
        "nested_big_int": lambda: {"n": [10**5000]},
        "object": lambda: object(),
        "function": lambda: odd_result,
        "set_of_iterators": lambda: [1, {"k": iter([])}],
    }
    return makers[kind]()


def raise_with(value: Any) -> None:
    """Raise ``ValueError(value)``: an error whose message holds whatever the caller sent."""
    raise ValueError(value)


def multiples(step: int, stop: int, kind: str = "set") -> Any:
    """The multiples of ``step`` below ``stop`` as a "set", a "frozenset" or "nested" in other containers."""
    items = set(range(0, stop, step))
    if kind == "nested":
        return {"sets": [items, frozenset(items)], "pair": (frozenset({frozenset({step}), (step, 0)}), items)}
    return frozenset(items) if kind == "frozenset" else items
