"""Shared constants that are functions and objects of the script's classes (SCOOP's shared_example).

Run: python -m pyro_compute -n 2 clients/scoop_examples/shared_objects.py
"""
from pyro_compute import futures, shared


class Table:
    """An object of a class defined in the script: it goes to the workers by value."""

    def __init__(self, weights):
        self.weights = weights

    def score(self, word):
        return sum(self.weights.get(c, 0) for c in word)


def square(x):
    return x * x


def use(word):
    """Reads a function, a lambda and an object from the constants."""
    table = shared.getConst("table")
    return shared.getConst("transform")(table.score(word)) + shared.getConst("offset")(0)


if __name__ == "__main__":
    shared.setConst(table=Table({"a": 1, "b": 3, "c": 3}), transform=square, offset=lambda x: x + 100)
    words = ["abc", "cab", "aa", "", "bbb"]
    serial = [square(Table({"a": 1, "b": 3, "c": 3}).score(w)) + 100 for w in words]
    print("shared", list(futures.map(use, words)), serial, shared.getConst("transform") is square)
