"""Nested Monte Carlo: seeded tasks whose children get seeds derived from their own.

Run: python -m pyro_compute -n 2 clients/scoop_examples/seeded_tree.py
Prints one number that depends only on the seed, not on the worker count or timing.
"""
import random

from pyro_compute import futures


def draw(depth, seed):
    """A random number from ``seed``, plus those of two nested children."""
    own = random.Random(seed).random()
    if depth == 0:
        return own
    children = list(futures.map(draw, [depth - 1, depth - 1]))
    return own + sum(children)


if __name__ == "__main__":
    print("seeded", repr(sum(futures.map(draw, [3, 3, 3], seed=2026))))
