"""Worker-importable task functions for the benchmarks: the cookbook scripts' workloads.

Workers run only functions defined in an allowed module itself, so these thin wrappers give the
cookbook functions in ``clients/`` a home in ``benchmarks.workloads`` (allowed with
``LocalCluster(..., allow_modules=["benchmarks.workloads"])``) without copying their bodies.
"""
from __future__ import annotations

import os
import time

from clients import scoop_mapreduce, scoop_pi


def evaluate_points_in_circle(attempts: int) -> int:
    """The cookbook π task: pure-Python hit count of ``attempts`` random points."""
    return scoop_pi.evaluate_points_in_circle(attempts)  # type: ignore[no-untyped-call,no-any-return]


def simulate_workload(input_data: list[int]) -> int:
    """The cookbook mapReduce task: sleep 10 ms, then ``sum(input_data)``."""
    return scoop_mapreduce.simulateWorkload(input_data)  # type: ignore[no-untyped-call,no-any-return]


def sleep_for(seconds: float) -> int:
    """The scale benchmark's task: sleep ``seconds``, return the worker's pid (who served it)."""
    time.sleep(seconds)
    return os.getpid()
