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


def test_clients_do_not_import_numba() -> None:
    import subprocess
    import sys
    code = "import sys, pyro_compute, pyro_compute.futures; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
