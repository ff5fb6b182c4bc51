import math

import numpy as np
import pytest

from hpexp.stats import mean_ci, t_quantile, t_two_sided


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
