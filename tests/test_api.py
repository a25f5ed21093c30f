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
