"""Per-customer purchase metrics, kept current by ingest.

Only customers touched by a batch are recomputed: ingest marks them in
``metrics_dirty`` and ``refresh_dirty`` rebuilds their rows from their own
purchases (walking ``ix_purchases_customer``), in the same transaction as the
load. A nightly file of 30k purchases touches about as many customers, not
the whole history.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# Marks every customer with a purchase in the batch; relies on ix_purchases_batch.
_MARK_BATCH = """
INSERT INTO metrics_dirty (customer_id)
SELECT DISTINCT customer_id FROM purchases WHERE batch_id = :batch_id
ON CONFLICT (customer_id) DO NOTHING
"""

_DELETE_DIRTY_METRICS = """
DELETE FROM customer_metrics WHERE customer_id IN (SELECT customer_id FROM metrics_dirty)
"""

# Orders are transactions with amount >= 0 (a free item is still an order); refunds
# (amount < 0) lower revenue but are not orders. First and last purchase ignore
# refunds. Amounts of different currencies are never added up: one row per currency.
# The favourite category has the most orders; ties go to the higher order revenue,
# then to the alphabetically first category, so the result is deterministic.
#
# One pass over the purchases groups them by customer, currency and category
# (by_category, materialised once); the per-customer totals and the favourite
# category are then derived from that much smaller set.
_INSERT_METRICS = """
INSERT INTO customer_metrics (
    customer_id, currency, first_purchase_at, last_purchase_at,
    orders, refunds, items, revenue, avg_basket, favourite_category)
WITH by_category AS MATERIALIZED (
    SELECT p.customer_id, p.currency, p.category,
           MIN(CASE WHEN p.amount >= 0 THEN p.purchased_at END) AS first_purchase_at,
           MAX(CASE WHEN p.amount >= 0 THEN p.purchased_at END) AS last_purchase_at,
           SUM(CASE WHEN p.amount >= 0 THEN 1 ELSE 0 END) AS orders,
           SUM(CASE WHEN p.amount < 0 THEN 1 ELSE 0 END) AS refunds,
           SUM(CASE WHEN p.amount >= 0 THEN p.quantity ELSE 0 END) AS items,
           SUM(p.amount) AS revenue,
           SUM(CASE WHEN p.amount >= 0 THEN p.amount ELSE 0 END) AS order_revenue
    FROM metrics_dirty d JOIN purchases p ON p.customer_id = d.customer_id
    GROUP BY p.customer_id, p.currency, p.category
),
agg AS (
    SELECT customer_id, currency, MIN(first_purchase_at) AS first_purchase_at,
           MAX(last_purchase_at) AS last_purchase_at, SUM(orders) AS orders, SUM(refunds) AS refunds,
           SUM(items) AS items, SUM(revenue) AS revenue
    FROM by_category
    GROUP BY customer_id, currency
),
cat AS (
    SELECT customer_id, currency, category,
           ROW_NUMBER() OVER (
               PARTITION BY customer_id, currency
               ORDER BY orders DESC, order_revenue DESC, category) AS rn
    FROM by_category
    WHERE orders > 0
)
SELECT agg.customer_id, agg.currency, agg.first_purchase_at, agg.last_purchase_at,
       agg.orders, agg.refunds, agg.items, agg.revenue, {avg_basket}, cat.category
FROM agg
LEFT JOIN cat ON cat.customer_id = agg.customer_id AND cat.currency = agg.currency AND cat.rn = 1
"""

# Average basket = revenue / orders, rounded half away from zero to 4 decimals on
# both dialects: PostgreSQL's ROUND(numeric) does that; on SQLite money is an
# integer of 1/10000 units and integer division truncates, so add half first.
_AVG = {
    "postgresql": "ROUND(agg.revenue / NULLIF(agg.orders, 0), 4)",
    "sqlite": (
        "CASE WHEN agg.orders > 0 THEN (2 * agg.revenue + "
        "(CASE WHEN agg.revenue >= 0 THEN agg.orders ELSE -agg.orders END)) / (2 * agg.orders) END"
    ),
}


def mark_batch(conn: Connection, batch_id: int) -> None:
    conn.execute(text(_MARK_BATCH), {"batch_id": batch_id})


def mark_all(conn: Connection) -> None:
    """Queue every customer with purchases (for a full rebuild)."""
    conn.execute(text(
        "INSERT INTO metrics_dirty (customer_id) SELECT DISTINCT customer_id FROM purchases WHERE true "
        "ON CONFLICT (customer_id) DO NOTHING"
    ))


def refresh_dirty(conn: Connection) -> int:
    """Recompute metrics of queued customers; returns how many customers were refreshed."""
    dirty = conn.execute(text("SELECT COUNT(*) FROM metrics_dirty")).scalar_one()
    if not dirty:
        return 0
    conn.execute(text(_DELETE_DIRTY_METRICS))
    conn.execute(text(_INSERT_METRICS.format(avg_basket=_AVG[conn.dialect.name])))
    conn.execute(text("DELETE FROM metrics_dirty"))
    return dirty
