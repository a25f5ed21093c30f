"""Run a pyro_compute command without first running the package's ``__init__``.

    python .../pyro_compute/bootstrap.py pyro_compute.MODULE [ARGS...]     (MODULE: worker, naming)

``import pyro_compute`` loads the whole client API (the pool, the local cluster, NumPy, tqdm), which
LocalCluster's name server and fork server never use: skipping it saves ~0.08 CPU-s of start-up per
process. The package object is made from the same ``__init__.py``, so ``pyro_compute.X`` submodules
import as usual, and the first attribute it lacks (``pyro_compute.Pool`` in a task, say) runs the
real ``__init__`` in place: code that needs the full package still gets it.

Run as a script, ``sys.path[0]`` is the package directory: before anything else it becomes the
current directory, as ``python -m`` has it (modules next to a script the workers run import from
there), or the package's modules would shadow top-level ones (``chunk``, ``status``, ...).
"""
import sys

if __name__ == "__main__":
    sys.path[0] = __import__("os").getcwd()

import contextlib  # noqa: E402  (after the path fix above)
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

PACKAGE = "pyro_compute"


def light_package(root: str) -> ModuleType:
    """Register ``pyro_compute`` from ``root`` without running its ``__init__`` until it must."""
    init = os.path.join(root, "__init__.py")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[root])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    with open(init, encoding="utf-8") as f:  # the version workers register with, without the imports
        found = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    setattr(package, "__version__", found.group(1) if found else "unknown")

    lock, state = threading.RLock(), {"done": False, "running": False}

    def complete(name: str) -> Any:
        """PEP 562 hook: a submodule by that name, or else the attribute of the real package."""
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")
        with lock:  # another thread asking meanwhile waits for the whole __init__, not half of it
            if not state["done"] and not state["running"]:
                state["running"] = True  # names the __init__ itself looks up are simply missing
                try:
                    spec.loader.exec_module(package)  # type: ignore[union-attr]  # checked above
                finally:
                    state["running"] = False
                state["done"] = True
                del package.__dict__["__getattr__"]
        if name in package.__dict__:
            return package.__dict__[name]
        raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")

    setattr(package, "__getattr__", complete)
    sys.modules[PACKAGE] = package
    return package


def main() -> int:
    """Run ``pyro_compute.MODULE.main(ARGS)``; return its exit status.

    The module's full dotted name is the first argument so that ``ps`` shows it, as with ``-m``.
    """
    light_package(os.path.dirname(os.path.abspath(__file__)))
    name = sys.argv[1]
    if not name.startswith(f"{PACKAGE}."):
        raise SystemExit(f"bootstrap.py: run a module of {PACKAGE}, e.g. {PACKAGE}.worker, not {name!r}")
    return int(importlib.import_module(name).main(sys.argv[2:]))


def _exit(code: int) -> None:
    """Exit without tearing the interpreter down (tens of ms of every cluster's close), output flushed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed log: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
