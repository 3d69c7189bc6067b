"""The success statistics against scipy and statsmodels on the same numbers, and their intervals' coverage
in seeded simulations of campaigns with a known true effect (and with none)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from crm_tasks.results import lift, stats


@pytest.mark.parametrize(("x_t", "n_t", "x_c", "n_c"), [(120, 1000, 95, 1000), (7, 310, 2, 40), (0, 50, 3, 60),
                                                       (5000, 90_000, 480, 10_000)])
def test_conversion_agrees_with_statsmodels(x_t, n_t, x_c, n_c):
    got = stats.conversion_test(x_t, n_t, x_c, n_c)
    z, p = proportions_ztest([x_t, x_c], [n_t, n_c])
    low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")
    assert got.z == pytest.approx(z) and got.p_value == pytest.approx(p)
    assert got.difference.ci_low == pytest.approx(low) and got.difference.ci_high == pytest.approx(high)
    assert got.difference.estimate == pytest.approx(x_t / n_t - x_c / n_c)


def test_welch_agrees_with_scipy():
    rng = np.random.default_rng(7)
    t = np.where(rng.random(800) < 0.2, rng.lognormal(5, 1, 800), 0.0)
    c = np.where(rng.random(300) < 0.15, rng.lognormal(5, 1.2, 300), 0.0)
    got = stats.welch_test(t, c)
    ref = sps.ttest_ind(t, c, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got.p_value == pytest.approx(ref.pvalue) and got.df == pytest.approx(ref.df)
    assert (got.difference.ci_low, got.difference.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # The same from sums (how the control group's months arrive from SQL).
    from_sums = stats.welch_from_moments(stats.Moments.from_sums(len(t), t.sum(), (t * t).sum()),
                                         stats.Moments.from_sums(len(c), c.sum(), (c * c).sum()))
    assert from_sums.difference.ci_low == pytest.approx(ci.low) and from_sums.p_value == pytest.approx(ref.pvalue)


def test_the_minimum_detectable_effect_is_statsmodels_power_solved_for_the_effect():
    n_t, n_c, sd = 4000, 500, 0.3
    effect = NormalIndPower().solve_power(nobs1=n_t, ratio=n_c / n_t, alpha=0.05, power=0.8, alternative="two-sided")
    assert stats.min_detectable_difference(n_t, n_c, sd) == pytest.approx(effect * sd, rel=1e-3)


def test_win_probability_matches_the_exact_integral():
    a, b = (30, 400), (42, 410)
    beta_a, beta_b = sps.beta(1 + a[0], 1 + a[1] - a[0]), sps.beta(1 + b[0], 1 + b[1] - b[0])
    exact, _ = integrate.quad(lambda x: beta_b.pdf(x) * beta_a.cdf(x), 0, 1)  # P(b > a)
    got = stats.win_probabilities({"a": a, "b": b}, seed=3)
    assert got["b"] == pytest.approx(exact, abs=0.005) and got["a"] + got["b"] == pytest.approx(1)


def test_the_bootstrap_of_buyers_only_matches_resampling_whole_groups():
    rng = np.random.default_rng(11)
    t = np.where(rng.random(3000) < 0.12, rng.lognormal(4, 1, 3000), 0.0)
    c = np.where(rng.random(1500) < 0.10, rng.lognormal(4, 1, 1500), 0.0)
    got = stats.bootstrap_relative_lift(t, c, resamples=4000, seed=1)
    ref = sps.bootstrap((t, c), lambda x, y, axis=-1: x.mean(axis=axis) / y.mean(axis=axis) - 1,
                        n_resamples=4000, method="percentile", random_state=2, vectorized=True)
    assert got.estimate == pytest.approx(t.mean() / c.mean() - 1)
    assert got.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.04)
    assert got.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.04)


def _simulate(rng, n_t, n_c, p_t, p_c):
    """One campaign: conversions at the given rates, skewed basket sizes (the same for both groups)."""
    conv_t, conv_c = rng.random(n_t) < p_t, rng.random(n_c) < p_c
    spend_t = rng.lognormal(6, 0.8, conv_t.sum())
    spend_c = rng.lognormal(6, 0.8, conv_c.sum())
    return (lift.Group.of(n_t, int(conv_t.sum()), spend_t), lift.Group.of(n_c, int(conv_c.sum()), spend_c))


@pytest.mark.parametrize(("p_t", "p_c"), [(0.12, 0.10), (0.10, 0.10)], ids=["+20% conversion", "no effect"])
def test_intervals_cover_the_true_effect_in_at_least_90_of_100_simulations(p_t, p_c):
    true_diff = p_t - p_c
    mean_spend = np.exp(6 + 0.8**2 / 2)
    true_rpc = (p_t - p_c) * mean_spend
    covered_conv = covered_rev = 0
    for seed in range(100):
        treatment, control = _simulate(np.random.default_rng(seed), 4000, 2000, p_t, p_c)
        measured = lift.measure(treatment, control, min_group=100, min_converters=10, resamples=400, seed=seed)
        conv, rev = measured["conversion"]["difference"], measured["revenue"]["difference"]
        covered_conv += conv["ci_low"] <= true_diff <= conv["ci_high"]
        covered_rev += rev["ci_low"] <= true_rpc <= rev["ci_high"]
    assert covered_conv >= 90 and covered_rev >= 90


def test_small_groups_get_no_verdict_but_the_effect_they_could_detect():
    treatment, control = _simulate(np.random.default_rng(0), 60, 40, 0.2, 0.1)
    measured = lift.measure(treatment, control, min_group=100, min_converters=10, resamples=200, seed=0)
    assert measured["verdict"] == lift.NOT_ENOUGH and "difference" not in measured["conversion"]
    assert 0 < measured["mde"]["conversion"] < 1
    assert lift.measure(treatment, lift.Group.of(0, 0, np.empty(0)), min_group=1, min_converters=1, resamples=200,
                        seed=0)["verdict"] == lift.NO_CONTROL


def test_a_clear_effect_is_called_lift_and_its_incremental_revenue_scales_with_the_treated():
    treatment, control = _simulate(np.random.default_rng(5), 20_000, 5_000, 0.15, 0.10)
    measured = lift.measure(treatment, control, min_group=100, min_converters=10, resamples=400, seed=5)
    assert measured["verdict"] == lift.LIFT
    rev = measured["revenue"]
    assert measured["incremental_revenue"]["estimate"] == pytest.approx(rev["difference"]["estimate"] * 20_000)
    assert rev["relative"]["ci_low"] < rev["relative"]["estimate"] < rev["relative"]["ci_high"]
