"""Every exception pyro_compute raises, registered so that it survives serpent.

::

    ComputeError
    ├── ConfigError            (also ValueError)
    ├── WorkerUnavailableError no worker registered or reachable
    ├── BrokenPoolError        (also concurrent.futures.BrokenExecutor)
    ├── ClusterError           local cluster failed to start/stop
    ├── KernelError            Evaluator rejected its inputs (also ValueError)
    └── RemoteError            a remote exception whose type cannot be rebuilt here
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

from Pyro4.util import SerializerBase


class ComputeError(Exception):
    """Base class of every pyro_compute error."""


class ConfigError(ComputeError, ValueError):
    """A setting or command-line option has a value that cannot be used."""


class WorkerUnavailableError(ComputeError):
    """No worker is registered, or none of the registered ones can be reached."""


class BrokenPoolError(ComputeError, concurrent.futures.BrokenExecutor):
    """The pool can no longer run work; every pending future fails with this."""


class ClusterError(ComputeError):
    """A local cluster failed to start or stop."""


class KernelError(ComputeError, ValueError):
    """The Evaluator rejected a task's inputs (unknown kernel, bad argument)."""


class RemoteError(ComputeError):
    """A remote exception whose type is not importable on this side; args keep its text."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as ``__cause__`` of rebuilt remote errors."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


_WIRE_CLASSES = (ComputeError, ConfigError, WorkerUnavailableError, BrokenPoolError,
                 ClusterError, KernelError, RemoteError)


def _rebuild(classname: str, data: dict[str, Any]) -> BaseException:
    cls = next(c for c in _WIRE_CLASSES if f"{c.__module__}.{c.__name__}" == classname)
    return SerializerBase.make_exception(cls, data)  # type: ignore[no-any-return]


def register_errors() -> None:
    """Let Pyro4's serpent serializer rebuild pyro_compute's own exceptions."""
    for cls in _WIRE_CLASSES:
        SerializerBase.register_dict_to_class(f"{cls.__module__}.{cls.__name__}", _rebuild)
