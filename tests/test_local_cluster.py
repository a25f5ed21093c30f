"""LocalCluster's own contract: what it accepts as a worker count, and that it starts nothing otherwise."""
from __future__ import annotations

import pytest

from conftest import children
from pyro_compute.cli import main
from pyro_compute.cluster import LocalCluster


@pytest.mark.parametrize("count", [0, -1, -8])
def test_zero_or_negative_workers_is_a_value_error_and_starts_nothing(count: int) -> None:
    before = {p.pid for p in children()}
    with pytest.raises(ValueError, match="at least one worker"):
        LocalCluster(count)
    assert {p.pid for p in children()} == before


@pytest.mark.parametrize("count", [1.5, "2", True])
def test_a_count_that_is_no_integer_is_a_type_error(count: object) -> None:
    with pytest.raises(TypeError, match="n_workers must be an integer"):
        LocalCluster(count)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", ["0", "-2"])
def test_cli_refuses_zero_or_negative_workers(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pi", "--samples", "10", "-n", count])
    assert info.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_one_worker_starts_and_stops() -> None:
    with LocalCluster(1) as c:
        assert len(c.registered()) == 1 and len(c.workers) == 1
        assert c.workers[0].poll() is None
    assert c.workers[0].poll() is not None
