"""estimate_pi's error and run-to-tolerance: an honest error at every sample size, a stop close to
what the tolerance needs, and pinned (golden) answers that only a deliberate stream change may move."""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import pytest

from pyro_compute import LocalCluster, Pool, estimate_pi, kernels
from pyro_compute.montecarlo import pi_error, pi_interval, task_size
from pyro_compute.status import cluster_status

P = math.pi / 4  # the true hit rate


def wilson_by_quadratic(hits: int, n: int) -> tuple[float, float]:
    """The z = 1 Wilson interval for π, written independently: the p with (p̂ - p)² = p(1 - p)/n.

    Expanding gives (1 + 1/n) p² - (2p̂ + 1/n) p + p̂² = 0; its two roots bound the interval.
    The discriminant b² - 4ac simplifies to (4p̂(1 - p̂) + 1/n) / n, and the roots are taken in the
    cancellation-free form q = (-b + √disc) / 2, roots c / q and q / a.
    """
    p_hat = hits / n
    a, b, c = 1 + 1 / n, -(2 * p_hat + 1 / n), p_hat * p_hat
    q = (-b + math.sqrt((4 * p_hat * (1 - p_hat) + 1 / n) / n)) / 2
    return 4 * c / q, 4 * q / a


def error_by_formula(hits: int, n: int) -> float:
    """What the printed ± must be: the farthest end of that interval from 4 p̂."""
    low, high = wilson_by_quadratic(hits, n)
    pi = 4 * hits / n
    return max(pi - low, high - pi)


def needed(tol: float) -> float:
    """Samples whose binomial standard error of 4 p̂ is ``tol``: 16 p (1 - p) / tol²."""
    return 16 * P * (1 - P) / tol**2


def child_seed(seed: int, i: int) -> np.uint64:
    """Task i's seed as the pool derives it: child i of SeedSequence(seed)."""
    return np.uint64(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0])


def run_locally(samples: int, seed: int, tol: float) -> tuple[int, int]:
    """The run to ``tol`` replayed with the kernel in this process: (hits, samples) where it must stop."""
    size = task_size(samples, tol)
    hits = done = 0
    for i in range(10**6):
        hits += kernels.pi_hits(size, child_seed(seed, i))
        done += size
        if done >= samples and error_by_formula(hits, done) < tol:
            return hits, done
    raise AssertionError("never reached the tolerance")


@pytest.fixture(scope="module")
def pool(cluster: LocalCluster) -> Iterator[Pool]:
    with Pool(cluster=cluster) as p:
        yield p


# -- the error itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("hits,n", [(0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (3, 4), (0, 100), (100, 100),
                                    (78, 100), (785_398, 10**6), (10**9, 10**9), (0, 10**12),
                                    (785_398_163_397, 10**12)])
def test_error_and_interval_match_the_independent_formula(hits: int, n: int) -> None:
    low, high = pi_interval(hits, n)
    want_low, want_high = wilson_by_quadratic(hits, n)
    assert low == pytest.approx(want_low, rel=1e-9, abs=1e-12)
    assert high == pytest.approx(want_high, rel=1e-9, abs=1e-12)
    assert pi_error(hits, n) == pytest.approx(error_by_formula(hits, n), rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 10**6, 10**12])
def test_a_finite_sample_never_has_zero_error(n: int) -> None:
    for hits in (0, n):
        assert pi_error(hits, n) > 0
        low, high = pi_interval(hits, n)
        assert high - low > 0
    # One point, a hit: π̂ = 4 and the interval for π is [2, 4], so the error is 2, not 0.
    assert pi_error(1, 1) == pytest.approx(2.0)


def test_error_is_the_binomial_standard_error_for_large_samples() -> None:
    n = 10**10
    hits = round(P * n)
    assert pi_error(hits, n) == pytest.approx(4 * math.sqrt(P * (1 - P) / n), rel=1e-4)


def test_one_sample_does_not_pass_any_small_tolerance(pool: Pool) -> None:
    est = estimate_pi(pool, 1, seed=3)
    assert est.samples == 1 and est.stderr == pytest.approx(2.0)
    est = estimate_pi(pool, 1, seed=3, tol=1e-2)
    assert est.stderr < 1e-2 and est.samples >= 0.9 * needed(1e-2)


# -- run to tolerance on the real cluster --------------------------------------------------------

@pytest.mark.parametrize("tol", [1e-3, 1e-4])
def test_run_to_tolerance_stops_within_10_percent_of_what_it_needs(pool: Pool, tol: float) -> None:
    est = estimate_pi(pool, 1, seed=1, tol=tol)
    assert est.stderr < tol
    assert est.stderr == pytest.approx(error_by_formula(est.hits, est.samples), rel=1e-6)
    assert 0.9 * needed(tol) <= est.samples <= 1.1 * needed(tol)
    # It stopped at the first task after which the error was below tol, not later.
    size = task_size(1, tol)
    assert est.samples % size == 0
    assert (est.hits, est.samples) == run_locally(1, 1, tol)


def computed(cluster: LocalCluster) -> int:
    """Samples the cluster's workers have drawn since they started."""
    return sum(r["samples"] for r in cluster_status(cluster.settings) if r["reachable"])


def test_run_to_tolerance_does_not_compute_far_past_its_stop(cluster: LocalCluster, pool: Pool) -> None:
    estimate_pi(pool, 1, seed=2, tol=1e-2)  # tiny tasks first: the pool measures them as fast
    before = computed(cluster)
    est = estimate_pi(pool, 1, seed=2, tol=1e-4)
    deadline = time.monotonic() + 30
    drawn, previous = -1, -2
    while drawn != previous and time.monotonic() < deadline:  # tasks already sent finish after it returns
        time.sleep(0.5)
        previous, drawn = drawn, computed(cluster) - before
    assert est.samples <= drawn < 2 * needed(1e-4), f"{drawn:.3g} samples drawn for {est.samples:.3g} used"


def test_run_to_tolerance_draws_at_least_the_samples_asked_for(pool: Pool) -> None:
    est = estimate_pi(pool, 10**7, seed=7, tol=1e-3)
    assert 10**7 <= est.samples <= 1.1 * 10**7 and est.stderr < 1e-3


# Golden values: (samples, seed, tol) -> (hits, samples). Task sizes come from (samples, tol) and
# task i's seed is child i of SeedSequence(seed); a change of either, or of the kernel's random
# stream, moves these numbers and must be a deliberate, documented event.
GOLDEN = [
    (1, 1, 1e-3, 2_136_060, 2_719_744),
    (1, 2, 1e-3, 2_135_352, 2_719_744),
    (1, 3, 1e-3, 2_134_317, 2_719_744),
    (1, 5, 1e-2, 21_732, 27_648),
    (1, 11, 3e-4, 23_678_051, 30_146_560),
    (10**7, 7, 1e-3, 7_929_155, 10_092_544),
    (1, 1, 1e-4, 214_131_375, 272_629_760),
]


@pytest.mark.parametrize("samples,seed,tol,hits,total", GOLDEN)
def test_golden_estimate_pi_with_tol(pool: Pool, samples: int, seed: int, tol: float, hits: int,
                                     total: int) -> None:
    est = estimate_pi(pool, samples, seed, tol)
    assert (est.hits, est.samples, est.seed) == (hits, total, seed)
    assert est.pi == 4 * hits / total
    assert est.stderr == pytest.approx(error_by_formula(hits, total), rel=1e-6)
    assert (est.low, est.high) == pytest.approx(wilson_by_quadratic(hits, total), rel=1e-9)


@pytest.mark.parametrize("samples,seed,tol,hits,total", GOLDEN[:4])
def test_golden_values_replay_with_the_kernel_alone(samples: int, seed: int, tol: float, hits: int,
                                                    total: int) -> None:
    assert run_locally(samples, seed, tol) == (hits, total)


def test_run_to_tolerance_is_identical_on_one_worker(pool: Pool) -> None:
    with LocalCluster(1) as single, Pool(cluster=single) as alone:
        one = estimate_pi(alone, 1, seed=11, tol=3e-4)
    two = estimate_pi(pool, 1, seed=11, tol=3e-4)
    assert one.workers == 1 and two.workers == 2
    assert (one.hits, one.samples, one.pi, one.stderr) == (two.hits, two.samples, two.pi, two.stderr)
