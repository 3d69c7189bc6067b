"""Sales cube benchmark: the first build over 10M purchases, a night with nothing new, and a night that adds a
day of purchases and corrects an old one.

    .venv/bin/python bench/bench_sales.py                       # both dialects, full size
    .venv/bin/python bench/bench_sales.py --customers 100000 --purchases 1000000 --dialects sqlite

The data is bench_reports.py's (1M customers, 10M purchases over 2025-2026, written inside the database),
with customer_metrics' first orders derived from it in SQL and a year of RFM and lifecycle history for every
customer (for the cube by segment). Timed steps, as of 2026-12-31, each against
the reference in the same session: one sequential pass over all purchases (`SELECT currency, COUNT(*),
SUM(amount) FROM purchases GROUP BY currency`).

1. ``build``: the empty cube filled (every day recomputed);
2. ``unchanged``: the same date again (every fingerprint equal: nothing recomputed);
3. ``nightly``: 20,000 purchases of a new day and 1,000 of a day six months back (a late file), then the
   lifecycle KPIs and the cohort matrix (``kpis``): the issue's nightly figure is the two together.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import built_database, fresh_database, parse_args, peak_rss_mib
from bench_reports import build, reference

AS_OF = date(2026, 12, 31)


def first_orders(url: str) -> None:
    """customer_metrics' first order per customer, as ingest would leave it (the cube reads nothing else)."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO customer_metrics (customer_id, currency, first_purchase_at, last_purchase_at, orders, refunds,
                                          items, revenue, avg_basket, favourite_category)
            SELECT customer_id, currency, MIN(CASE WHEN amount >= 0 THEN purchased_at END), MAX(purchased_at),
                   SUM(CASE WHEN amount >= 0 THEN 1 ELSE 0 END), SUM(CASE WHEN amount < 0 THEN 1 ELSE 0 END),
                   SUM(quantity), SUM(amount), NULL, NULL
            FROM purchases GROUP BY customer_id, currency"""))


def memberships(url: str) -> None:
    """A year of segment history, as the nightly recompute leaves it: every customer in an RFM segment and a
    lifecycle stage from 2025-06-01, half of them moved to another on 2026-06-01 (4.5M rows), so the cube by
    segment seeks a real history for each purchase."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    stamp = "'2026-01-01T00:00:00.000000'" if sqlite else "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    odd = "CAST(substr(customer_id, 2) AS INTEGER) % 2 = 1"

    def day(iso: str) -> str:
        return f"'{iso}'" if sqlite else f"DATE '{iso}'"

    with engine.begin() as conn:
        for i, name in enumerate(("rfm:champions", "rfm:at_risk", "lifecycle:active", "lifecycle:at_risk"), 1):
            conn.execute(text(f"INSERT INTO segments (id, name, family, description, status, updated_at) VALUES "
                              f"({i}, '{name}', '{name.split(':')[0]}', '', 'active', {stamp})"))
        for first, moved in ((1, 2), (3, 4)):
            conn.execute(text(f"""
                INSERT INTO segment_memberships (segment_id, customer_id, valid_from, valid_to)
                SELECT {first}, customer_id, {day('2025-06-01')}, CASE WHEN {odd} THEN {day('2026-06-01')} END
                FROM customers"""))
            conn.execute(text(f"""
                INSERT INTO segment_memberships (segment_id, customer_id, valid_from, valid_to)
                SELECT {moved}, customer_id, {day('2026-06-01')}, NULL FROM customers WHERE {odd}"""))
        if not sqlite:
            conn.execute(text("ANALYZE segment_memberships"))


def late_and_new(url: str, tag: str = "") -> None:
    """20,000 purchases of 2026-12-30 and 1,000 of 2026-06-15; ``tag`` keeps a re-run's transaction ids new."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    money = "12340000" if sqlite else "1234"
    stamp = (lambda d, s: f"'{d}T{s}.000000'") if sqlite else (lambda d, s: f"TIMESTAMPTZ '{d} {s}+00'")
    with engine.begin() as conn:
        for n, day, prefix in ((20_000, "2026-12-30", "N"), (1_000, "2026-06-15", "L")):
            values = ", ".join(
                f"('{prefix}{tag}{i}', 'C{i * 37 % 1000000:07d}', {stamp(day, f'{6 + i % 12:02d}:{i % 60:02d}:00')}, "
                f"{money}, 'INR', 'S1', 'SKU-1', 'grocery', 1, NULL, 2, {i})" for i in range(n))
            conn.execute(text("INSERT INTO purchases (transaction_id, customer_id, purchased_at, amount, currency, "
                              "store_id, sku, category, quantity, coupon_code, batch_id, line_no) VALUES " + values))


def cube(url: str) -> dict:
    from crm_tasks.analytics.sales import refresh_sales
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    t = time.perf_counter()
    result = refresh_sales(make_engine(url), load_settings(), AS_OF)
    return {"seconds": round(time.perf_counter() - t, 2), **result.summary()}


def kpis(url: str) -> dict:
    """The Monday figures read after the cube: lifecycle KPIs and the cohort matrix over 12 months."""
    from crm_tasks.analytics.kpis import cohort_matrix, lifecycle_kpis
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    engine, cfg = make_engine(url), load_settings()
    t = time.perf_counter()
    lifecycle_kpis(engine, cfg, AS_OF)
    middle = time.perf_counter()
    cohort_matrix(engine, cfg, AS_OF)
    return {"lifecycle_kpis_s": round(middle - t, 2), "cohort_matrix_s": round(time.perf_counter() - middle, 2)}


def main() -> None:
    args = parse_args(__doc__, (("--no-build",), {"action": "store_true",
                                                  "help": "reuse the database an earlier run built and cubed: "
                                                          "time only the two nights, with new transaction ids"}))
    figures = {}
    for dialect in args.dialects.split(","):
        if args.no_build:
            url = built_database(dialect, args.data, file="bench-sales.db", schema="crm_bench_sales")
            steps = {"reference_scan_s": round(reference(url), 2), "unchanged": cube(url)}
        else:
            url = fresh_database(dialect, args.data, file="bench-sales.db", schema="crm_bench_sales")
            build(url, args.customers, args.purchases)
            first_orders(url)
            memberships(url)
            steps = {"reference_scan_s": round(reference(url), 2), "build": cube(url), "unchanged": cube(url)}
        late_and_new(url, tag=str(int(time.time())) if args.no_build else "")
        steps["nightly"] = cube(url)
        steps["kpis"] = kpis(url)
        steps["nightly_with_kpis_s"] = round(steps["nightly"]["seconds"] + sum(steps["kpis"].values()), 2)
        steps["peak_rss_mib"] = peak_rss_mib()
        figures[dialect] = steps
        print(json.dumps({dialect: steps}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
