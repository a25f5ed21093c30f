"""Every demo notebook runs top to bottom against an embedded LocalCluster, and shows what it claims.

Each notebook runs once, in memory, between two probe cells: the first keeps every matplotlib
figure the notebook makes, the last prints their titles, labels, scales and lines as JSON, so
the tests can look at the figures the reader sees.
"""
from __future__ import annotations

import functools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nbclient  # in the [test] extras: a missing one is an error, not a skip
import nbformat
import pytest

HERE = Path(__file__).resolve().parents[1] / "clients" / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
PLOTTING = ("monte_carlo_pi", "map_and_mapreduce")
MARK = "FIGURES-PROBE "

# plt.show() in the inline backend closes the figures it shows before the cell ends, so keep each
# figure as it is made. matplotlib.figure does not import pyplot: the notebook still picks the backend.
KEEP_FIGURES = '''
def _probe_keep_figures():
    import matplotlib.figure
    seen = []
    make = matplotlib.figure.Figure.__init__
    def keep(self, *args, **kwargs):
        make(self, *args, **kwargs)
        seen.append(self)
    matplotlib.figure.Figure.__init__ = keep
    return seen
_probe_figures = _probe_keep_figures()
'''

DESCRIBE_FIGURES = '''
import json as _probe_json
def _probe_axes(ax):
    return {"title": " ".join(ax.get_title(loc) for loc in ("left", "center", "right")).strip(),
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "lines": [{"label": line.get_label(), "x": [float(v) for v in line.get_xdata()],
                       "y": [float(v) for v in line.get_ydata()]} for line in ax.get_lines()]}
print(%r + _probe_json.dumps([[_probe_axes(ax) for ax in f.get_axes()] for f in _probe_figures]))
''' % MARK


@functools.lru_cache(maxsize=None)
def executed(path: Path) -> Any:
    """The notebook at ``path`` run top to bottom between the probe cells (once per session)."""
    book = nbformat.read(path, as_version=4)
    book.cells.insert(0, nbformat.v4.new_code_cell(KEEP_FIGURES))
    book.cells.append(nbformat.v4.new_code_cell(DESCRIBE_FIGURES))
    nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return book


def outputs(book: Any) -> list[dict[str, Any]]:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]


def figures(book: Any) -> list[list[dict[str, Any]]]:
    """Every figure the notebook drew: a list of its axes, as the last probe cell described them."""
    text = "".join(o.get("text", "") for o in book.cells[-1].outputs)
    assert MARK in text, f"the probe cell printed no figures: {book.cells[-1].outputs}"
    described: list[list[dict[str, Any]]] = json.loads(text.split(MARK, 1)[1])
    return described


def notebook(stem: str) -> Path:
    return HERE / f"{stem}.ipynb"


def test_there_are_three_notebooks_with_cleared_outputs() -> None:
    assert {p.stem for p in NOTEBOOKS} == {"transparent_rmi", "monte_carlo_pi", "map_and_mapreduce"}
    for path in NOTEBOOKS:
        assert not outputs(nbformat.read(path, as_version=4)), f"{path.name} has outputs in git"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path: Path) -> None:
    book = executed(path)  # nbclient raises CellExecutionError on any failing cell
    assert not [o for o in outputs(book) if o.get("output_type") == "error"]
    if path.stem in PLOTTING:
        assert any("image/png" in o.get("data", {}) for o in outputs(book)), "the plot was not drawn"
    if path.stem == "transparent_rmi":
        text = "".join(o.get("text", "") for o in outputs(book))
        assert "Remote traceback" in text and "samples must be between" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_output_warns_that_ipywidgets_is_missing(path: Path) -> None:
    for o in outputs(executed(path)):
        shown = o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values())
        assert "IProgress not found" not in shown, f"{path.name}: {shown[:300]}"


def test_the_pi_progress_bar_is_the_notebook_widget() -> None:
    # tqdm falls back to a text bar on stderr when ipywidgets is missing; the widget is the real one.
    kinds = {k for o in outputs(executed(notebook("monte_carlo_pi"))) for k in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in kinds, kinds


@pytest.mark.parametrize("stem", PLOTTING)
def test_every_figure_has_a_title_and_labelled_axes(stem: str) -> None:
    drawn = figures(executed(notebook(stem)))
    assert drawn and all(drawn), f"{stem} drew no axes: {drawn}"
    for axes in drawn:
        for ax in axes:
            assert ax["title"] and ax["xlabel"] and ax["ylabel"], {k: ax[k] for k in ("title", "xlabel", "ylabel")}


def test_pi_error_is_plotted_on_log_log_axes_beside_the_one_over_root_n_line() -> None:
    drawn = figures(executed(notebook("monte_carlo_pi")))
    loglog = [ax for axes in drawn for ax in axes if ax["xscale"] == ax["yscale"] == "log"]
    assert len(loglog) == 1, f"expected one log-log error plot, got {[ax['title'] for ax in loglog]}"
    lines = {line["label"]: line for line in loglog[0]["lines"]}
    reference = [line for line in lines.values() if "1/√N" in line["label"]]
    assert len(reference) == 1, list(lines)
    ref = {x: y for x, y in zip(reference[0]["x"], reference[0]["y"])}
    assert max(ref) / min(ref) >= 1e4, f"the samples span less than four decades: {sorted(ref)}"
    assert len({round(y * math.sqrt(x), 9) for x, y in ref.items()}) == 1, "the reference is not c/√N"
    reported = next(line for label, line in lines.items() if "reported" in label)
    rms = next(line for label, line in lines.items() if "root mean square" in label)
    for x, y in zip(reported["x"], reported["y"]):
        # Wilson at z = 1 is one standard error up to O(1/N): within a few per cent from 1,000 samples.
        assert 0.9 < y / ref[x] < 1.1, (x, y, ref[x])
    for x, y in zip(rms["x"], rms["y"]):
        # The RMS of 8 runs' errors is sigma * sqrt(chi2_8 / 8): outside [1/3, 3] about once in 10^6.
        assert 1 / 3 < y / ref[x] < 3, (x, y, ref[x])


def test_rmi_notebook_shows_the_diagram_of_name_server_daemon_and_proxy() -> None:
    svgs = [o["data"]["image/svg+xml"] for o in outputs(executed(notebook("transparent_rmi")))
            if "image/svg+xml" in o.get("data", {})]
    assert len(svgs) == 1, f"expected the diagram once, got {len(svgs)} SVG outputs"
    root = ET.fromstring(svgs[0])
    words = " ".join(t for t in root.itertext())
    for part in ("name server", "Pyro4 daemon", "Evaluator", "Pyro4.Proxy", "register", "lookup"):
        assert part in words, f"the diagram does not name {part!r}"
    arrows = [e for e in root.iter() if e.get("marker-end")]
    assert len(arrows) >= 5, f"the diagram has {len(arrows)} arrows, expected registration, lookup and calls"
