"""B8 (numpy array round trip) and B9 (a map sharing a 50 MiB array, with and without broadcast).

    python -m benchmarks.arrays                 # B8 and B9, median of 3, Markdown table on stdout
    python -m benchmarks.arrays --only B8 --repeat 5 --sizes 1,10,50,200,1024

B8 sends a float64 array to one worker and back (``Pool.submit(identity, a).result()``); the rate
counts both ways (2 x size / seconds). Beside it: ``multiprocessing.Pool(1).apply`` (pickle 5
through a pipe), one loopback TCP stream moving the same bytes between two processes (the
ceiling), Pyro4's serpent (what pool calls used before issue 12, up to 50 MiB) and, when
importable, Dask and Ray. B9 maps 1,000 cheap tasks that each read a shared 50 MiB array.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import Pyro4

from benchmarks import array_tasks
from benchmarks.harness import Case, OtherLoad, Report, Row, Target, log, side_by_side, table, worker_env
from pyro_compute import LocalCluster, Pool, bulk
from pyro_compute.wire import register_wire

MiB = 1 << 20
SIZES = (1, 10, 50, 200, 1024)
SERPENT_MAX = 50  # MiB: serpent's base64 path takes seconds beyond that


def _array(mib: int) -> np.ndarray:
    return np.random.default_rng(mib).random(mib * MiB // 8)


def _rate(mib: int, case: Callable[[], object]) -> Case:
    def timed() -> tuple[float]:
        start = time.perf_counter()
        case()
        return (2 * mib / (time.perf_counter() - start),)
    return timed


@contextlib.contextmanager
def _echo_server() -> Iterator[tuple[str, int]]:
    """A child process that echoes length-prefixed blobs on loopback TCP: the stream ceiling."""
    srv = socket.create_server(("127.0.0.1", 0))
    proc = multiprocessing.get_context("fork").Process(target=_echo, args=(srv,), daemon=True)
    proc.start()
    try:
        yield srv.getsockname()
    finally:
        proc.terminate()
        proc.join(5)
        srv.close()


def _echo(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    buf = bytearray()
    while True:
        head = conn.recv(8, socket.MSG_WAITALL)
        if len(head) < 8:
            return
        n = int.from_bytes(head, "little")
        if len(buf) < n:
            buf = bytearray(n)
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            got += conn.recv_into(view[got:], n - got)
        conn.sendall(view)


def _stream_case(address: tuple[str, int], a: np.ndarray) -> Callable[[], object]:
    sock = socket.create_connection(address)
    back = np.empty_like(a)
    view = memoryview(back.view(np.uint8).reshape(-1))  # type: ignore[arg-type]

    def run() -> None:
        sock.sendall(a.nbytes.to_bytes(8, "little"))
        sock.sendall(memoryview(a.view(np.uint8).reshape(-1)))  # type: ignore[arg-type]
        got = 0
        while got < a.nbytes:
            got += sock.recv_into(view[got:], a.nbytes - got)
    return run


def _serpent_case(uri: str, hmac: bytes | None, a: np.ndarray) -> Callable[[], object]:
    proxy = Pyro4.Proxy(uri)
    proxy._pyroSerializer = "serpent"
    proxy._pyroHmacKey = hmac
    proxy._pyroTimeout = 600

    def run() -> None:
        reply = proxy.batch("benchmarks.array_tasks:identity", [[a]])
        assert reply["results"][0].shape == a.shape
    return run


def _contenders(a: np.ndarray, mib: int) -> tuple[dict[str, Case], list[str], list[Callable[[], None]]]:
    """Dask and Ray cases when importable (never run where this was written: neither was installed)."""
    cases: dict[str, Case] = {}
    notes, closers = [], []
    try:
        from dask.distributed import Client, LocalCluster as DaskCluster
    except ImportError:
        notes.append("dask.distributed: not importable here, skipped")
    else:
        dask = Client(DaskCluster(n_workers=1, threads_per_worker=1, processes=True))
        closers.append(dask.close)
        cases["dask.distributed (1 worker)"] = _rate(
            mib, lambda: dask.submit(array_tasks.identity, a, pure=False).result())
    try:
        import ray
    except ImportError:
        notes.append("ray: not importable here, skipped")
    else:
        ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
        closers.append(ray.shutdown)
        remote = ray.remote(array_tasks.identity)
        cases["ray (1 cpu)"] = _rate(mib, lambda: ray.get(remote.remote(a)))
    return cases, notes, closers


def round_trip(repeat: int, sizes: tuple[int, ...] = SIZES) -> Report:
    """B8: array round trip through one worker, beside multiprocessing, a TCP stream and the rest."""
    report = Report()
    register_wire()
    available = psutil.virtual_memory().available // MiB
    with LocalCluster(1, allow_modules=["benchmarks.array_tasks"], env=worker_env()) as cluster, \
            Pool(cluster=cluster) as pool, multiprocessing.get_context("fork").Pool(1) as mp:
        uri = next(iter(cluster.registered().values()))
        for mib in sizes:
            if 8 * mib > available:
                report.notes.append(f"B8 {mib} MiB: skipped, {available} MiB of memory available (needs ~8x)")
                continue
            log(f"B8: {mib} MiB")
            report.extend(_one_size(pool, mp, uri, cluster.settings.hmac_bytes, mib, repeat))
    return report


def _one_size(pool: Pool, mp: Any, uri: str, hmac: bytes | None, mib: int, repeat: int) -> Report:
    a = _array(mib)
    label = "pyro_compute Pool.submit"
    with _echo_server() as address:
        cases: dict[str, Case] = {
            label: _rate(mib, lambda: pool.submit(array_tasks.identity, a).result(timeout=600)),
            "multiprocessing.Pool(1).apply": _rate(mib, lambda: mp.apply(array_tasks.identity, (a,))),
            "one loopback TCP stream": _rate(mib, _stream_case(address, a)),
        }
        if mib <= SERPENT_MAX:
            cases["Pyro4 serpent (before)"] = _rate(mib, _serpent_case(uri, hmac, a))
        extra, notes, closers = _contenders(a, mib)
        cases.update(extra)
        try:
            with OtherLoad() as load:
                med = side_by_side(cases, repeat)
        finally:
            for close in closers:
                close()
    targets = (Target(">=", 1000), Target(">=", 6, on="ratio")) if mib == 50 else ()
    report = Report(notes=notes + [f"B8 {mib} MiB: other processes kept {load.cores:.2f} of 2 cores busy meanwhile"])
    for name, (rate,) in med.items():
        if name != label:
            row_targets = targets if name.startswith("multiprocessing") else ()
            report.rows.append(Row("B8", f"{mib} MiB round trip", med[label][0], "MiB/s", name, rate, row_targets))
    return report


CHUNK = 10  # tasks per call in B9


def shared_array(repeat: int, tasks: int = 1000, mib: int = 50) -> Report:
    """B9: a map of ``tasks`` tasks that each read one shared ``mib`` MiB array, with and without broadcast."""
    a = _array(mib)
    expected = [float(a[(i * 7919) % a.size]) for i in range(tasks)]
    with LocalCluster(2, allow_modules=["benchmarks.array_tasks"], env=worker_env()) as cluster, \
            Pool(cluster=cluster) as pool:
        sent: dict[str, list[float]] = {"broadcast": [], "argument": []}

        def run(kind: str) -> tuple[float]:
            before, start = bulk.sent_bytes, time.perf_counter()
            if kind == "broadcast":
                with pool.broadcast(a) as h:
                    got = list(pool.map(array_tasks.pick, [h] * tasks, range(tasks), chunksize=CHUNK, timeout=600))
            else:
                got = list(pool.map(array_tasks.pick, [a] * tasks, range(tasks), chunksize=CHUNK, timeout=600))
            seconds = time.perf_counter() - start
            assert got == expected
            sent[kind].append((bulk.sent_bytes - before) / MiB)
            return (seconds,)
        with OtherLoad() as load:
            med = side_by_side({"broadcast": lambda: run("broadcast"), "argument": lambda: run("argument")}, repeat)
    mib_sent = {k: sorted(v)[len(v) // 2] for k, v in sent.items()}
    return Report([Row("B9", f"{tasks} tasks sharing {mib} MiB: time", med["broadcast"][0], "s",
                       "same array as an argument", med["argument"][0]),
                   Row("B9", f"{tasks} tasks sharing {mib} MiB: sent", mib_sent["broadcast"], "MiB",
                       "same array as an argument", mib_sent["argument"])],
                  [f"B9: 2 workers, chunks of {CHUNK} tasks (as for tasks of real work; the pool would put these "
                   f"cheap ones in one chunk); an array the tasks of one chunk share goes once per chunk; bytes "
                   f"counted on the pool's connections (messages and frames)",
                   f"B9: other processes kept {load.cores:.2f} of 2 cores busy meanwhile"])


def main(argv: list[str] | None = None) -> int:
    """Run B8 and B9 and print the table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arrays", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="B8,B9")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="B8 sizes in MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = Report()
    only = set(args.only.split(","))
    if "B8" in only:
        report.extend(round_trip(args.repeat, tuple(int(s) for s in args.sizes.split(","))))
    if "B9" in only:
        log("B9")
        report.extend(shared_array(args.repeat))
    if args.json:
        print(json.dumps({"rows": [r.as_dict() for r in report.rows], "notes": report.notes}, indent=1))
    else:
        print(table(report.rows))
        print("\nratio = pyro_compute / baseline; rates count both directions.")
        for note in report.notes:
            print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
