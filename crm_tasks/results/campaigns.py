"""Did a campaign work? ``campaign_results``: one row per campaign run, A/B variant and group, as of a date.

For every run that planned for real (not a dry run, not a test run), intention to treat:

- **treatment** is everyone the plan assigned to receive a message, whatever happened to it afterwards
  (failed, suppressed, expired, bounced): the run's decision is what is measured, not the mail server;
- **holdout** is everyone the plan held out;
- both groups are measured over the same window, from their own assignment (the run's scheduled time,
  ``campaign_runs.run_at``) for the campaign's ``attribution_days``; purchases after the as-of date's end
  do not count yet, and ``window_complete`` says whether the window has closed.

Conversion is an order (amount >= 0) in the window; revenue is net of refunds, in the base currency of
segments at crm.yaml's fixed rates. Attributed purchases (``crm_tasks.results.attribution``), redeemed
coupons, clicks and late bounces are counted per run and variant. Each treatment row carries its lift
against the run's holdout (``crm_tasks.results.lift``) and, with variants, each variant's probability of
converting best. The table is replaced as a whole: refreshing the same as-of date twice gives identical rows.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, delete, insert, select

from crm_tasks.clock import cutoff_for
from crm_tasks.errors import ConfigError
from crm_tasks.results import lift, stats
from crm_tasks.results.attribution import attribute
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.models import CampaignResult, CampaignRun, RunStatus
from crm_tasks.store.types import Money, UtcDateTime, to_base

log = logging.getLogger(__name__)

TREATMENT, HOLDOUT = "treatment", "holdout"


@dataclass(frozen=True)
class RunWindow:
    run_id: int
    campaign: str
    run_as_of: date
    start: datetime
    end: datetime
    variants: tuple[str, ...]


@dataclass
class RefreshResult:
    as_of: date
    runs: int = 0
    groups: int = 0
    attributed: int = 0
    control_months: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "runs": self.runs, "groups": self.groups,
                "attributed": self.attributed, "control_months": self.control_months,
                "seconds": round(self.seconds, 3), "phases": self.phases}


def refresh_results(engine: Engine, cfg: Settings, as_of: date) -> RefreshResult:
    """Recompute attributions, campaign results and the control-group months as of ``as_of``, in one
    transaction; the rows depend only on the data and ``as_of``, never on when this runs."""
    from crm_tasks.results.control import refresh_control

    started = time.perf_counter()
    result = RefreshResult(as_of)
    cutoff = cutoff_for(as_of, cfg.timezone)
    with engine.begin() as conn:
        runs = measured_runs(conn, cfg, cutoff)
        days = {r.campaign: (r.end - r.start).days for r in sorted(runs, key=lambda r: r.start)}
        result.attributed = attribute(conn, cutoff, days, cfg.results.attribution_days)
        result.phases["attribution"] = round(time.perf_counter() - started, 3)
        rows = campaign_rows(conn, cfg, runs, as_of, cutoff)
        conn.execute(delete(CampaignResult))
        if rows:
            conn.execute(insert(CampaignResult), rows)
        result.runs, result.groups = len(runs), len(rows)
        result.phases["campaigns"] = round(time.perf_counter() - started - sum(result.phases.values()), 3)
        result.control_months = refresh_control(conn, cfg, as_of)
        result.phases["control"] = round(time.perf_counter() - started - sum(result.phases.values()), 3)
    result.seconds = time.perf_counter() - started
    log.info("results as of %s: %d runs, %d groups, %d purchases attributed, %d control months (%.1f s)",
             as_of, result.runs, result.groups, result.attributed, result.control_months, result.seconds)
    return result


def measured_runs(conn: Connection, cfg: Settings, cutoff: datetime) -> list[RunWindow]:
    """The runs that assigned customers for real before ``cutoff``, each with its measurement window
    (``attribution_days`` of the definition it planned with)."""
    rows = conn.execute(
        select(CampaignRun.id, CampaignRun.campaign, CampaignRun.as_of, CampaignRun.run_at, CampaignRun.parameters)
        .where(~CampaignRun.dry_run, ~CampaignRun.test_run, CampaignRun.run_at < cutoff,
               CampaignRun.status.in_([RunStatus.PLANNED, RunStatus.REPLACED]))
        .order_by(CampaignRun.id)
    ).all()
    runs = []
    for run_id, campaign, run_as_of, run_at, parameters in rows:
        definition = (parameters or {}).get("definition") or {}
        days = definition.get("attribution_days") or cfg.results.attribution_days
        variants = tuple(v["name"] for v in definition.get("variants") or [])
        runs.append(RunWindow(run_id, campaign, run_as_of, run_at, run_at + timedelta(days=days), variants))
    return runs


# Everyone a run assigned, with their purchases in its window: one probe of ix_purchases_customer per
# assigned customer on SQLite; on PostgreSQL a hash join over the purchases since the first window
# (:first_start). Only customers with a purchase come back; the rest spent nothing.
_SPENDING = """
SELECT pl.run_id, pl.outcome, COALESCE(pl.variant, '') AS variant, pl.customer_id, pu.currency,
       SUM(CASE WHEN pu.amount >= 0 THEN 1 ELSE 0 END) AS orders, SUM(pu.amount) AS revenue
FROM result_runs r
JOIN campaign_plan pl ON pl.run_id = r.run_id AND pl.outcome IN ('send', 'holdout')
JOIN purchases pu ON pu.customer_id = pl.customer_id AND pu.purchased_at >= r.window_start
                 AND pu.purchased_at < r.window_end
WHERE pu.purchased_at >= :first_start
GROUP BY pl.run_id, pl.outcome, COALESCE(pl.variant, ''), pl.customer_id, pu.currency
"""

_ASSIGNED = """
SELECT pl.run_id, pl.outcome, COALESCE(pl.variant, ''), COUNT(*)
FROM result_runs r JOIN campaign_plan pl ON pl.run_id = r.run_id AND pl.outcome IN ('send', 'holdout')
GROUP BY pl.run_id, pl.outcome, COALESCE(pl.variant, '')
"""

_SENT = """
SELECT m.run_id, COALESCE(m.variant, ''), COUNT(*)
FROM result_runs r JOIN messages m ON m.run_id = r.run_id
WHERE m.state = 'sent' AND NOT m.test
GROUP BY m.run_id, COALESCE(m.variant, '')
"""

# Attributed orders and revenue, and coupons redeemed: messages with a purchase attributed by the coupon rule,
# which gives a purchase to a coupon only within the coupon's scope (coupons.in_scope, as `crm coupons` counts).
_ATTRIBUTED = """
SELECT a.run_id, COALESCE(a.variant, ''), a.currency, SUM(CASE WHEN a.amount >= 0 THEN 1 ELSE 0 END),
       SUM(a.amount) AS revenue,
       COUNT(DISTINCT CASE WHEN a.rule = 'coupon' AND a.amount >= 0 THEN a.idempotency_key END)
FROM attributions a JOIN result_runs r ON r.run_id = a.run_id
GROUP BY a.run_id, COALESCE(a.variant, ''), a.currency
"""

# Messages with at least one followed link, and late bounces and complaints applied to messages.
_CLICKERS = """
SELECT m.run_id, COALESCE(m.variant, ''), COUNT(DISTINCT c.idempotency_key)
FROM clicks c JOIN messages m ON m.idempotency_key = c.idempotency_key JOIN result_runs r ON r.run_id = m.run_id
WHERE c.kind = 'click' AND c.first_at < :cutoff
GROUP BY m.run_id, COALESCE(m.variant, '')
"""

_BOUNCES = """
SELECT m.run_id, COALESCE(m.variant, ''), COUNT(DISTINCT e.idempotency_key)
FROM delivery_events e JOIN messages m ON m.idempotency_key = e.idempotency_key
JOIN result_runs r ON r.run_id = m.run_id
WHERE e.status = 'applied' AND e.received_at < :cutoff
GROUP BY m.run_id, COALESCE(m.variant, '')
"""


def campaign_rows(conn: Connection, cfg: Settings, runs: list[RunWindow], as_of: date, cutoff: datetime) -> list[dict]:
    """The rows of ``campaign_results`` for ``runs``: counts and sums per run, variant and group, and each
    treatment row's lift against its run's holdout."""
    if not runs:
        return []
    sql.scratch(conn, "result_runs", "run_id BIGINT PRIMARY KEY, window_start TIMESTAMP, window_end TIMESTAMP")
    for r in runs:
        sql.execute(conn, "INSERT INTO result_runs VALUES (:run_id, :start, :end)",
                    {"run_id": r.run_id, "start": r.start, "end": min(r.end, cutoff)},
                    start=UtcDateTime(), end=UtcDateTime())
    rates = cfg.segments.exchange_rates
    spending = pd.DataFrame(
        sql.execute(conn, _SPENDING, {"first_start": min(r.start for r in runs)}, result_types={"revenue": Money()},
                    first_start=UtcDateTime()).all(),
        columns=["run_id", "outcome", "variant", "customer_id", "currency", "orders", "revenue"])
    _check_rates(spending["currency"], rates, cfg.segments.base_currency)
    exact = _base_totals(spending, rates, ["run_id", "outcome", "variant"])
    spending["value"] = spending["revenue"].astype(float) * spending["currency"].map(
        {k: float(v) for k, v in rates.items()})
    per_customer = spending.groupby(["run_id", "outcome", "variant", "customer_id"], sort=False).agg(
        orders=("orders", "sum"), value=("value", "sum"))

    assigned = {(r, o, v): n for r, o, v, n in sql.execute(conn, _ASSIGNED).all()}
    sent = {(r, v): n for r, v, n in sql.execute(conn, _SENT).all()}
    attributed = _attributed(conn, rates, cfg.segments.base_currency)
    clickers = {(r, v): n for r, v, n in sql.execute(conn, _CLICKERS, {"cutoff": cutoff}, cutoff=UtcDateTime())}
    bounces = {(r, v): n for r, v, n in sql.execute(conn, _BOUNCES, {"cutoff": cutoff}, cutoff=UtcDateTime())}
    groups = _groups(per_customer)

    rows = []
    for run in runs:
        holdout = groups.get((run.run_id, "holdout", ""), _EMPTY)
        control = lift.Group.of(assigned.get((run.run_id, "holdout", ""), 0), holdout[0], holdout[2])
        # Every run gets its treatment rows, an empty run too (its report says nobody was assigned).
        names = sorted({v for r, o, v in assigned if r == run.run_id and o == "send"} or
                       (set(run.variants) or {""}))
        wins = stats.win_probabilities(
            {v: (groups.get((run.run_id, "send", v), _EMPTY)[0], assigned.get((run.run_id, "send", v), 0))
             for v in names},
            seed=run.run_id) if len(names) > 1 else {}
        window_open = min(run.end, cutoff) < run.end
        base = {"campaign": run.campaign, "run_id": run.run_id, "as_of": as_of, "run_as_of": run.run_as_of,
                "window_start": run.start, "window_end": run.end, "window_complete": not window_open}
        for outcome, variant in [("send", v) for v in names] + [("holdout", "")]:
            n = assigned.get((run.run_id, outcome, variant), 0)
            if outcome == "holdout" and n == 0:
                continue
            converters, orders, values = groups.get((run.run_id, outcome, variant), _EMPTY)
            a_orders, a_revenue, coupons = attributed.get((run.run_id, variant), (0, Decimal(0), 0)) \
                if outcome == "send" else (0, Decimal(0), 0)
            measured = None
            if outcome == "send":
                measured = lift.measure(
                    lift.Group.of(n, converters, values), control, min_group=cfg.results.min_group,
                    min_converters=cfg.results.min_converters, resamples=cfg.results.bootstrap_resamples,
                    seed=zlib.crc32(f"{run.run_id}:{variant}".encode()), window_open=window_open)
                if wins:
                    measured["win_probability"] = wins[variant]
            rows.append(base | {
                "variant": variant, "grp": TREATMENT if outcome == "send" else HOLDOUT, "customers": n,
                "messages_sent": sent.get((run.run_id, variant), 0) if outcome == "send" else 0,
                "converters": converters, "orders": orders,
                "revenue": exact.get((run.run_id, outcome, variant), Decimal(0)),
                "attributed_orders": a_orders, "attributed_revenue": a_revenue, "coupons_redeemed": coupons,
                "clickers": clickers.get((run.run_id, variant), 0) if outcome == "send" else 0,
                "bounces": bounces.get((run.run_id, variant), 0) if outcome == "send" else 0,
                "lift": measured,
            })
    return rows


_EMPTY = (0, 0, np.empty(0))


def _groups(per_customer: pd.DataFrame) -> dict[tuple, tuple[int, int, np.ndarray]]:
    """(run, outcome, variant) -> (converters, orders, revenue of each customer who bought or refunded)."""
    out = {}
    for key, frame in per_customer.groupby(level=[0, 1, 2], sort=False):
        out[key] = (int((frame["orders"] > 0).sum()), int(frame["orders"].sum()), frame["value"].to_numpy(float))
    return out


def _check_rates(currencies: pd.Series, rates: dict, base: str) -> None:
    missing = sorted(set(currencies) - set(rates))
    if missing:
        raise ConfigError(f"results: purchases in currencies without an exchange rate: {', '.join(missing)}. Add "
                          f"them under segments.exchange_rates in crm.yaml (units of {base} per unit).")


def _base_totals(frame: pd.DataFrame, rates: dict, by: list[str]) -> dict[tuple, Decimal]:
    """Exact totals in the base currency: each currency's exact sum converted once, then added."""
    totals: dict[tuple, Decimal] = defaultdict(Decimal)
    for key, amount in frame.groupby([*by, "currency"], sort=False)["revenue"].sum().items():
        *group, currency = key
        totals[tuple(group)] += to_base(Decimal(amount), currency, rates, "")
    return dict(totals)


def _attributed(conn: Connection, rates: dict, base: str) -> dict[tuple, tuple[int, Decimal, int]]:
    """(run, variant) -> (attributed orders, attributed net revenue in the base currency, coupons redeemed)."""
    out: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0), 0])
    for run_id, variant, currency, orders, revenue, coupons in sql.execute(
            conn, _ATTRIBUTED, result_types={"revenue": Money()}):
        acc = out[(run_id, variant)]
        acc[0] += int(orders)
        acc[1] += to_base(revenue, currency, rates, base)
        acc[2] += int(coupons)
    return {k: tuple(v) for k, v in out.items()}
