"""Per-customer purchase metrics, kept current by ingest without rescanning history.

State is kept per customer, currency and category in ``customer_category_metrics``
(counts, sums, first and last purchase). Each batch of purchases is aggregated
in Arrow while it loads, and the aggregate is added to that state in one upsert;
``customer_metrics`` is then re-derived for the customers the batch touched
from their few category rows. A nightly file of 30k purchases costs in
proportion to those 30k rows, not to the history.

A first bulk load on PostgreSQL (no metrics anywhere yet) holds its deltas to the end of the
file and writes the whole state at once by COPY, ``customer_metrics`` included, derived in
Arrow by the same rules (``initial_rows``): upserting millions of keys in slices, then deriving
a million customers in SQL, took most of a 10M-row load.

Where a delta cannot be trusted (a corrected file replaced earlier rows, or a
chunk held transaction ids already loaded), the customers concerned are marked
for an exact rebuild from their own purchases in SQL instead.

Definitions: orders are transactions with amount >= 0 (a free item is still an
order); refunds (amount < 0) lower revenue but are not orders; first and last
purchase ignore refunds. Amounts of different currencies are never added: one
row per currency. The favourite category has the most orders; ties go to the
higher order revenue, then to the alphabetically first category.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, func, select, text, true

from crm_tasks.store import sql
from crm_tasks.store.bulk import bulk_insert, copy_instants, copy_money, dialect_insert
from crm_tasks.store.models import CustomerCategoryMetrics, CustomerMetrics, MetricsDirty, Purchase
from crm_tasks.store.types import timestamp_texts

log = logging.getLogger(__name__)
KEYS = ["customer_id", "currency", "category"]
_SLICE = 200_000
_SUMS = ["orders", "refunds", "items", "revenue", "order_revenue"]


# --- batch deltas, in Arrow ------------------------------------------------------------


def delta(customer_id, currency, category, purchased_at_us: np.ndarray, amount_units: np.ndarray,
          quantity: np.ndarray) -> pa.Table:
    """Aggregate purchase rows per customer, currency and category (amounts in 1/10000 units)."""
    order = amount_units >= 0
    ts = pa.array(purchased_at_us, type=pa.timestamp("us", "UTC"))
    table = pa.table({
        "customer_id": pa.array(customer_id, type=pa.string()),
        "currency": pa.array(currency, type=pa.string()),
        "category": pa.array(category, type=pa.string()),
        "order_at": pc.if_else(pa.array(order), ts, pa.scalar(None, ts.type)),
        "orders": order.astype(np.int64),
        "refunds": (~order).astype(np.int64),
        "items": np.where(order, quantity, 0).astype(np.int64),
        "revenue": amount_units.astype(np.int64),
        "order_revenue": np.where(order, amount_units, 0).astype(np.int64),
    })
    return _group(table, first="order_at", last="order_at")


def merge(deltas: list[pa.Table]) -> pa.Table:
    """Combine deltas of several chunks into one."""
    if len(deltas) == 1:
        return deltas[0]
    return _group(pa.concat_tables(deltas), first="first_purchase_at", last="last_purchase_at")


def _group(table: pa.Table, first: str, last: str) -> pa.Table:
    aggs = [(first, "min"), (last, "max")] + [(c, "sum") for c in _SUMS]
    out = table.group_by(KEYS, use_threads=False).aggregate(aggs)
    return out.rename_columns(KEYS + ["first_purchase_at", "last_purchase_at"] + _SUMS)


# --- applying deltas and refreshing, in SQL --------------------------------------------

_COLUMNS = KEYS + ["first_purchase_at", "last_purchase_at"] + _SUMS

# Sums add up; first and last purchase keep the earlier and the later (either may be NULL).
_UPSERT = {
    dialect: (
        "ON CONFLICT (customer_id, currency, category) DO UPDATE SET "
        f"first_purchase_at = {sql.least(dialect)}(COALESCE(customer_category_metrics.first_purchase_at, "
        "excluded.first_purchase_at), COALESCE(excluded.first_purchase_at, customer_category_metrics.first_purchase_at)), "
        f"last_purchase_at = {sql.greatest(dialect)}(COALESCE(customer_category_metrics.last_purchase_at, "
        "excluded.last_purchase_at), COALESCE(excluded.last_purchase_at, customer_category_metrics.last_purchase_at)), "
        + ", ".join(f"{c} = customer_category_metrics.{c} + excluded.{c}" for c in _SUMS)
    )
    for dialect in ("sqlite", "postgresql")
}


@dataclass
class DeltaRows:
    """A delta shaped for the database: category rows to upsert and customers to queue."""

    categories: list[tuple] | pa.Table
    customers: list[tuple] | pa.Table


def delta_rows(table: pa.Table, dialect: str, presorted: bool = False) -> list[DeltaRows]:
    """Turn a delta into database rows, in slices (tuples of millions of keys cost gigabytes): tuples
    for SQLite, Arrow tables for PostgreSQL's COPY.

    Pure, so that ingest can run it off the thread that writes to the database.
    """
    # Key order makes the inserts append to the primary key's B-tree instead of scattering.
    if not presorted:
        table = table.sort_by([(k, "ascending") for k in KEYS])
    out = []
    for start in range(0, table.num_rows, _SLICE):
        part = table.slice(start, _SLICE)
        cols = {c: part.column(c).combine_chunks() for c in _COLUMNS}
        buyers = pc.unique(cols["customer_id"])
        if dialect != "sqlite":
            for c in ("first_purchase_at", "last_purchase_at"):
                cols[c] = copy_instants(cols[c])
            for c in ("revenue", "order_revenue"):
                cols[c] = copy_money(cols[c])
            out.append(DeltaRows(pa.table(cols).select(_COLUMNS),
                                 pa.table({"customer_id": buyers, "rebuild": pa.array([False] * len(buyers))})))
            continue
        stamps = [_stamp_text(cols[c], dialect) for c in ("first_purchase_at", "last_purchase_at")]
        categories = list(zip(
            cols["customer_id"].to_pylist(), cols["currency"].to_pylist(), cols["category"].to_pylist(),
            *stamps, cols["orders"].to_pylist(), cols["refunds"].to_pylist(), cols["items"].to_pylist(),
            cols["revenue"].to_pylist(), cols["order_revenue"].to_pylist(),
        ))
        out.append(DeltaRows(categories, [(c, False) for c in buyers.to_pylist()]))
    return out


def write_delta(conn: Connection, parts: list[DeltaRows]) -> int:
    """Add a delta to the category state and queue its customers; returns the keys written."""
    upsert = _UPSERT[conn.dialect.name]
    for part in parts:
        bulk_insert(conn, "customer_category_metrics", _COLUMNS, part.categories, upsert)
        # Sorted by customer, a customer's keys may straddle two slices: hence DO NOTHING.
        bulk_insert(conn, "metrics_dirty", ["customer_id", "rebuild"], part.customers,
                    "ON CONFLICT (customer_id) DO NOTHING")
    return sum(len(p.categories) for p in parts)


def apply_delta(conn: Connection, table: pa.Table) -> int:
    return write_delta(conn, delta_rows(table, conn.dialect.name)) if table.num_rows else 0


# --- an initial load on PostgreSQL: the whole state at once ----------------------------

_CUSTOMER_COLUMNS = ["customer_id", "currency", "first_purchase_at", "last_purchase_at", "orders", "refunds",
                     "items", "revenue", "avg_basket", "favourite_category"]


@dataclass
class InitialRows:
    """A first load's complete metrics, shaped for COPY: category state, per-customer metrics, and the
    customers whose purchase days are now stale."""

    categories: list[DeltaRows]
    customers: pa.Table
    days: pa.Table


def initial_rows(table: pa.Table) -> InitialRows:
    """The metrics of customers who had none, from the merged delta of all their purchases: the
    category state as ``delta_rows`` shapes it, and ``customer_metrics`` derived here instead of in
    SQL (a 10M-row first load has a million customers; deriving them in the database, which is the
    bottleneck of a bulk load, took longer than computing them here, off its critical path).

    The rules are those of ``_DERIVE_CUSTOMERS``, computed exactly on integer units; a test checks both
    against an independent pandas computation. Pure, so it can run off the writing thread.
    """
    table = table.sort_by([(k, "ascending") for k in KEYS])
    n = table.num_rows
    cust, cur, cat = (table.column(k).combine_chunks() for k in KEYS)
    # Rows are sorted by customer, currency and category: a (customer, currency) group is a run.
    starts = np.ones(n, dtype=bool)
    if n > 1:
        same = pc.and_(pc.equal(cust.slice(1), cust.slice(0, n - 1)), pc.equal(cur.slice(1), cur.slice(0, n - 1)))
        starts[1:] = ~same.to_numpy(zero_copy_only=False)
    first_rows = np.flatnonzero(starts)
    group = np.cumsum(starts) - 1

    def ints(name: str) -> np.ndarray:
        return table.column(name).combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)

    sums = {c: np.add.reduceat(ints(c), first_rows) if n else np.zeros(0, np.int64)
            for c in ("orders", "refunds", "items", "revenue")}

    def extreme(name: str, reduce, empty: int) -> pa.Array:
        col = table.column(name).combine_chunks().cast(pa.timestamp("us", "UTC"))
        us = pc.fill_null(col.cast(pa.int64()), empty).to_numpy(zero_copy_only=False)
        out = reduce.reduceat(us, first_rows) if n else np.zeros(0, np.int64)
        return pa.array(out, pa.int64(), mask=out == empty).cast(pa.timestamp("us", "UTC"))

    first = extreme("first_purchase_at", np.minimum, np.iinfo(np.int64).max)
    last = extreme("last_purchase_at", np.maximum, np.iinfo(np.int64).min)
    # Favourite: most orders, then the higher order revenue, then the first category by code point
    # (the row order inside a run, as Arrow sorts strings by their UTF-8 bytes); none without orders.
    orders = ints("orders")
    pick = np.lexsort((np.arange(n), -ints("order_revenue"), -orders, group))
    pick = pick[np.r_[True, group[pick][1:] != group[pick][:-1]]] if n else pick
    favourite = cat.take(pa.array(pick)).to_numpy(zero_copy_only=False)
    favourite = pa.array(np.where(orders[pick] > 0, favourite, None), pa.string())
    # Revenue / orders rounded half away from zero to whole units (sql.money_per), exactly.
    revenue, count = sums["revenue"], sums["orders"]
    safe = np.maximum(count, 1)
    basket = np.sign(revenue) * ((2 * np.abs(revenue) + safe) // (2 * safe))
    customers = pa.table({
        "customer_id": cust.take(pa.array(first_rows)),
        "currency": cur.take(pa.array(first_rows)),
        "first_purchase_at": copy_instants(first),
        "last_purchase_at": copy_instants(last),
        "orders": sums["orders"], "refunds": sums["refunds"], "items": sums["items"],
        "revenue": copy_money(pa.array(revenue)),
        "avg_basket": copy_money(pa.array(basket, mask=count == 0)),
        "favourite_category": favourite,
    })
    days = pa.table({"customer_id": pc.unique(cust)})
    return InitialRows(delta_rows(table, "postgresql", presorted=True), customers, days)


def write_initial(conn: Connection, rows: InitialRows) -> int:
    """Store a first load's metrics (``initial_rows``) where none were: the category state and the
    customers' metrics by COPY, and the customers' purchase days queued; returns the keys written."""
    for part in rows.categories:
        bulk_insert(conn, "customer_category_metrics", _COLUMNS, part.categories, _UPSERT[conn.dialect.name])
    bulk_insert(conn, "customer_metrics", _CUSTOMER_COLUMNS, rows.customers)
    # Other work may have queued some of them already.
    bulk_insert(conn, "customer_days_dirty", ["customer_id"], rows.days, "ON CONFLICT (customer_id) DO NOTHING")
    return sum(len(p.categories) for p in rows.categories)


def metrics_empty(conn: Connection) -> bool:
    """Whether no customer has metrics, state or a queued refresh yet (a first load)."""
    return not any(conn.execute(select(true()).select_from(model).limit(1)).first()
                   for model in (CustomerCategoryMetrics, CustomerMetrics, MetricsDirty))


def _stamp_text(col: pa.Array, dialect: str) -> list:
    utc_us = col.cast(pa.timestamp("us", "UTC")).to_numpy(zero_copy_only=False)
    return timestamp_texts(utc_us.astype("datetime64[us]"), dialect)


def _mark_from_purchases(conn: Connection, *where) -> None:
    """Queue the customers of the matching purchases for an exact rebuild (an existing mark is upgraded)."""
    # SQLite reads "ON CONFLICT" after a SELECT as a join constraint unless the SELECT has a WHERE.
    buyers = select(Purchase.customer_id, true()).where(true(), *where).distinct()
    stmt = dialect_insert(conn)(MetricsDirty).from_select(["customer_id", "rebuild"], buyers)
    conn.execute(stmt.on_conflict_do_update(index_elements=["customer_id"],
                                            set_={"rebuild": stmt.excluded.rebuild}))


def mark_batch_for_rebuild(conn: Connection, batch_id: int) -> None:
    """Queue a (replaced) batch's customers for an exact rebuild."""
    _mark_from_purchases(conn, Purchase.batch_id == batch_id)


def mark_for_rebuild(conn: Connection, customer_ids: set[str]) -> None:
    bulk_insert(conn, "metrics_dirty", ["customer_id", "rebuild"], [(c, True) for c in sorted(customer_ids)],
                "ON CONFLICT (customer_id) DO UPDATE SET rebuild = excluded.rebuild")


def mark_all_for_rebuild(conn: Connection) -> None:
    """Queue every customer with purchases for an exact rebuild (repair, or after a manual fix)."""
    _mark_from_purchases(conn)


# The exact path: rebuild the category state of marked customers from their own purchases.
# CROSS JOIN makes SQLite start from the few marked customers and seek into
# ix_purchases_customer, instead of scanning every purchase (PostgreSQL plans it freely).
_REBUILD_INSERT = """
INSERT INTO customer_category_metrics (
    customer_id, currency, category, first_purchase_at, last_purchase_at,
    orders, refunds, items, revenue, order_revenue)
SELECT p.customer_id, p.currency, p.category,
       MIN(CASE WHEN p.amount >= 0 THEN p.purchased_at END),
       MAX(CASE WHEN p.amount >= 0 THEN p.purchased_at END),
       SUM(CASE WHEN p.amount >= 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN p.amount < 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN p.amount >= 0 THEN p.quantity ELSE 0 END),
       SUM(p.amount),
       SUM(CASE WHEN p.amount >= 0 THEN p.amount ELSE 0 END)
FROM metrics_dirty d CROSS JOIN purchases p
WHERE p.customer_id = d.customer_id AND d.rebuild = {true}
GROUP BY p.customer_id, p.currency, p.category
"""

# Per-customer metrics from the category state; the primary key's order serves the
# GROUP BY, and the favourite category is one index seek per customer and currency.
_DERIVE_CUSTOMERS = """
INSERT INTO customer_metrics (
    customer_id, currency, first_purchase_at, last_purchase_at,
    orders, refunds, items, revenue, avg_basket, favourite_category)
SELECT agg.customer_id, agg.currency, agg.first_purchase_at, agg.last_purchase_at,
       agg.orders, agg.refunds, agg.items, agg.revenue, {avg_basket},
       (SELECT c.category FROM customer_category_metrics c
        WHERE c.customer_id = agg.customer_id AND c.currency = agg.currency AND c.orders > 0
        ORDER BY c.orders DESC, c.order_revenue DESC, c.category{collate} LIMIT 1)
FROM (
    SELECT m.customer_id, m.currency, MIN(m.first_purchase_at) AS first_purchase_at,
           MAX(m.last_purchase_at) AS last_purchase_at, SUM(m.orders) AS orders,
           SUM(m.refunds) AS refunds, SUM(m.items) AS items, SUM(m.revenue) AS revenue
    FROM customer_category_metrics m
    WHERE m.customer_id IN (SELECT customer_id FROM metrics_dirty)
    GROUP BY m.customer_id, m.currency
) agg
"""

# The same in one pass on PostgreSQL: the favourite comes from an ordered ARRAY_AGG inside the
# group instead of a seek per customer and currency (a 1M-customer load has 1M groups).
_DERIVE_CUSTOMERS_PG = """
INSERT INTO customer_metrics (
    customer_id, currency, first_purchase_at, last_purchase_at,
    orders, refunds, items, revenue, avg_basket, favourite_category)
SELECT m.customer_id, m.currency, MIN(m.first_purchase_at), MAX(m.last_purchase_at),
       SUM(m.orders), SUM(m.refunds), SUM(m.items), SUM(m.revenue), {avg_basket},
       (ARRAY_AGG(m.category ORDER BY m.orders DESC, m.order_revenue DESC, m.category{collate})
        FILTER (WHERE m.orders > 0))[1]
FROM customer_category_metrics m
WHERE m.customer_id IN (SELECT customer_id FROM metrics_dirty)
GROUP BY m.customer_id, m.currency
"""


# SQLite reads "ON CONFLICT" after a SELECT as a join constraint unless the SELECT has a WHERE.
_QUEUE_DAYS = """
INSERT INTO customer_days_dirty (customer_id)
SELECT customer_id FROM metrics_dirty WHERE {true} ON CONFLICT (customer_id) DO NOTHING
"""


def refresh(conn: Connection) -> int:
    """Rebuild marked customers' category state, re-derive every queued customer's
    metrics, and empty the queue; returns how many customers were refreshed."""
    t = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[step] = now - t
        t = now

    queued = conn.execute(select(func.count()).select_from(MetricsDirty)).scalar_one()
    if not queued:
        return 0
    rebuild = select(MetricsDirty.customer_id).where(MetricsDirty.rebuild)
    if conn.execute(rebuild.limit(1)).first():
        conn.execute(delete(CustomerCategoryMetrics).where(CustomerCategoryMetrics.customer_id.in_(rebuild)))
        conn.execute(text(_REBUILD_INSERT.format(true=sql.true(conn))))
    lap("rebuild")
    conn.execute(delete(CustomerMetrics).where(CustomerMetrics.customer_id.in_(select(MetricsDirty.customer_id))))
    lap("delete")
    # Ties go to the first category by code point on both dialects, whatever PostgreSQL's collation.
    # Average basket = revenue / orders, rounded as money is everywhere (store.sql.money_per).
    if conn.dialect.name == "postgresql":
        avg_basket = sql.money_per("SUM(m.revenue)", "SUM(m.orders)", conn.dialect.name)
        derive = _DERIVE_CUSTOMERS_PG
    else:
        avg_basket = sql.money_per("agg.revenue", "agg.orders", conn.dialect.name)
        derive = _DERIVE_CUSTOMERS
    conn.execute(text(derive.format(avg_basket=avg_basket, collate=sql.byte_order(conn))))
    lap("derive")
    # The same customers' purchase days are stale too; the nightly lifetime-value fit recomputes them.
    conn.execute(text(_QUEUE_DAYS.format(true=sql.true(conn))))
    lap("queue days")
    conn.execute(delete(MetricsDirty))
    lap("dequeue")
    log.info("metrics of %d customers refreshed: %s", queued, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return queued
