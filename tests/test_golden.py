"""Golden values: the random streams pinned to literals, so any change to them fails on purpose.

Every number below was produced once by the code as of issue 15 (the π stream was checked
bit-identical on Python 3.9-3.13 and numba 0.60/0.68). Users rely on "same seed, same answer"
across versions and machines, so CHANGING ANY OF THESE NUMBERS IS A DOCUMENTED, VERSIONED EVENT:
bump the version, say in the changelog which streams changed and why, and only then update
the literals. A failure here is never fixed by pasting the new output.

The determinism tests elsewhere compare the code with itself; these compare it with the past.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator

import numpy as np
import pytest

from pyro_compute import Pool, estimate_pi, kernels
from pyro_compute.cli import main
from pyro_compute.cluster import LocalCluster

T = 60
U64 = np.uint64

# (samples, seed) -> hits of kernels.pi_hits. Covers a single point, partial and full lane
# rounds (LANES = 32), the seed edges 0 and 2**64 - 1, and seeds above 2**63.
PI_HITS = [
    (1, 0, 1),
    (31, 1, 25),
    (32, 1, 26),
    (33, 7, 24),
    (1000, 1, 795),
    (10**6, 0, 785389),
    (10**6, 42, 785446),
    (2**25, 0, 26356726),
    (10**7, 2**63, 7851190),
    (10**7, 2**64 - 1, 7856456),
    (10**8, 5, 78537676),
]


@pytest.mark.parametrize("samples,seed,hits", PI_HITS, ids=[f"{n}-{s}" for n, s, _ in PI_HITS])
def test_pi_hits_stream_is_pinned(samples: int, seed: int, hits: int) -> None:
    assert kernels.pi_hits(samples, U64(seed)) == hits


def test_pi_hits_does_not_depend_on_the_seed_type() -> None:
    # The Evaluator passes np.uint64; a local caller may pass a Python int.
    assert kernels.pi_hits(10**6, 42) == kernels.pi_hits(10**6, U64(42)) == 785446


# integrand code, samples, seed, lower, upper -> (n, sum, sum of squares).
# "ball" and "sum_squares" use only + and *, so they are pinned bit for bit (float.hex);
# "gaussian" and "sin_product" go through libm's exp/sin, which may differ by an ulp between C
# libraries, so they are pinned to 1e-12 relative (a changed stream moves them by percents).
EXACT = [
    (1, 100_000, 5, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], 100_000, "0x1.9b6c000000000p+18", "0x1.9b6c000000000p+21"),
    (3, 77, 2**64 - 1, [-1.0, 0.0], [2.0, 0.5], 77, 125.80634037342008, 436.5633744972035),
]
LIBM = [
    (0, 100_000, 3, [0.0, 0.0], [1.0, 1.0], 100_000, "0x1.b42c9b5471b4fp+15", "0x1.180d5af631d3ap+15"),
    (2, 1001, 9, [0.0], [math.pi], 1001, 1986.653589425924, 4899.811009424152),
]


def _float(value: float | str) -> float:
    return float.fromhex(value) if isinstance(value, str) else value


def _integrate(code: int, samples: int, seed: int, lower: list[float], upper: list[float]) -> tuple[int, float, float]:
    n, total, total_sq = kernels.integrate(code, samples, U64(seed), np.array(lower), np.array(upper))
    return int(n), float(total), float(total_sq)


@pytest.mark.parametrize("case", EXACT, ids=["ball-3d", "sum_squares-2d"])
def test_integrate_stream_is_pinned_bit_for_bit(case: tuple[Any, ...]) -> None:
    code, samples, seed, lower, upper, n, total, total_sq = case
    assert _integrate(code, samples, seed, lower, upper) == (n, _float(total), _float(total_sq))


@pytest.mark.parametrize("case", LIBM, ids=["gaussian-2d", "sin_product-1d"])
def test_integrate_stream_is_pinned_to_an_ulp_or_so(case: tuple[Any, ...]) -> None:
    code, samples, seed, lower, upper, n, total, total_sq = case
    got = _integrate(code, samples, seed, lower, upper)
    assert got[0] == n
    assert got[1:] == pytest.approx((_float(total), _float(total_sq)), rel=1e-12, abs=0)


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=cluster) as p:
        yield p


def test_integrate_through_a_worker_is_pinned(pool: Pool) -> None:
    reply: dict[str, Any] = pool.submit("integrate", "gaussian", 100_000, seed=3, lower=0.0, upper=1.0, dims=2).result(timeout=T)
    assert reply["n"] == 100_000
    assert (reply["sum"], reply["sumsq"]) == pytest.approx(
        (_float("0x1.b42c9b5471b4fp+15"), _float("0x1.180d5af631d3ap+15")), rel=1e-12, abs=0)


def test_map_seed_derivation_is_pinned(pool: Pool) -> None:
    """``map(seed=7)``: task i runs with child i of SeedSequence(7); the hits pin that chain."""
    assert list(pool.map("pi_hits", [1000, 10**6, 33], seed=7, timeout=T)) == [792, 786098, 28]


# (samples, seed) -> hits of estimate_pi without a tolerance: pins the task split
# (TASK_SAMPLES), the per-task seed derivation and the kernel together.
ESTIMATES = [
    (12_345, 3, 9717),                  # one task smaller than TASK_SAMPLES
    (10**8, 5, 78540195),
    (3 * 2**25 + 7, 2024, 79062455),    # three full tasks and a 7-sample tail
    (10**8, 2**63 + 5, 78531981),       # a seed above 2**63
    (10**9, 1, 785393511),              # the README's example
]


@pytest.mark.parametrize("samples,seed,hits", ESTIMATES, ids=[f"{n}-{s}" for n, s, _ in ESTIMATES])
def test_estimate_pi_without_tol_is_pinned(pool: Pool, samples: int, seed: int, hits: int) -> None:
    est = estimate_pi(pool, samples, seed)
    assert (est.hits, est.samples, est.seed) == (hits, samples, seed)
    assert est.pi == 4.0 * hits / samples


def test_cli_pi_json_hits_are_pinned(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_COMPUTE_HMAC_KEY", cluster.settings.hmac_key)
    assert main(["pi", "--seed", "1", "--samples", "1e9", "--ns", cluster.ns, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["hits"], out["samples"], out["seed"]) == (785393511, 10**9, 1)
    assert out["pi"] == 3.141574044
