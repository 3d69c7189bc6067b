"""Duplicates merged: profiles sharing an e-mail address or a phone become one, the most recently
updated, with everything that named the others re-pointed to it (``customer_merges`` keeps the trail).

The statements run inside the weekly cleanup's transaction (``archive.run_cleanup``), on its scratch
tables ``cleanup_groups`` and ``cleanup_merge``.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import Connection, Date

from crm_tasks.errors import CrmError
from crm_tasks.ingest import metrics
from crm_tasks.store import sql

DUPLICATE_EMAIL = "duplicate_email"
DUPLICATE_PHONE = "duplicate_phone"
MERGE_RULES = {DUPLICATE_EMAIL: "email", DUPLICATE_PHONE: "phone"}  # rule -> key column


# Step 2: duplicate groups by one key column. The column is indexed (ix_customers_email,
# ix_customers_phone), so the groups with more than one profile are found on the index;
# only their members are ranked. Survivor: the most recently updated, then the lowest id
# (by code point on both dialects).
_GROUPS = """
INSERT INTO cleanup_groups (key_value, n)
SELECT {key}, COUNT(*) FROM customers WHERE {key} IS NOT NULL AND {key} <> '' GROUP BY {key} HAVING COUNT(*) > 1
"""

_DUPLICATES = """
INSERT INTO cleanup_merge (merged_id, survivor_id)
SELECT customer_id, survivor_id FROM (
    SELECT c.customer_id,
           FIRST_VALUE(c.customer_id) OVER (PARTITION BY c.{key} ORDER BY c.updated_at DESC, c.customer_id{collate})
               AS survivor_id
    FROM customers c
    WHERE c.{key} IN (SELECT key_value FROM cleanup_groups WHERE n <= :max_group)
) ranked
WHERE customer_id <> survivor_id
"""


# The survivor takes the fields it lacks from the most recently updated merged profile that has them.
_FILL = """(SELECT d.{col} FROM cleanup_merge x JOIN customers d ON d.customer_id = x.merged_id
    WHERE x.survivor_id = customers.customer_id AND d.{col} IS NOT NULL
    ORDER BY d.updated_at DESC, d.customer_id{collate} LIMIT 1)"""

_FILLED = ("first_name", "last_name", "email", "phone", "birthday")


# Everything that names the merged id moves to the survivor (ix_purchases_customer, ix_messages_customer
# and ix_suppressions_customer_id find the rows).
_REPOINT = """
UPDATE {table} SET customer_id = (SELECT x.survivor_id FROM cleanup_merge x WHERE x.merged_id = {table}.customer_id)
WHERE customer_id IN (SELECT merged_id FROM cleanup_merge)
"""

_REPOINTED = ("purchases", "coupons", "messages", "suppressions")


# A plan has one row per run and customer: in each run, a survivor without a row of its own takes the row
# of its lowest merged id that has one; its other merged ids' rows, and all of them where the survivor has
# a row, stay. Rows left behind keep the merged id, which customer_merges traces to the survivor. Chosen per
# run and survivor in one grouped pass: the same rule as a correlated NOT EXISTS with an OR (the survivor's
# row, or a lower merged id's), which PostgreSQL planned as a nested loop over the plan for every row (64 s
# for 4,026 merges and 202k plan rows; bench/README.md, "The whole night").
_REPOINT_PLAN = """
UPDATE campaign_plan SET customer_id = (SELECT x.survivor_id FROM cleanup_merge x
                                        WHERE x.merged_id = campaign_plan.customer_id)
WHERE (run_id, customer_id) IN (
    SELECT cp.run_id, MIN(cp.customer_id)
      FROM campaign_plan cp JOIN cleanup_merge x ON x.merged_id = cp.customer_id
     WHERE NOT EXISTS (SELECT 1 FROM campaign_plan s WHERE s.run_id = cp.run_id AND s.customer_id = x.survivor_id)
     GROUP BY cp.run_id, x.survivor_id)
"""


# Both sides of every merge are rebuilt exactly from their purchases by metrics.refresh.
_MARK_MERGED = """
INSERT INTO metrics_dirty (customer_id, rebuild)
SELECT customer_id, {true} FROM (SELECT merged_id AS customer_id FROM cleanup_merge
                                  UNION SELECT survivor_id FROM cleanup_merge) ids WHERE true
ON CONFLICT (customer_id) DO UPDATE SET rebuild = excluded.rebuild
"""


def merge_duplicates(conn: Connection, key: str, rule: str, as_of: date, max_group: int) -> tuple[int, int]:
    """Merge the duplicates by one key column; returns (profiles merged away, groups skipped as too large)."""
    collate = sql.byte_order(conn)
    conn.exec_driver_sql("DELETE FROM cleanup_merge")
    conn.exec_driver_sql("DELETE FROM cleanup_groups")
    conn.exec_driver_sql(_GROUPS.format(key=key))
    skipped = sql.count(conn, "SELECT COUNT(*) FROM cleanup_groups WHERE n > :max_group", {"max_group": max_group})
    n = sql.execute(conn, _DUPLICATES.format(key=key, collate=collate), {"max_group": max_group}).rowcount
    if not n:
        return 0, skipped
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE cleanup_merge")  # temporary tables are never auto-analyzed
    fills = ", ".join(f"{col} = COALESCE({col}, {_FILL.format(col=col, collate=collate)})" for col in _FILLED)
    conn.exec_driver_sql(f"UPDATE customers SET {fills} "
                         "WHERE customer_id IN (SELECT survivor_id FROM cleanup_merge)")
    sql.execute(conn, "INSERT INTO customer_merges (merged_id, survivor_id, rule, merged_on) "
               "SELECT merged_id, survivor_id, :rule, :as_of FROM cleanup_merge",
         {"rule": rule, "as_of": as_of}, as_of=Date)
    for table in _REPOINTED:
        conn.exec_driver_sql(_REPOINT.format(table=table))
    conn.exec_driver_sql(_REPOINT_PLAN)
    conn.exec_driver_sql(_MARK_MERGED.format(true=sql.true(conn)))
    metrics.refresh(conn)
    deleted = conn.exec_driver_sql(
        "DELETE FROM customers WHERE customer_id IN (SELECT merged_id FROM cleanup_merge)").rowcount
    if deleted != n:
        raise CrmError(f"cleanup: {n} duplicates found by {key} but {deleted} removed; nothing was changed")
    return n, skipped
