"""SCOOP's recursive tree walk: every task submits its two children and waits on them.

Run: python -m pyro_compute -n 2 clients/scoop_examples/tree.py [DEPTH]
Prints the sum of the node values of a full binary tree walked on the workers, and the serial answer.
"""
import sys

from pyro_compute import futures


def value(node):
    """The value a node contributes (a little work, deterministic)."""
    return (node * 2654435761) % 1000


def walk(node, depth):
    """Sum of the subtree under ``node``: children walked as nested futures."""
    if depth == 0:
        return value(node)
    left = futures.submit(walk, 2 * node, depth - 1)
    right = futures.submit(walk, 2 * node + 1, depth - 1)
    return value(node) + left.result() + right.result()


def walk_serial(node, depth):
    """The same sum, computed here."""
    if depth == 0:
        return value(node)
    return value(node) + walk_serial(2 * node, depth - 1) + walk_serial(2 * node + 1, depth - 1)


if __name__ == "__main__":
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print("tree", depth, futures.submit(walk, 1, depth).result(timeout=600), walk_serial(1, depth))
