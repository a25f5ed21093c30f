"""Sets and frozensets as task arguments arrive as sets and frozensets (issue 14), by every path."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import remote_tasks

from pyro_compute import Pool
from pyro_compute.chunk import Chunk
from pyro_compute.cluster import LocalCluster
from pyro_compute.sending import encode_rows, packing

T = 60
CASES: list[Any] = [
    {1, 2, 3},
    frozenset({"a", "b"}),
    set(),
    frozenset(),
    [{1}, frozenset({2}), ({3, 4},)],
    {"key": {(1, 2), (3, 4)}, "other": frozenset({1.5})},
    {frozenset({1}), frozenset({2, 3})},
    set(range(50_000)),
]


def kinds(x: Any) -> Any:
    """The value's exact type names, recursively, so a set turned list or tuple shows."""
    if isinstance(x, dict):
        return {k: kinds(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [type(x).__name__, sorted(map(repr, map(kinds, x)))]
    return type(x).__name__


@pytest.mark.parametrize("arg", CASES, ids=lambda a: type(a).__name__ + str(len(a)))
def test_a_set_argument_arrives_as_the_same_set(cluster: LocalCluster, arg: Any) -> None:
    with Pool(cluster=cluster) as pool:
        assert pool.submit(remote_tasks.type_name, arg).result(timeout=T) == f"builtins.{type(arg).__name__}"
        back = pool.submit(remote_tasks.identity, arg).result(timeout=T)
        assert back == arg and kinds(back) == kinds(arg)
        mapped = list(pool.map(remote_tasks.identity, [arg, arg, 7], timeout=T))
        assert mapped == [arg, arg, 7] and kinds(mapped[0]) == kinds(arg)
        args, kwargs = pool.submit(remote_tasks.call_args, arg, k=arg).result(timeout=T)
        assert kinds(args[0]) == kinds(arg) and kinds(kwargs["k"]) == kinds(arg)


def test_sets_travel_packed_with_marshal_and_numpy_still_with_serpent() -> None:
    def chunk(*args: Any, **kwargs: Any) -> Chunk:
        return Chunk(("m:f", None), [args], kwargs or None, None, single=True)

    assert packing(chunk(1, "x")) == "plain"
    assert packing(chunk({1, 2}, frozenset({3}))) == "sets"
    assert packing(chunk(1, k={1})) == "plain"
    assert packing(chunk(np.int64(3))) is None  # marshal would turn a numpy scalar into bytes
    assert packing(chunk({1}, k=np.float64(1.0))) is None
    rows = [({5, 4}, frozenset({1}))]
    import marshal
    assert marshal.loads(encode_rows(rows, "sets")) == rows
    assert type(marshal.loads(encode_rows(rows, "sets"))[0][1]) is frozenset
