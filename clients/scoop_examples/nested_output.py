"""Output of tasks nested on another worker reaches the client's terminal too.

Each line is prefixed by the workers it came through, the last being the one that ran the task.
Run: python -m pyro_compute -n 2 clients/scoop_examples/nested_output.py
"""
import logging
import sys
import time

from pyro_compute import futures

log = logging.getLogger("example")


def child(i):
    print(f"child {i} says hello")
    log.warning("child %d logged", i)
    return i, futures.worker()


def parent(n):
    print(f"parent on {futures.worker()}")
    fs = [futures.submit(child, i) for i in range(n)]
    time.sleep(1.0)  # keep this worker busy, so the other one takes the children
    return [f.result() for f in fs]


if __name__ == "__main__":
    ran = futures.submit(parent, 4).result()
    print("ran", " ".join(f"{i}:{w}" for i, w in ran))
