"""print and logging inside tasks appear on the client's terminal, prefixed by the worker.

Run: python -m pyro_compute -n 2 clients/scoop_examples/output.py
"""
import logging
import sys

from pyro_compute import futures

log = logging.getLogger("example")


def noisy(x):
    print(f"task {x} says hello")
    print(f"task {x} warns", file=sys.stderr)
    log.warning("task %d logged", x)
    return x + 1


if __name__ == "__main__":
    print("results", list(futures.map(noisy, range(4))))
