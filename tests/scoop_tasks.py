"""Functions the SCOOP-parity tests run on workers (allowed as module ``scoop_tasks``)."""
from __future__ import annotations

import os
import time
from typing import Any

from pyro_compute import shared


def const_times(x: int, name: str) -> tuple[int, Any]:
    """This worker's pid and x times the shared constant ``name``."""
    time.sleep(0.01)
    return os.getpid(), x * shared.getConst(name, timeout=1.0)


def call_const(name: str, *args: Any) -> Any:
    """Call the shared constant ``name`` (a function) with ``args``."""
    return shared.getConst(name, timeout=1.0)(*args)
