"""Every demo notebook runs top to bottom against an embedded LocalCluster."""
from __future__ import annotations

from pathlib import Path

import nbclient  # in the [test] extras: a missing one is an error, not a skip
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "clients" / "notebooks").glob("*.ipynb"))


def execute(path: Path) -> "nbformat.NotebookNode":
    book = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return book


def outputs(book: "nbformat.NotebookNode") -> list[dict]:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]


def test_there_are_three_notebooks_with_cleared_outputs() -> None:
    assert {p.stem for p in NOTEBOOKS} == {"transparent_rmi", "monte_carlo_pi", "map_and_mapreduce"}
    for path in NOTEBOOKS:
        assert not outputs(nbformat.read(path, as_version=4)), f"{path.name} has outputs in git"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path: Path) -> None:
    book = execute(path)  # nbclient raises CellExecutionError on any failing cell
    assert not [o for o in outputs(book) if o.get("output_type") == "error"]
    if path.stem in ("monte_carlo_pi", "map_and_mapreduce"):
        assert any("image/png" in o.get("data", {}) for o in outputs(book)), "the plot was not drawn"
    if path.stem == "transparent_rmi":
        text = "".join(o.get("text", "") for o in outputs(book))
        assert "Remote traceback" in text and "samples must be between" in text
