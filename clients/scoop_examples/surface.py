"""The rest of SCOOP's futures surface: mapScan, SIZE, worker identity, wait(timeout=-1), keywords.

Run: python -m pyro_compute -n 2 clients/scoop_examples/surface.py
"""
import operator

from pyro_compute import futures


def whoami(_):
    return futures.worker()


def square(x):
    return x * x


def power(x, exponent=2):
    return x ** exponent


if __name__ == "__main__":
    scan = futures.mapScan(str, operator.add, range(12))  # non-commutative: order matters
    print("mapScan", scan[-1], scan == [''.join(map(str, range(k + 1))) for k in range(12)])
    print("size", futures.SIZE, futures.IS_ORIGIN, futures.worker())
    names = set(futures.map(whoami, range(40), chunksize=1))
    print("workers", len(names), all(n.startswith("pyro_compute.evaluator.") for n in names))
    fs = [futures.submit(square, i) for i in range(5)]
    done, not_done = futures.wait(fs, timeout=-1)
    print("wait", len(done), len(not_done), sorted(f.result() for f in done))
    # As in SCOOP, keywords that are no map options go to every call; a kernel name takes none.
    print("keywords", list(futures.map(power, range(4), exponent=3)), futures.mapReduce(power, max, range(4), exponent=3))
    try:
        futures.map("pi_hits", [10], chunk=2)
    except TypeError as e:
        print("refused", "chunk" in str(e))
