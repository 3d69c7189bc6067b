"""The programme's total lift: the global control group against every other customer, month by month.

``results.global_control_share`` (default 5 %) of all customers, chosen by a stable hash of the customer
id alone (``crm_tasks.campaigns.planning.global_control``), receive no marketing campaign; campaigns with
``global_control: false`` (transactional-style) still reach them, which makes the measured lift a slight
underestimate. For each of the last ``results.control_months`` months (in crm.yaml's time zone), among
the customers whose profile existed when the month began: revenue per customer (net, base currency,
zeros included) and the share who bought, marketed against control, with Welch's interval for the
difference and a delta-method interval for the relative lift (each customer's month is summed in SQL, so
the groups' moments are at hand rather than every value).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, insert

from crm_tasks.campaigns.planning import global_control
from crm_tasks.clock import cutoff_for, months_up_to
from crm_tasks.results import lift
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import bulk_insert
from crm_tasks.store.models import ControlResult
from crm_tasks.store.types import Money, UtcDateTime, to_base

CONTROL, MARKETED = "control", "marketed"

# Each customer's month in one pass over the months' purchases (ix_purchases_customer is not used: the
# range is on time alone, and a year of purchases is read once). Exact per-currency sums for the totals;
# the base-currency value as a float for the spread.
_MONTHLY = """
WITH monthly AS (
    SELECT {month_no} AS month_no, p.customer_id,
           SUM(CASE WHEN p.amount >= 0 THEN 1 ELSE 0 END) AS orders,
           SUM({value}) AS value, {currency_sums}
    FROM purchases p
    WHERE p.purchased_at >= :first_start AND p.purchased_at < :cutoff
    GROUP BY 1, 2
)
SELECT m.month_no, CASE WHEN g.customer_id IS NULL THEN 'marketed' ELSE 'control' END AS grp,
       SUM(CASE WHEN m.orders > 0 THEN 1 ELSE 0 END) AS buyers, SUM(m.value) AS total,
       SUM(m.value * m.value) AS sum_sq, {outer_sums}
FROM monthly m
JOIN customers c ON c.customer_id = m.customer_id AND c.created_at < {month_start}
LEFT JOIN control_members g ON g.customer_id = m.customer_id
GROUP BY m.month_no, CASE WHEN g.customer_id IS NULL THEN 'marketed' ELSE 'control' END
"""


def month_starts(as_of: date, months: int, tz: str) -> list[datetime]:
    """The first instants (UTC) of the last ``months`` local months up to ``as_of``'s, and of the next."""
    zone = ZoneInfo(tz)
    return [datetime.combine(m, datetime.min.time(), tzinfo=zone).astimezone(UTC) for m in months_up_to(as_of, months)]


def refresh_control(conn: Connection, cfg: Settings, as_of: date) -> int:
    """Replace ``control_results`` with the months up to ``as_of``; returns how many months were measured."""
    conn.execute(delete(ControlResult))
    share = cfg.results.global_control_share
    if share <= 0:
        return 0
    cutoff = cutoff_for(as_of, cfg.timezone)
    starts = month_starts(as_of, cfg.results.control_months, cfg.timezone)
    # Raw rows (ids and whole seconds): a million profiles through the ORM's type processing take seconds.
    epoch = sql.epoch_seconds("created_at", conn.dialect.name)
    profiles = conn.exec_driver_sql(f"SELECT customer_id, {epoch} FROM customers").all()
    if not profiles:
        return 0
    ids = pd.Series([p[0] for p in profiles], dtype=object)
    created = np.fromiter((p[1] for p in profiles), dtype=np.int64, count=len(profiles))
    in_control = global_control(ids, share).to_numpy()
    sql.scratch(conn, "control_members", "customer_id VARCHAR(64) PRIMARY KEY")
    bulk_insert(conn, "control_members", ["customer_id"], [(c,) for c in ids[in_control]])

    params: dict = {"first_start": starts[0], "cutoff": cutoff}
    types = {"first_start": UtcDateTime(), "cutoff": UtcDateTime()}
    whens, month_start = [], []
    for i, start in enumerate(starts[:-1]):
        params[f"m_{i}"], params[f"e_{i}"] = start, starts[i + 1]
        types[f"m_{i}"], types[f"e_{i}"] = UtcDateTime(), UtcDateTime()
        whens.append(f"WHEN p.purchased_at < :e_{i} THEN {i}")
        month_start.append(f"WHEN {i} THEN :m_{i}")
    currencies = sorted(cfg.segments.exchange_rates)
    rates = cfg.segments.exchange_rates
    value = _base_value(conn.dialect.name, rates, params)
    statement = _MONTHLY.format(
        month_no=f"CASE {' '.join(whens)} END", value=value,
        currency_sums=", ".join(f"SUM(CASE WHEN p.currency = :cur_{i} THEN p.amount END) AS amt_{i}"
                                for i in range(len(currencies))),
        outer_sums=", ".join(f"SUM(m.amt_{i}) AS amt_{i}" for i in range(len(currencies))),
        month_start=f"(CASE m.month_no {' '.join(month_start)} END)",
    )
    params |= {f"cur_{i}": c for i, c in enumerate(currencies)}
    measured = sql.execute(conn, statement, params, result_types={f"amt_{i}": Money() for i in range(len(currencies))},
                           **types).all()
    sums = {(row[0], row[1]): row for row in measured}

    rows = []
    for i, start in enumerate(starts[:-1]):
        end = starts[i + 1]
        if start >= cutoff:
            break
        existing = created < int(start.timestamp())
        sizes = {CONTROL: int((existing & in_control).sum()), MARKETED: int((existing & ~in_control).sum())}
        groups = {}
        for grp in (CONTROL, MARKETED):
            row = sums.get((i, grp))
            buyers, total, sum_sq = (int(row[2]), float(row[3] or 0), float(row[4] or 0)) if row else (0, 0.0, 0.0)
            groups[grp] = lift.Group(sizes[grp], buyers, total, sum_sq)
            revenue = sum(to_base(row[5 + k] or Decimal(0), c, rates, cfg.segments.base_currency)
                          for k, c in enumerate(currencies)) if row else Decimal(0)
            rows.append({"month": start.astimezone(ZoneInfo(cfg.timezone)).date(), "grp": grp, "as_of": as_of,
                         "month_complete": end <= cutoff, "customers": sizes[grp], "buyers": buyers,
                         "revenue": revenue, "lift": None})
        rows[-1]["lift"] = lift.measure(
            groups[MARKETED], groups[CONTROL], min_group=cfg.results.min_group,
            min_converters=cfg.results.min_converters, resamples=cfg.results.bootstrap_resamples, seed=i,
            window_open=end > cutoff, control_name=CONTROL, treatment_name=MARKETED)
    if rows:
        conn.execute(insert(ControlResult), rows)
    return len(rows) // 2


def _base_value(dialect: str, rates: dict, params: dict) -> str:
    """A purchase's amount in the base currency, as a float (money is integer 1/10000 units on SQLite)."""
    whens = []
    for i, (code, rate) in enumerate(sorted(rates.items())):
        params[f"vc_{i}"], params[f"vr_{i}"] = code, float(Fraction(rate))
        whens.append(f"WHEN :vc_{i} THEN :vr_{i}")
    return f"{sql.money_as_float('p.amount', dialect)} * (CASE p.currency {' '.join(whens)} END)"
