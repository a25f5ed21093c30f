"""The public API is exactly what __all__ says."""
import pyro_compute
from pyro_compute import futures


def test_all_lists_the_public_names() -> None:
    public = {n for n in dir(pyro_compute) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pyro_compute, n)).__name__ == "module"}
    assert set(pyro_compute.__all__) == public - modules


def test_futures_module_offers_scoops_api() -> None:
    for name in ("map", "map_as_completed", "mapReduce", "submit", "as_completed", "wait", "shutdown"):
        assert callable(getattr(futures, name)), name


def test_futures_functions_take_scoops_parameters() -> None:
    """SCOOP's signatures (scoop/futures.py), so that changing the import is all a script needs.

    The values travelling through them are checked in test_promises.py.
    """
    import inspect
    params = {name: [(p.name, p.kind.name) for p in inspect.signature(getattr(futures, name)).parameters.values()]
              for name in ("map", "map_as_completed", "mapReduce", "submit", "as_completed", "wait")}
    assert params["map"] == params["map_as_completed"] == [
        ("func", "POSITIONAL_OR_KEYWORD"), ("iterables", "VAR_POSITIONAL"), ("kwargs", "VAR_KEYWORD")]
    assert params["mapReduce"] == [("mapFunc", "POSITIONAL_OR_KEYWORD"), ("reductionOp", "POSITIONAL_OR_KEYWORD"),
                                   ("iterables", "VAR_POSITIONAL"), ("kwargs", "VAR_KEYWORD")]
    assert params["submit"] == [("func", "POSITIONAL_OR_KEYWORD"), ("args", "VAR_POSITIONAL"),
                                ("kwargs", "VAR_KEYWORD")]
    assert [n for n, _ in params["as_completed"]] == ["fs", "timeout"]
    assert [n for n, _ in params["wait"]] == ["fs", "timeout", "return_when"]
    assert inspect.signature(futures.wait).parameters["return_when"].default == futures.ALL_COMPLETED


def test_clients_do_not_import_numba() -> None:
    import subprocess
    import sys
    code = "import sys, pyro_compute, pyro_compute.futures; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
