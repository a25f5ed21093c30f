"""SCOOP's shared constants: set once in the client, read by tasks on every worker.

Run: python -m pyro_compute -n 2 clients/scoop_examples/constants.py
"""
from pyro_compute import futures, shared


def scaled(x):
    """x times the shared factor, plus the length of the shared table."""
    return x * shared.getConst("factor") + len(shared.getConst("table", timeout=5))


def nested(x):
    """Reads a constant in a nested task too."""
    return futures.submit(scaled, x).result()


if __name__ == "__main__":
    shared.setConst(factor=7, table=list(range(10)))
    try:
        shared.setConst(factor=8)
    except TypeError as e:
        print("refused:", "set already" in str(e))
    print("constants", list(futures.map(scaled, range(6))), sum(futures.map(nested, range(4))),
          shared.getConst("factor"), shared.getConst("missing", timeout=0.01))
