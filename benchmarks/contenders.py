"""Ways to map a function over inputs with two workers: pyro_compute, multiprocessing, serial, Dask, Ray.

Each contender is started before timing begins and offers ``map`` and ``map_reduce``; the
benchmarks time those calls side by side. Dask and Ray are optional: they are used only when
importable and were not installed when this module was written, so their code is untested.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import multiprocessing
import multiprocessing.pool
from typing import Any, Callable, Iterator, Sequence

from pyro_compute import LocalCluster, Pool

from .harness import worker_env

WORKERS = 2
WORKLOADS = "benchmarks.workloads"


class Contender:
    """Serial built-in ``map``; the base class of the parallel contenders."""

    label = "serial map"

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """Results of ``fn`` over ``items`` in input order."""
        return list(map(fn, items))

    def map_reduce(self, fn: Callable[[Any], Any], op: Callable[[Any, Any], Any],
                   items: Sequence[Any]) -> Any:
        """``fn`` over ``items`` folded with ``op``."""
        return functools.reduce(op, self.map(fn, items))

    def close(self) -> None:
        """Release processes and connections."""


class PyroCompute(Contender):
    """pyro_compute: ``Pool.map`` / ``Pool.map_reduce`` over a running cluster."""

    label = "pyro_compute Pool"

    def __init__(self, cluster: LocalCluster) -> None:
        self.pool = Pool(cluster=cluster)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``list(pool.map(fn, items))``."""
        return list(self.pool.map(fn, items))

    def map_reduce(self, fn: Callable[[Any], Any], op: Callable[[Any, Any], Any],
                   items: Sequence[Any]) -> Any:
        """``pool.map_reduce(fn, op, items)``: folds results as they arrive."""
        return self.pool.map_reduce(fn, op, items)

    def close(self) -> None:
        """Shut the pool down (the cluster belongs to the caller)."""
        self.pool.shutdown()


class Multiprocessing(Contender):
    """``multiprocessing.Pool(2).map`` with its default chunksize."""

    label = f"multiprocessing.Pool({WORKERS})"

    def __init__(self) -> None:
        self.pool = multiprocessing.Pool(WORKERS)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``pool.map(fn, items)``."""
        return self.pool.map(fn, items)

    def close(self) -> None:
        """Terminate the worker processes."""
        self.pool.terminate()
        self.pool.join()


class Dask(Contender):
    """``dask.distributed`` with two single-threaded worker processes (optional, untested)."""

    label = f"dask.distributed ({WORKERS} procs)"

    def __init__(self) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1,
                                                processes=True, dashboard_address=None)
        self.client = distributed.Client(self.cluster)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``client.gather(client.map(...))``; ``pure=False`` or equal inputs would run once."""
        return self.client.gather(self.client.map(fn, items, pure=False))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the client and its cluster."""
        self.client.close()
        self.cluster.close()


class Ray(Contender):
    """Ray remote functions on a two-CPU local instance (optional, untested)."""

    label = f"ray ({WORKERS} cpus)"

    def __init__(self) -> None:
        import ray

        self.ray = ray
        ray.init(num_cpus=WORKERS, include_dashboard=False, runtime_env={"env_vars": worker_env()})

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``ray.get([remote(fn).remote(x) for x in items])``."""
        remote = self.ray.remote(fn)
        return self.ray.get([remote.remote(x) for x in items])  # type: ignore[no-any-return]

    def close(self) -> None:
        """Shut the local Ray instance down."""
        self.ray.shutdown()


OPTIONAL = {"distributed": Dask, "ray": Ray}


def cluster(n_workers: int = WORKERS) -> LocalCluster:
    """A LocalCluster whose workers may run ``benchmarks.workloads``."""
    return LocalCluster(n_workers, allow_modules=[WORKLOADS], env=worker_env())


def optional_contenders(notes: list[str]) -> list[Contender]:
    """Dask and Ray contenders where importable; a note for each one skipped."""
    found = []
    for module, kind in OPTIONAL.items():
        if importlib.util.find_spec(module) is None:
            notes.append(f"{kind.label}: not importable here, skipped")
        else:
            found.append(kind())
    return found


@contextlib.contextmanager
def contenders(serial: bool = True, optional: bool = True,
               notes: list[str] | None = None) -> Iterator[list[Contender]]:
    """pyro_compute on a fresh 2-worker cluster, multiprocessing, and optionally serial/Dask/Ray.

    The multiprocessing pool forks before the cluster and the pyro_compute Pool start any
    threads. Start-up of every contender happens here, outside the timed calls.
    """
    started: list[Contender] = [Multiprocessing()]
    local = None
    try:
        local = cluster()
        started.insert(0, PyroCompute(local))
        if serial:
            started.append(Contender())
        if optional:
            started += optional_contenders(notes if notes is not None else [])
        yield started
    finally:
        for c in started:
            c.close()
        if local is not None:
            local.close()
