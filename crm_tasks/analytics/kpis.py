"""Lifecycle KPIs per month: the pipeline counts per stage, acquisition, churn, reactivation, expansion and
basket size, read from what the nightly stages already store (computed on demand: each is a query over
a few thousand rows of segment history or a per-customer table, not over purchases).

Per local month (crm.yaml's time zone) up to the as-of date:

- ``stages``: customers in each lifecycle stage (prospect, new, active, at_risk, churned, reactivated) at
  the month's last segment recompute (``segment_sizes``);
- ``new_customers`` (acquisition): customers whose first order ever falls in the month (customer_metrics);
- ``churned`` / ``reactivated``: customers who entered that stage during the month (``segment_sizes.entered``);
- ``churn_rate_12m``: customers who entered ``churned`` in the 12 months ending with the month, divided by
  the customers in any other stage except ``prospect`` at the start of those 12 months (None while the
  segment history is younger than that): the yearly churn retailers quote (15-20 % is normal);
- ``expansion``: customers who bought in a category new to them during the month, after their first month;
- ``avg_basket`` and ``basket_growth``: net revenue per order (base currency, from the sales cube) and its
  change against the month before.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select

from crm_tasks.clock import cutoff_for, months_up_to
from crm_tasks.segments.compute import LIFECYCLE_STAGES
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.models import SalesDaily, Segment, SegmentSize
from crm_tasks.store.types import UtcDateTime, to_base


@dataclass
class MonthKpis:
    month: str  # its first day
    complete: bool
    stages: dict[str, int | None]  # None: no recompute in the month
    new_customers: int
    churned: int
    reactivated: int
    churn_rate_12m: float | None
    expansion: int
    orders: int
    avg_basket: str | None
    basket_growth: float | None

    def to_dict(self) -> dict:
        return asdict(self)


# Each customer's first order ever (customer_metrics keeps the first order per currency): acquisition.
_FIRST_ORDERS = """
SELECT {month} AS month_no, COUNT(*)
FROM (SELECT customer_id, MIN(first_purchase_at) AS first_at FROM customer_metrics
      WHERE first_purchase_at IS NOT NULL GROUP BY customer_id) f
WHERE f.first_at >= :lo AND f.first_at < :hi
GROUP BY 1
"""

# Expansion: customers whose first order in some category falls in a month after the month of their first
# order ever (customer_category_metrics keeps each category's first order), each counted once a month.
_EXPANSION = """
SELECT {category_month} AS month_no, COUNT(DISTINCT c.customer_id)
FROM customer_category_metrics c
JOIN (SELECT customer_id, MIN(first_purchase_at) AS first_at FROM customer_metrics
      WHERE first_purchase_at IS NOT NULL GROUP BY customer_id) f ON f.customer_id = c.customer_id
WHERE c.first_purchase_at >= :lo AND c.first_purchase_at < :hi AND {category_month} > {first_month}
GROUP BY 1
"""


def _month_case(column: str, starts: list[datetime], params: dict) -> str:
    """The index of the month (of ``starts``) an instant column falls in; -1 before the first."""
    whens = []
    for i, start in enumerate(starts):
        params[f"ms_{i}"] = start
        whens.append(f"WHEN {column} >= :ms_{i} THEN {i}")
    return f"(CASE {' '.join(reversed(whens))} ELSE -1 END)"


def lifecycle_kpis(engine: Engine, cfg: Settings, as_of: date, months: int = 12) -> list[MonthKpis]:
    """The KPIs of the last ``months`` months up to ``as_of``'s (oldest first)."""
    zone = ZoneInfo(cfg.timezone)
    starts = months_up_to(as_of, months)  # and the month after
    window = months_up_to(starts[0] - timedelta(days=1), 12)[0]  # 12 months before the first: the churn base
    cutoff = cutoff_for(as_of, cfg.timezone)
    lo = datetime.combine(starts[0], datetime.min.time(), tzinfo=zone).astimezone(UTC)
    with engine.connect() as conn:
        stage_ids = {name.removeprefix("lifecycle:"): sid for sid, name in conn.execute(
            select(Segment.id, Segment.name).where(Segment.family == "lifecycle"))}
        by_id = {sid: stage for stage, sid in stage_ids.items()}
        sizes = conn.execute(select(SegmentSize.as_of, SegmentSize.segment_id, SegmentSize.size, SegmentSize.entered)
                             .where(SegmentSize.segment_id.in_(list(by_id) or [-1]), SegmentSize.as_of >= window,
                                    SegmentSize.as_of <= as_of)).all()
        params: dict = {"lo": lo, "hi": cutoff}
        instants = [datetime.combine(m, datetime.min.time(), tzinfo=zone).astimezone(UTC) for m in starts[:-1]]
        types = {"lo": UtcDateTime(), "hi": UtcDateTime()} | {f"ms_{i}": UtcDateTime() for i in range(len(instants))}
        new_by_month = dict(sql.execute(conn, _FIRST_ORDERS.format(month=_month_case("f.first_at", instants, params)),
                                        params, **types).all())
        expansion_by_month = dict(sql.execute(conn, _EXPANSION.format(
            category_month=_month_case("c.first_purchase_at", instants, params),
            first_month=_month_case("f.first_at", instants, params)), params, **types).all())
        cube = conn.execute(select(SalesDaily.day, SalesDaily.currency, func.sum(SalesDaily.revenue).label("revenue"),
                                   func.sum(SalesDaily.orders)).where(SalesDaily.day >= starts[0] - timedelta(days=31),
                                                                      SalesDaily.day <= as_of)
                            .group_by(SalesDaily.day, SalesDaily.currency)).all()

    def month_of(day: date) -> date:
        return day.replace(day=1)

    latest: dict[date, date] = {}  # month -> its last recompute date
    stage_at: dict[tuple[date, str], int] = {}
    entered: dict[tuple[date, str], int] = defaultdict(int)
    for day, sid, size, came in sizes:
        stage_at[(day, by_id[sid])] = size
        entered[(month_of(day), by_id[sid])] += came
        latest[month_of(day)] = max(latest.get(month_of(day), day), day)
    new_customers = {starts[i]: n for i, n in new_by_month.items() if i >= 0}
    expansion = {starts[i]: n for i, n in expansion_by_month.items() if i >= 0}
    rates = cfg.segments.exchange_rates
    revenue: dict[date, Decimal] = defaultdict(Decimal)
    orders: dict[date, int] = defaultdict(int)
    for day, currency, amount, n in cube:
        revenue[month_of(day)] += to_base(amount, currency, rates, cfg.segments.base_currency)
        orders[month_of(day)] += int(n)

    out = []
    for m, nxt in pairwise(starts):
        last = latest.get(m)
        stages = {s: (stage_at.get((last, s), 0) if last else None) for s in LIFECYCLE_STAGES}
        base_day = max((d for d in {d for d, _ in stage_at} if d < months_up_to(m, 12)[0]), default=None)
        churned_12m = sum(entered[(mm, "churned")] for mm in months_up_to(m, 12)[:-1])
        base = sum(stage_at.get((base_day, s), 0) for s in LIFECYCLE_STAGES if s not in ("prospect", "churned")) \
            if base_day else 0
        basket = (revenue[m] / orders[m]).quantize(Decimal("0.01")) if orders[m] else None
        prev = months_up_to(m - timedelta(days=1), 1)[0]
        prev_basket = revenue[prev] / orders[prev] if orders[prev] else None
        out.append(MonthKpis(
            month=m.isoformat(), complete=nxt <= as_of + timedelta(days=1), stages=stages,
            new_customers=new_customers.get(m, 0), churned=entered[(m, "churned")],
            reactivated=entered[(m, "reactivated")], churn_rate_12m=churned_12m / base if base else None,
            expansion=expansion.get(m, 0), orders=orders[m],
            avg_basket=None if basket is None else f"{basket:.2f}",
            basket_growth=float(basket / prev_basket - 1) if basket is not None and prev_basket else None,
        ))
    return out


# Retention by acquisition cohort: for each month of first order and each later month, the cohort's
# customers with an order in it. One pass over the purchases since the first cohort, each joined to its
# customer's first order (customer_metrics).
_COHORTS = """
SELECT {cohort} AS cohort, {month} AS month_no, COUNT(DISTINCT p.customer_id)
FROM purchases p
JOIN (SELECT customer_id, MIN(first_purchase_at) AS first_at FROM customer_metrics
      WHERE first_purchase_at IS NOT NULL GROUP BY customer_id) f ON f.customer_id = p.customer_id
WHERE p.purchased_at >= :lo AND p.purchased_at < :hi AND p.amount >= 0 AND f.first_at >= :lo
GROUP BY 1, 2
"""


@dataclass
class Cohort:
    month: str  # the month of the cohort's first orders
    customers: int
    active: list[int]  # customers of the cohort with an order in its month 0, 1, 2, ... (up to the as-of month)
    retention: list[float]  # active / customers

    def to_dict(self) -> dict:
        return asdict(self)


def cohort_matrix(engine: Engine, cfg: Settings, as_of: date, months: int = 12) -> list[Cohort]:
    """Retention of the cohorts acquired in the last ``months`` months up to ``as_of`` (oldest first)."""
    zone = ZoneInfo(cfg.timezone)
    starts = months_up_to(as_of, months)
    instants = [datetime.combine(m, datetime.min.time(), tzinfo=zone).astimezone(UTC) for m in starts[:-1]]
    params: dict = {"lo": instants[0], "hi": cutoff_for(as_of, cfg.timezone)}
    types = {"lo": UtcDateTime(), "hi": UtcDateTime()} | {f"ms_{i}": UtcDateTime() for i in range(len(instants))}
    with engine.connect() as conn:
        cells = sql.execute(conn, _COHORTS.format(cohort=_month_case("f.first_at", instants, params),
                                                  month=_month_case("p.purchased_at", instants, params)),
                            params, **types).all()
    grid: dict[int, dict[int, int]] = defaultdict(dict)
    for cohort, month_no, n in cells:
        grid[int(cohort)][int(month_no)] = int(n)
    out = []
    for c in range(len(instants)):
        size = grid[c].get(c, 0)  # everyone of a cohort orders in its own month
        active = [grid[c].get(m, 0) for m in range(c, len(instants))]
        out.append(Cohort(starts[c].isoformat(), size, active, [a / size if size else 0.0 for a in active]))
    return out
