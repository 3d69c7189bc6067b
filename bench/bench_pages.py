"""CRM pages benchmark: each page's data (``crm_tasks.pages``) on 1M customers and 10M purchases.

    .venv/bin/python bench/bench_pages.py                        # both dialects, full size
    .venv/bin/python bench/bench_pages.py --customers 100000 --purchases 1000000 --dialects sqlite

The data is bench_sales.py's (bench_reports.py's customers, purchases and 1M ledger rows written inside the
database; first orders; a year of RFM and lifecycle history for every customer; the sales cube built by
``refresh_sales``), plus the stored sizes of those segments and a CLV score for every customer (as the nightly
fit leaves them). Timed, as of 2026-12-31, each the median of five calls after a first (warm) one: first
counted live (no stored figures), then after the night's ``store_figures`` (timed too) reading them, against
the reference in the same session: one sequential pass over all purchases; the machine's load average before
and after is recorded with them. ``--no-build`` times the pages of a database an earlier run built.

- ``overview``, ``segments``, ``sales`` (by day, with its breakdown by category, store and segment and the
  CLV distribution; also by week, by month, for one category and for one segment), ``campaigns``, ``data_quality``: the page functions the routes call;
- ``customer_search`` (by e-mail), ``customer_record``: the customer page;
- ``members_first``, ``members_from_id``: a segment's first page of members, and the page from an id on;
- ``export``: the CSV export of the largest segment, all of it (rows per second).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import built_database, fresh_database, parse_args, peak_rss_mib
from bench_reports import build, reference
from bench_sales import cube, first_orders, memberships

AS_OF = date(2026, 12, 31)


def scores(url: str) -> None:
    """The segments' stored sizes at their two recomputes, their runs, and a CLV score per customer."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"

    def day(iso: str) -> str:
        return f"'{iso}'" if sqlite else f"DATE '{iso}'"

    stamp = "'2026-12-31T00:00:00.000000'" if sqlite else "TIMESTAMPTZ '2026-12-31 00:00:00+00'"
    money = "(10 + (CAST(substr(customer_id, 2) AS INTEGER) * 7919) % 5000) * 10000" if sqlite else \
        "(10 + (CAST(substr(customer_id, 2) AS BIGINT) * 7919) % 5000)::numeric"
    with engine.begin() as conn:
        for as_of in ("2025-06-01", "2026-06-01"):
            conn.execute(text(f"""
                INSERT INTO segment_sizes (as_of, segment_id, size, entered, exited)
                SELECT {day(as_of)}, segment_id, COUNT(*), 0, 0 FROM segment_memberships
                WHERE valid_from <= {day(as_of)} AND (valid_to IS NULL OR valid_to > {day(as_of)})
                GROUP BY segment_id"""))
            conn.execute(text(f"""
                INSERT INTO segment_runs (as_of, cutoff, computed_at, source, customers, scored, buyers_without_profile,
                                          memberships, entered, exited, parameters, problems)
                VALUES ({day(as_of)}, {stamp}, {stamp}, 'metrics', 0, 0, 0, 0, 0, 0, '{{}}', '[]')"""))
        conn.execute(text(f"""
            INSERT INTO customer_clv (customer_id, as_of, frequency, recency_days, tenure_days, monetary, p_alive,
                                      purchases_90, purchases_365, clv_12m)
            SELECT customer_id, {day('2026-12-31')}, 1, 30.0, 300.0, NULL, 0.5, 1.0, 3.0, {money} FROM customers"""))
        conn.execute(text(f"""
            INSERT INTO clv_fits (as_of, status, params, customers, repeat_customers, detail, seconds)
            VALUES ({day('2026-12-31')}, 'fitted', '{{}}', 0, 0, NULL, 0)"""))
        if not sqlite:
            conn.execute(text("ANALYZE"))


def timed(fn, repeat: int = 5) -> float:
    """The median of ``repeat`` calls after a first one (which warms the caches), in milliseconds."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 1)


def pages(url: str) -> dict:
    from sqlalchemy import func, select

    from crm_tasks.pages import customers, data
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import Customer, SalesDaily, Segment, SegmentMembership

    engine = make_engine(url)
    cfg = load_settings(env={"CRM_DATABASE_URL": url})
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(Customer)).scalar_one()
        someone = f"C{n // 2:07d}"
        email = conn.execute(select(Customer.email).where(Customer.customer_id == someone)).scalar_one()
        category = conn.execute(select(SalesDaily.category).limit(1)).scalar_one()
        biggest = conn.execute(select(Segment.name).join(SegmentMembership, SegmentMembership.segment_id == Segment.id)
                               .where(SegmentMembership.valid_to.is_(None)).group_by(Segment.name)
                               .order_by(func.count().desc()).limit(1)).scalar_one()
    out = {
        "overview_ms": timed(lambda: data.overview(engine, cfg, AS_OF)),
        "segments_ms": timed(lambda: data.segments_page(engine, AS_OF, "rfm")),
        "sales_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "day")),
        "sales_by_week_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "week")),
        "sales_by_month_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "month")),
        "sales_by_category_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "day", category=category)),
        "sales_by_category_with_buyers_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "day", category=category,
                                                                          count_buyers=True), repeat=3),
        "sales_by_segment_ms": timed(lambda: data.sales_page(engine, cfg, AS_OF, "day", segment="rfm:champions")),
        "campaigns_ms": timed(lambda: data.campaigns_page(engine)),
        "data_quality_ms": timed(lambda: data.data_quality(engine, AS_OF)),
        "customer_search_ms": timed(lambda: customers.search(engine, email)),
        "customer_record_ms": timed(lambda: customers.record(engine, cfg, someone)),
        "members_first_ms": timed(lambda: data.segment_members(engine, biggest)),
        "members_from_id_ms": timed(lambda: data.segment_members(engine, biggest, start=someone)),
    }
    t = time.perf_counter()
    lines = sum(chunk.count("\r\n") for chunk in data.export_rows(engine, biggest)) - 1
    seconds = time.perf_counter() - t
    out["export"] = {"segment": biggest, "rows": lines, "seconds": round(seconds, 2),
                     "rows_per_s": round(lines / seconds) if seconds else None}
    return out


def purchase_days(url: str) -> float:
    """Each customer's purchase days brought up to date, as the nightly lifetime-value fit leaves them."""
    from sqlalchemy import select

    from crm_tasks.analytics.purchase_days import queue_everyone, refresh_purchase_days
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import CustomerDay

    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        # The purchases were written inside the database, around ingest, which queues each buyer: queue them all.
        if conn.execute(select(CustomerDay.customer_id).limit(1)).first() is None:
            queue_everyone(conn)
    refresh_purchase_days(engine, load_settings(env={"CRM_DATABASE_URL": url}))
    return round(time.perf_counter() - started, 1)


def figures(url: str) -> dict:
    """The night's step that stores the reports the pages open with (what crm_reports runs after the cube)."""
    from crm_tasks.analytics.figures import store_figures
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    result = store_figures(make_engine(url), load_settings(env={"CRM_DATABASE_URL": url}), AS_OF)
    return result.summary()


def main() -> None:
    args = parse_args(__doc__, (("--no-build",), {"action": "store_true",
                                                  "help": "reuse the database an earlier run built and cubed: "
                                                          "time only the pages"}))
    from sqlalchemy import delete

    from crm_tasks.store.engine import make_engine, upgrade
    from crm_tasks.store.models import ReportFigure

    results = {}
    for dialect in args.dialects.split(","):
        load = os.getloadavg()
        if args.no_build:
            url = built_database(dialect, args.data, file="bench-pages.db", schema="crm_bench_pages")
            steps = {}
        else:
            url = fresh_database(dialect, args.data, file="bench-pages.db", schema="crm_bench_pages")
            build(url, args.customers, args.purchases)
            first_orders(url)
            memberships(url)
            scores(url)
            steps = {"cube_build": cube(url)}
        upgrade(make_engine(url))  # a database an earlier version built gets the tables it lacks
        steps["purchase_days_s"] = purchase_days(url)  # as the nightly CLV fit keeps them (the first: all)
        with make_engine(url).begin() as conn:
            conn.execute(delete(ReportFigure))  # the pages below count live: the reference
        steps |= {"reference_scan_s": round(reference(url), 2), "live": pages(url)}
        steps["figures_store"] = figures(url)
        steps["stored"] = pages(url)
        # The machine is shared: its load (1, 5, 15 minutes) before and after says how quiet the figures are.
        steps["load_average"] = {"before": [round(x, 1) for x in load], "after": [round(x, 1) for x in os.getloadavg()]}
        steps["peak_rss_mib"] = peak_rss_mib()
        results[dialect] = steps
        print(json.dumps({dialect: steps}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
