"""Functions the promise tests run on fresh workers (started with ``--allow-module promise_tasks``)."""
from __future__ import annotations

import os
import time


def logged_sleep(path: str, seconds: float) -> int:
    """Append ``start PID`` to ``path``, sleep, append ``end PID``; return the PID.

    The file shows how many times the task ran and where, retries included.
    """
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"end {os.getpid()}\n")
    return os.getpid()
