"""The rest of SCOOP's futures surface: mapScan, SIZE, worker identity, wait(timeout=-1), options.

Run: python -m pyro_compute -n 2 clients/scoop_examples/surface.py
"""
import operator

from pyro_compute import futures


def whoami(_):
    return futures.worker()


def square(x):
    return x * x


if __name__ == "__main__":
    scan = futures.mapScan(str, operator.add, range(12))  # non-commutative: order matters
    print("mapScan", scan[-1], scan == [''.join(map(str, range(k + 1))) for k in range(12)])
    print("size", futures.SIZE, futures.IS_ORIGIN, futures.worker())
    names = set(futures.map(whoami, range(40), chunksize=1))
    print("workers", len(names), all(n.startswith("pyro_compute.evaluator.") for n in names))
    fs = [futures.submit(square, i) for i in range(5)]
    done, not_done = futures.wait(fs, timeout=-1)
    print("wait", len(done), len(not_done), sorted(f.result() for f in done))
    try:
        futures.map(square, range(3), chunk=2)
    except TypeError as e:
        print("refused", "chunk" in str(e) and "functools.partial" in str(e))
