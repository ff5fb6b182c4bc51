import math

import numpy as np
import pytest

from hpexp.stats import (
    binomial_se,
    mean_ci,
    mean_interval,
    median_range,
    paired_difference,
    t_quantile,
    t_two_sided,
    welch_difference,
)


@pytest.mark.parametrize(
    ("df", "expected"),
    # two-sided 95% quantiles from printed t tables (df=31, 1000: beyond the usual 1..30 table)
    [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (30, 2.042), (31, 2.040), (1000, 1.962)],
)
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=5e-4)


def test_t_distribution_limits():
    # df=1 is the Cauchy distribution: P(|T| < 1) = 1/2 exactly; large df approaches the normal
    assert t_two_sided(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    assert t_quantile(0.99, 100_000) == pytest.approx(2.5758, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_two_sided(1.0, 0)
    with pytest.raises(ValueError, match="confidence"):
        t_quantile(1.5, 3)


def test_mean_ci_worked_example():
    mean, half, n = mean_ci([0.96, 0.97, 0.98])
    assert n == 3 and mean == pytest.approx(0.97)
    assert half == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-4)


def test_mean_ci_drops_missing_and_says_nothing_about_one_value():
    assert mean_ci([0.5, np.nan])[0] == 0.5 and math.isnan(mean_ci([0.5, np.nan])[1])
    assert mean_ci([0.5, np.nan])[2] == 1
    assert mean_ci([])[2] == 0


# --- estimates for pages: each expectation worked by hand -----------------------------------------


def test_paired_difference_of_a_three_seed_table():
    # seed: (with L2, without) -> differences 0.02, 0.03, 0.01: mean 0.02, s = 0.01,
    # half-width t_{2, .975} * 0.01 / sqrt(3) = 4.302653 * 0.01 / 1.7320508 = 0.0248414
    with_l2 = {0: 0.90, 1: 0.92, 2: 0.94, 7: 0.5}  # seed 7 has no partner: left out
    without = {0: 0.88, 1: 0.89, 2: 0.93}
    est = paired_difference(with_l2, without)
    assert est.n == 3 and est.value == pytest.approx(0.02)
    assert est.lo == pytest.approx(0.02 - 0.0248414, abs=1e-6) and est.hi == pytest.approx(
        0.0448414, abs=1e-6
    )
    assert est.values == pytest.approx((0.02, 0.03, 0.01)) and est.method.startswith("paired")
    # the unpaired view of the same numbers is far wider: the seeds' shared luck is not removed
    unpaired = welch_difference(list(with_l2.values())[:3], list(without.values()))
    assert unpaired.hi - unpaired.lo > 2 * (est.hi - est.lo)


def test_interval_never_leaves_the_metric_range():
    # 99.9%, 99.7%, 100%: mean 0.998667, s = 0.0015275, half 4.302653 * 0.0015275 / sqrt(3) = 0.0037945;
    # the t-interval would end at 1.00246 (100.25%): the page shows 100%
    est = mean_interval([0.999, 0.997, 1.0], 0.0, 1.0)
    assert est.value == pytest.approx(0.9986667, abs=1e-7)
    assert est.lo == pytest.approx(0.9986667 - 0.0037945, abs=1e-6)
    assert est.hi == 1.0 and "intersected with [0, 1]" in est.method
    free = mean_interval([0.999, 0.997, 1.0])
    assert free.hi == pytest.approx(1.0024612, abs=1e-6)  # the same data without the range


def test_two_values_give_no_interval():
    est = mean_interval([0.8304, 0.8554], 0.0, 1.0)
    assert est.n == 2 and est.value == pytest.approx(0.8429) and not est.has_interval
    assert est.values == (0.8304, 0.8554)
    assert not paired_difference({1: 0.85, 2: 0.86}, {1: 0.83, 2: 0.835}).has_interval


def test_median_and_range_for_integers():
    est = median_range([382, 397, 382, float("nan")])
    assert (est.value, est.lo, est.hi, est.n) == (382, 382, 397, 3)


def test_welch_by_hand():
    # means 2 and 5; s_a^2/n_a = 1/3, s_b^2/n_b = (20/3)/4 = 5/3; df = 4 / ((1/9)/2 + (25/9)/3) = 4.075 -> 4
    est = welch_difference([1, 2, 3], [2, 4, 6, 8])
    assert est.value == pytest.approx(-3.0)
    assert est.hi - est.value == pytest.approx(2.776445 * 2**0.5, rel=1e-5)
    assert "4 df" in est.method


def test_binomial_resolution_of_a_test_set():
    assert binomial_se(0.97, 10_000) == pytest.approx(0.0017059, abs=1e-7)  # the 0.17 points
    assert binomial_se(1.0, 100) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        binomial_se(0.5, 0)
