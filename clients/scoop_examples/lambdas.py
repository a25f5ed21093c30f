"""Lambdas, closures, partials and objects of classes defined here, through futures.

Run: python -m pyro_compute -n 2 clients/scoop_examples/lambdas.py
"""
import functools

from pyro_compute import futures


class Point:
    """An object of a class defined in the script."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


def scale(factor, x):
    return factor * x


def norm2(p):
    return p.norm2()


def moved(p):
    """A Point comes back rebuilt from its state (a client never decodes pickle)."""
    return Point(p.x + 1, p.y)


def main():
    offset = 10
    shifted = list(futures.map(lambda x: x + offset, range(5)))          # closure over a local
    scaled = list(futures.map(functools.partial(scale, 3), range(5)))    # partial, by reference
    lam = list(futures.map(functools.partial(lambda a, b: a * b, 2), range(5)))  # partial of a lambda
    norms = list(futures.map(norm2, [Point(i, i + 1) for i in range(5)]))
    back = list(futures.map(moved, [Point(i, -i) for i in range(3)]))
    print("lambdas", shifted, scaled, lam, norms)
    print("objects", [(p.x, p.y) for p in back], all(type(p) is Point for p in back))


if __name__ == "__main__":
    main()
