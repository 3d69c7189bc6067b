"""The statistics of a campaign's success, pure and small: each returns plain numbers with its interval.

Every function here is checked against scipy or statsmodels in tests/results/test_stats.py, and the
intervals' coverage is checked by simulation. Intervals are 95 % (``ALPHA``), two-sided.

- conversion: difference of two proportions, a Wald interval (unpooled standard error) and the
  two-proportion z-test's p-value (pooled standard error under the null), as statsmodels'
  ``confint_proportions_2indep(method="wald")`` and ``proportions_ztest``;
- revenue per customer: Welch's t interval for the difference of means (unequal variances), as scipy's
  ``ttest_ind(equal_var=False)``; and a percentile bootstrap interval for the relative lift, because
  revenue is skewed and a ratio's normal interval is poor in small groups;
- the minimum detectable effect at the current sizes (80 % power), as statsmodels' ``NormalIndPower``;
- the probability that each A/B variant converts best, from Beta(1 + x, 1 + n - x) posteriors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.80


def _z(q: float) -> float:
    return float(stats.norm.ppf(q))


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval (None where undefined, e.g. a relative lift on a zero baseline)."""

    estimate: float | None
    ci_low: float | None
    ci_high: float | None

    def covers(self, value: float) -> bool:
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= value <= self.ci_high

    def excludes_zero(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConversionTest:
    rate_treatment: float
    rate_control: float
    difference: Interval  # rate_treatment - rate_control
    relative: float | None  # difference / rate_control
    z: float | None
    p_value: float | None


def conversion_test(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float = ALPHA) -> ConversionTest:
    """Two proportions: the difference with its Wald interval, and the pooled two-proportion z-test."""
    if n_t <= 0 or n_c <= 0:
        raise ValueError("both groups need at least one customer")
    p_t, p_c = x_t / n_t, x_c / n_c
    diff = p_t - p_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    half = _z(1 - alpha / 2) * se
    pooled = (x_t + x_c) / (n_t + n_c)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    z = diff / se0 if se0 > 0 else None
    p = float(2 * stats.norm.sf(abs(z))) if z is not None else None
    return ConversionTest(p_t, p_c, Interval(diff, diff - half, diff + half), diff / p_c if p_c > 0 else None, z, p)


@dataclass(frozen=True)
class MeanTest:
    mean_treatment: float
    mean_control: float
    difference: Interval  # Welch
    df: float | None
    p_value: float | None


def welch_test(t: np.ndarray, c: np.ndarray, alpha: float = ALPHA) -> MeanTest:
    """Difference of two means with Welch's t interval (no assumption of equal variances)."""
    if len(t) < 2 or len(c) < 2:
        raise ValueError("Welch's interval needs at least two customers per group")
    return welch_from_moments(Moments.of(t), Moments.of(c), alpha)


@dataclass(frozen=True)
class Moments:
    """Size, mean and sample variance of a group: all a Welch interval needs, summable in SQL."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        return cls(len(values), float(np.mean(values)), float(np.var(values, ddof=1)))

    @classmethod
    def from_sums(cls, n: int, total: float, sum_sq: float) -> Moments:
        """From the sum and the sum of squares over the group (zeros included implicitly)."""
        mean = total / n
        return cls(n, mean, max(sum_sq - n * mean * mean, 0.0) / (n - 1))


def welch_from_moments(t: Moments, c: Moments, alpha: float = ALPHA) -> MeanTest:
    v_t, v_c = t.var / t.n, c.var / c.n
    diff, se2 = t.mean - c.mean, v_t + v_c
    if se2 == 0:
        return MeanTest(t.mean, c.mean, Interval(diff, diff, diff), None, None)
    df = se2**2 / (v_t**2 / (t.n - 1) + v_c**2 / (c.n - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)
    p = float(2 * stats.t.sf(abs(diff) / math.sqrt(se2), df))
    return MeanTest(t.mean, c.mean, Interval(diff, diff - half, diff + half), df, p)


def delta_relative_lift(t: Moments, c: Moments, alpha: float = ALPHA) -> Interval:
    """mean(t) / mean(c) - 1 with a delta-method normal interval: for groups whose every value is not at
    hand (the global control's months are summed in SQL), where the groups are large enough for it."""
    if c.mean <= 0:
        return Interval(None, None, None)
    ratio = t.mean / c.mean
    se = math.sqrt(t.var / t.n / c.mean**2 + ratio**2 * c.var / c.n / c.mean**2)
    half = _z(1 - alpha / 2) * se
    return Interval(ratio - 1, ratio - 1 - half, ratio - 1 + half)


def bootstrap_relative_lift(t: np.ndarray, c: np.ndarray, *, resamples: int, seed: int,
                            alpha: float = ALPHA) -> Interval:
    """mean(t) / mean(c) - 1 with a percentile bootstrap interval (groups resampled independently).

    Most customers spend nothing in a campaign's window, so each resample draws how many of its customers
    are buyers (binomial) and resamples only among the buyers: the same distribution as resampling whole
    groups, at a cost that grows with the buyers rather than with the audience.
    """
    base = float(np.mean(c)) if len(c) else 0.0
    if len(t) == 0 or len(c) == 0 or base <= 0:
        return Interval(None, None, None)
    rng = np.random.default_rng(seed)
    means = [_resampled_means(g, resamples, rng) for g in (t, c)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means[0] / means[1] - 1
    ratios = ratios[np.isfinite(ratios)]
    estimate = float(np.mean(t)) / base - 1
    if len(ratios) < resamples * 0.9:  # the baseline is zero in too many resamples: no honest interval
        return Interval(estimate, None, None)
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high))


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    nonzero = values[values != 0]
    buyers = rng.binomial(n, len(nonzero) / n, size=resamples) if len(nonzero) else np.zeros(resamples, int)
    sums = np.empty(resamples)
    for i, k in enumerate(buyers):
        sums[i] = nonzero[rng.integers(0, len(nonzero), size=k)].sum() if k else 0.0
    return sums / n


def min_detectable_difference(n_t: int, n_c: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true difference of means (in the unit of ``sd``) that a two-sided test at ``alpha``
    detects with probability ``power``, at these sizes (normal approximation)."""
    if n_t <= 0 or n_c <= 0 or sd <= 0:
        return None
    return (_z(1 - alpha / 2) + _z(power)) * sd * math.sqrt(1 / n_t + 1 / n_c)


def win_probabilities(conversions: dict[str, tuple[int, int]], *, draws: int = 200_000, seed: int = 0) -> dict:
    """For each variant, the posterior probability that its conversion rate is the highest, with a uniform
    Beta(1, 1) prior: ``{name: (converters, customers)}`` -> ``{name: probability}`` (they sum to 1)."""
    if not conversions:
        return {}
    rng = np.random.default_rng(seed)
    names = list(conversions)
    samples = np.column_stack([rng.beta(1 + x, 1 + n - x, size=draws) for x, n in conversions.values()])
    best = np.bincount(np.argmax(samples, axis=1), minlength=len(names)) / draws
    return {name: float(p) for name, p in zip(names, best, strict=True)}


def clean(value):
    """A JSON-safe copy: dataclasses to dicts, NaN and infinities to None."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    return value
