"""Each customer's purchase days (``customer_days``), kept current as the metrics are: the lifetime-value
fit's calibration data without grouping every purchase every night.

A purchase day is a local business day of crm.yaml's time zone (daylight saving included, as in the sales
cube) with at least one order (amount >= 0) in one currency; refunds are not purchases. Each row says
whether it is the customer's first purchase day in any currency, BG/NBD's time zero, which no later
cutoff can move.

Every metrics refresh (ingest, a replaced or corrected file, a merge) queues the customers it touched in
``customer_days_dirty``; ``refresh_purchase_days`` recomputes exactly those customers' rows from their own
purchases and empties the queue, in one transaction. A night costs its buyers' purchases, not the
history; the first refresh after the upgrade that created the table builds every customer's days once,
and so does the first after crm.yaml's time zone changed (``zone.py``).
"""

from __future__ import annotations

import logging
import time
from datetime import date

from sqlalchemy import Connection, Engine, delete, func, select, text

from crm_tasks.analytics.sales import EPOCH, day_number_sql
from crm_tasks.analytics.zone import zone_changed
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.models import CustomerDay, CustomerDaysDirty, CustomerMetrics

log = logging.getLogger(__name__)

# The queued customers' orders grouped by local day and currency. CROSS JOIN makes SQLite start from the
# queue and seek into ix_purchases_customer (a night's buyers, not every purchase); the first day is the
# customer's first order in any currency, which customer_metrics keeps (refreshed in the same transaction
# that queued the customer).
_REBUILD = """
INSERT INTO customer_days (customer_id, day, currency, first_day, counts_day, orders, value)
SELECT g.customer_id, g.day_no, g.currency, g.day_no = {first_day},
       g.currency = MIN(g.currency) OVER (PARTITION BY g.customer_id, g.day_no), g.orders, g.value
FROM (SELECT p.customer_id, {day} AS day_no, p.currency, COUNT(*) AS orders, SUM(p.amount) AS value
      FROM customer_days_dirty q CROSS JOIN purchases p
      WHERE p.customer_id = q.customer_id AND p.amount >= 0
      GROUP BY p.customer_id, {day}, p.currency) g
JOIN (SELECT m.customer_id, MIN(m.first_purchase_at) AS first_at FROM customer_metrics m
      WHERE m.customer_id IN (SELECT customer_id FROM customer_days_dirty) AND m.first_purchase_at IS NOT NULL
      GROUP BY m.customer_id) f ON f.customer_id = g.customer_id
"""


def refresh_purchase_days(engine: Engine, cfg: Settings) -> int:
    """Recompute the queued customers' purchase days and empty the queue; returns how many were queued."""
    started = time.perf_counter()
    with engine.begin() as conn:
        if zone_changed(conn, "customer_days", cfg.timezone):
            queue_everyone(conn)
        queued = conn.execute(select(func.count()).select_from(CustomerDaysDirty)).scalar_one()
        rows = _rebuild(conn, cfg) if queued else 0
    if queued:
        log.info("purchase days: %d customers recomputed into %d rows (%.1f s)", queued, rows,
                 time.perf_counter() - started)
    return queued


def _rebuild(conn: Connection, cfg: Settings) -> int:
    if conn.dialect.name == "postgresql":
        # The queue was filled since the planner last looked: with a stale size PostgreSQL picked plans from
        # twenty seconds to several minutes for the same night; with its size, the night's buyers are looked
        # up by index. Their history is grouped in memory; JIT compiling a one-off statement costs more than
        # it saves.
        conn.execute(text("ANALYZE customer_days_dirty"))
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        conn.execute(text("SET LOCAL jit = off"))
    queue = select(CustomerDaysDirty.customer_id)
    conn.execute(delete(CustomerDay).where(CustomerDay.customer_id.in_(queue)))
    lo, hi = conn.execute(select(func.min(CustomerMetrics.first_purchase_at),
                                 func.max(CustomerMetrics.last_purchase_at))
                          .where(CustomerMetrics.customer_id.in_(queue))).one()
    rows = 0
    if lo is not None:  # else the queued customers have no orders left (refunds only, erased, merged away)
        params: dict = {}
        day = day_number_sql("p.purchased_at", cfg.timezone, lo, hi, conn.dialect.name, params)
        first_day = day_number_sql("f.first_at", cfg.timezone, lo, hi, conn.dialect.name, params, prefix="fz")
        rows = sql.execute(conn, _REBUILD.format(day=day, first_day=first_day), params).rowcount
    conn.execute(delete(CustomerDaysDirty))
    return rows


def queue_everyone(conn: Connection) -> None:
    """Queue every customer with purchase metrics (a repair, or data written around ingest)."""
    conn.execute(delete(CustomerDaysDirty))
    conn.execute(CustomerDaysDirty.__table__.insert().from_select(
        ["customer_id"], select(CustomerMetrics.customer_id).distinct()))


def day_number(day: date) -> int:
    """A date as the table keeps it: days since 1970-01-01."""
    return (day - EPOCH).days

