"""The Numba kernels called directly: determinism, seed independence and the statistics they promise."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pyro_compute import kernels
from pyro_compute.kernels import LANES

P_HIT = math.pi / 4


def seeds(n: int, entropy: int = 20240601) -> np.ndarray:
    """``n`` well-mixed 64-bit seeds, as a pool derives them from one user seed."""
    return np.random.SeedSequence(entropy).generate_state(n, np.uint64)


def hits(samples: int, seed_list: np.ndarray) -> np.ndarray:
    return np.array([kernels.pi_hits(samples, s) for s in seed_list], dtype=np.float64)


def box(dims: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full(dims, lo, dtype=np.float64), np.full(dims, hi, dtype=np.float64)


def estimate(name: str, samples: int, seed: int, lower: np.ndarray, upper: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of one ``integrate`` call."""
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index(name), samples, np.uint64(seed),
                                           lower, upper)
    assert n == samples
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean * mean, 0.0) / n)


# -- pi_hits: determinism ------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [1, LANES - 1, LANES, LANES + 1, 1000, 10**5 + 7])
def test_pi_hits_same_samples_and_seed_give_identical_hits(samples: int) -> None:
    for seed in seeds(5):
        first = kernels.pi_hits(samples, seed)
        assert [kernels.pi_hits(samples, seed) for _ in range(3)] == [first] * 3


def test_pi_hits_int_and_uint64_seed_are_the_same_seed() -> None:
    # The Evaluator converts seeds to np.uint64; a client checking against a local int seed
    # must get the same answer.
    for seed in (0, 1, 7, 2**31, 2**63 - 1):
        assert kernels.pi_hits(10_000, seed) == kernels.pi_hits(10_000, np.uint64(seed))


def test_pi_hits_accepts_the_whole_uint64_seed_range() -> None:
    top = kernels.pi_hits(10_000, np.uint64(2**64 - 1))
    assert 0 < top < 10_000
    assert top == kernels.pi_hits(10_000, np.uint64(2**64 - 1))


def test_pi_hits_returns_a_python_int() -> None:
    assert type(kernels.pi_hits(1000, 3)) is int


# -- pi_hits: remainder path (samples not a multiple of LANES) ------------------------------------

def test_pi_hits_zero_samples_is_zero() -> None:
    assert [kernels.pi_hits(0, s) for s in seeds(10)] == [0] * 10


@pytest.mark.parametrize("samples", [1, 2, 5, 17, LANES - 1, LANES, LANES + 1, 2 * LANES + 31, 1000])
def test_pi_hits_small_samples_are_bounded_and_deterministic(samples: int) -> None:
    for seed in seeds(50):
        h = kernels.pi_hits(samples, seed)
        assert 0 <= h <= samples
        assert h == kernels.pi_hits(samples, seed)


@pytest.mark.parametrize("samples", [1, 7, LANES - 1, LANES + 1, 3 * LANES + 17])
def test_pi_hits_remainder_samples_are_counted(samples: int) -> None:
    # If the tail (samples % LANES) were dropped or double counted the mean would move by
    # at least P_HIT per call, which is > 10 standard errors of this mean.
    many = hits(samples, seeds(3000, entropy=samples))
    se = math.sqrt(samples * P_HIT * (1 - P_HIT) / len(many))
    assert abs(many.mean() - samples * P_HIT) < 4 * se


def test_pi_hits_different_lengths_differ_for_the_same_seed() -> None:
    seed = seeds(1)[0]
    assert len({kernels.pi_hits(n, seed) for n in range(990, 1010)}) > 5


# -- pi_hits: seeds ------------------------------------------------------------------------------

def test_pi_hits_different_seeds_give_different_hits() -> None:
    results = hits(10**6, seeds(200))
    # Binomial(10**6, pi/4) has sd ~410: about 14 of the 19,900 pairs share a value by chance.
    assert len(set(results)) > 170


@pytest.mark.parametrize("kind", ["spawned", "consecutive"])
def test_pi_hits_of_different_seeds_are_uncorrelated(kind: str) -> None:
    pairs = 1000
    if kind == "spawned":
        children = np.random.SeedSequence(99).spawn(2 * pairs)
        all_seeds = np.array([c.generate_state(1, np.uint64)[0] for c in children])
        a, b = hits(10**4, all_seeds[:pairs]), hits(10**4, all_seeds[pairs:])
    else:
        # Users do pass seeds 0, 1, 2, ...: neighbouring integers must give unrelated streams.
        a = hits(10**4, np.arange(pairs, dtype=np.uint64))
        b = hits(10**4, np.arange(1, pairs + 1, dtype=np.uint64))
    r = np.corrcoef(a, b)[0, 1]
    assert abs(r) < 4 / math.sqrt(pairs)


def test_pi_hits_is_binomial_with_p_pi_over_4() -> None:
    n = 10**5
    results = hits(n, seeds(400))
    expected_var = n * P_HIT * (1 - P_HIT)
    z = (results.mean() - n * P_HIT) / math.sqrt(expected_var / len(results))
    assert abs(z) < 4
    # (k-1) s^2 / sigma^2 is chi-square with k-1 = 399 degrees of freedom: sd of the ratio ~0.07.
    assert 0.75 < results.var(ddof=1) / expected_var < 1.3


def test_pi_hits_one_long_run_estimates_pi() -> None:
    n = 10**7
    h = kernels.pi_hits(n, seeds(1)[0])
    se = 4 * math.sqrt(P_HIT * (1 - P_HIT) / n)
    assert abs(4 * h / n - math.pi) < 5 * se


# -- integrate -----------------------------------------------------------------------------------

def test_integrate_ball_volume_in_three_dimensions() -> None:
    mean, se = estimate("ball", 10**6, 11, *box(3, -1.0, 1.0))
    assert abs(mean - 4 * math.pi / 3) < 5 * se
    assert 0 < se < 0.01


@pytest.mark.parametrize("dims", [1, 2, 5, 16])
def test_integrate_sum_squares_over_unit_cube_is_d_over_3(dims: int) -> None:
    mean, se = estimate("sum_squares", 200_000, dims, *box(dims, 0.0, 1.0))
    assert abs(mean - dims / 3) < 5 * se


def test_integrate_scales_by_the_box_volume() -> None:
    # integral of x^2 over [0, 2] is 8/3: catches a missing or wrong volume factor.
    mean, se = estimate("sum_squares", 200_000, 3, *box(1, 0.0, 2.0))
    assert abs(mean - 8 / 3) < 5 * se


@pytest.mark.parametrize("dims", [1, 2, 4])
def test_integrate_gaussian(dims: int) -> None:
    a = 2.0
    exact = (math.sqrt(math.pi) * math.erf(a)) ** dims
    mean, se = estimate("gaussian", 200_000, 5, *box(dims, -a, a))
    assert abs(mean - exact) < 5 * se


def test_integrate_sin_product_over_0_pi_squared_is_4() -> None:
    mean, se = estimate("sin_product", 200_000, 8, *box(2, 0.0, math.pi))
    assert abs(mean - 4.0) < 5 * se


def test_integrate_asymmetric_box() -> None:
    lower, upper = np.array([-1.0, 0.5]), np.array([2.0, 1.5])
    # integral of x^2 + y^2 over [-1, 2] x [0.5, 1.5] = (9/3) * 1 + 3 * (3.25/3) = 3 + 3.25
    mean, se = estimate("sum_squares", 200_000, 9, lower, upper)
    assert abs(mean - 6.25) < 5 * se


@pytest.mark.parametrize("name", kernels.INTEGRANDS)
def test_integrate_is_deterministic_and_seed_dependent(name: str) -> None:
    code = kernels.INTEGRANDS.index(name)
    lower, upper = box(3, -1.0, 1.0)
    first = kernels.integrate(code, 10_001, np.uint64(42), lower, upper)
    assert kernels.integrate(code, 10_001, np.uint64(42), lower, upper) == first
    assert kernels.integrate(code, 10_001, np.uint64(43), lower, upper) != first


@pytest.mark.parametrize("samples", [0, 1, LANES - 1, LANES + 1, 12_345])
def test_integrate_returns_n_and_consistent_sums(samples: int) -> None:
    lower, upper = box(2, 0.0, 1.0)
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index("sum_squares"), samples,
                                           np.uint64(1), lower, upper)
    assert n == samples
    if samples == 0:
        assert (total, total_sq) == (0.0, 0.0)
    else:
        # every value lies in [0, 2], so the sums are bounded; and sum^2 <= n * sumsq (Cauchy-Schwarz)
        assert 0 <= total <= 2 * samples
        assert total * total <= samples * total_sq * (1 + 1e-12)


def test_integrate_ball_indicator_values_are_exactly_volume_or_zero() -> None:
    lower, upper = box(2, -1.0, 1.0)  # volume 4: each sample contributes 4 or 0
    n, total, total_sq = kernels.integrate(kernels.INTEGRANDS.index("ball"), 10_000, np.uint64(2),
                                           lower, upper)
    inside = total / 4
    assert inside == int(inside)
    assert total_sq == 4 * total

