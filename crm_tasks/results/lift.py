"""A treatment group against its control, as one honest verdict with its numbers (pure; no I/O).

Used for a campaign run's treatment (or one A/B variant) against the run's holdout, and for the marketed
customers against the global control group. The verdict is one of:

- ``no_audience``: nobody was assigned to receive a message (an empty run);
- ``no_control``: nobody was held out (holdout_share 0, or the control group is off): lift cannot be measured;
- ``not_enough_data``: a group below ``results.min_group`` customers, or fewer than ``results.min_converters``
  buyers in both groups together: the intervals' normal approximations do not hold yet, so no lift is
  claimed; the minimum detectable effect at the current sizes says how far off an answer is;
- ``lift`` / ``negative``: the 95 % interval of conversion or of revenue per customer excludes zero (``mixed``
  when one is above zero and the other below);
- ``no_detectable_effect``: both intervals include zero; effects smaller than the minimum detectable
  effect could not have shown at these sizes.

A window still open is said in the text: the figures are interim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crm_tasks.results import stats

NO_AUDIENCE, NO_CONTROL, NOT_ENOUGH, LIFT, NEGATIVE, MIXED, NO_EFFECT = (
    "no_audience", "no_control", "not_enough_data", "lift", "negative", "mixed", "no_detectable_effect")


@dataclass(frozen=True)
class Group:
    """One group's outcome: its size, its buyers, and its revenue per customer (everyone assigned counts,
    spenders and non-spenders alike: intention to treat), as a sum and a sum of squares; ``revenue`` holds
    the non-zero values themselves where they are at hand, for the bootstrap."""

    customers: int
    converters: int
    total: float
    sum_sq: float
    revenue: np.ndarray | None = None

    @classmethod
    def of(cls, customers: int, converters: int, revenue: np.ndarray) -> Group:
        """From the revenue of each customer who spent anything (the other ``customers`` spent 0)."""
        return cls(customers, converters, float(revenue.sum()), float((revenue * revenue).sum()), revenue)

    def moments(self) -> stats.Moments:
        return stats.Moments.from_sums(self.customers, self.total, self.sum_sq)

    def values(self) -> np.ndarray:
        out = np.zeros(self.customers)
        out[: len(self.revenue)] = self.revenue
        return out


def measure(treatment: Group, control: Group, *, min_group: int, min_converters: int, resamples: int, seed: int,
            window_open: bool = False, control_name: str = "holdout", treatment_name: str = "treated") -> dict:
    """The lift of ``treatment`` over ``control``: conversion, revenue per customer, incremental revenue,
    the minimum detectable effects and the verdict, as a JSON-safe dict. The relative revenue lift's
    interval is a bootstrap where each customer's revenue is at hand, else the delta method."""
    n_t, n_c = treatment.customers, control.customers
    if n_t == 0:
        return {"verdict": NO_AUDIENCE, "text": "nobody was assigned to receive a message"}
    if n_c == 0:
        return {"verdict": NO_CONTROL, "text": f"no {control_name} group: lift cannot be measured"}
    conv = stats.conversion_test(treatment.converters, n_t, control.converters, n_c)
    pooled_rate = (treatment.converters + control.converters) / (n_t + n_c)
    both = stats.Moments.from_sums(n_t + n_c, treatment.total + control.total, treatment.sum_sq + control.sum_sq)
    mde = {
        "conversion": stats.min_detectable_difference(n_t, n_c, (pooled_rate * (1 - pooled_rate)) ** 0.5),
        "revenue_per_customer": stats.min_detectable_difference(n_t, n_c, both.var ** 0.5),
    }
    out = {"customers": {"treatment": n_t, control_name: n_c}, "mde": mde}
    if min(n_t, n_c) < min_group or treatment.converters + control.converters < min_converters:
        return stats.clean(out | {
            "verdict": NOT_ENOUGH,
            "text": (f"not enough data yet: {n_t} {treatment_name}, {n_c} in {control_name}, "
                     f"{treatment.converters + control.converters} buyers (needs {min_group} per group and "
                     f"{min_converters} buyers); at these sizes only a conversion difference above "
                     f"{_pct(mde['conversion'])} would show"),
            "conversion": {"rate_treatment": conv.rate_treatment, "rate_control": conv.rate_control},
        })
    rev = stats.welch_from_moments(treatment.moments(), control.moments())
    if treatment.revenue is not None and control.revenue is not None:
        rel = stats.bootstrap_relative_lift(treatment.values(), control.values(), resamples=resamples, seed=seed)
        rel_method = "bootstrap"
    else:
        rel, rel_method = stats.delta_relative_lift(treatment.moments(), control.moments()), "delta"
    incremental = stats.Interval(*(None if x is None else x * n_t for x in
                                   (rev.difference.estimate, rev.difference.ci_low, rev.difference.ci_high)))
    verdict = _verdict(conv.difference, rev.difference)
    text = {
        LIFT: "lift: the 95% interval excludes zero",
        NEGATIVE: f"negative: the {treatment_name} did worse; the 95% interval excludes zero",
        MIXED: "mixed: conversion and revenue per customer moved in opposite directions",
        NO_EFFECT: (f"no detectable effect: the intervals include zero; at these sizes only a conversion "
                    f"difference above {_pct(mde['conversion'])} would show"),
    }[verdict]
    if window_open:
        text += " (interim: the window is still open)"
    return stats.clean(out | {
        "verdict": verdict,
        "text": text,
        "conversion": {"rate_treatment": conv.rate_treatment, "rate_control": conv.rate_control,
                       "difference": conv.difference, "relative": conv.relative, "p_value": conv.p_value},
        "revenue": {"per_customer_treatment": rev.mean_treatment, "per_customer_control": rev.mean_control,
                    "difference": rev.difference, "p_value": rev.p_value, "relative": rel,
                    "relative_method": rel_method},
        "incremental_revenue": incremental,
    })


def _verdict(conversion: stats.Interval, revenue: stats.Interval) -> str:
    shown = [i for i in (conversion, revenue) if i.excludes_zero()]
    if not shown:
        return NO_EFFECT
    if all(i.estimate > 0 for i in shown):
        return LIFT
    return NEGATIVE if all(i.estimate < 0 for i in shown) else MIXED


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} points"
