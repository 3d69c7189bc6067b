"""Customer lifetime value benchmark: the nightly fit and scoring on 1M customers and 10M purchases.

    .venv/bin/python bench/bench_clv.py                        # both dialects, full size
    .venv/bin/python bench/bench_clv.py --customers 100000 --purchases 1000000 --dialects sqlite

The data is the results benchmark's (``bench_reports.build``: written inside the database, 1M profiles,
10M purchases over 2025-2026 with 2 % refunds and skewed buyers), each customer's amounts then scaled by a
factor of their own (``vary_spend``), and customer_metrics' first orders derived in SQL. Timed, as of
2026-12-31: ``fit_clv`` (each customer's purchase days brought up to date, the SQL calibration summary,
BG/NBD and Gamma-Gamma, scoring every buyer, writing ``customer_clv``), with its phases, three times:

1. ``first``: after the load, every customer queued (what the upgrade that creates ``customer_days`` does):
   the purchase days of every customer are built once;
2. ``night``: after a night's file of 21,000 purchases (20,000 of the last day, 1,000 late), refreshed
   through the metrics as ingest does (which queues those buyers);
3. ``again``: nothing new (the re-run replaces the scores rather than adding to them).

References in the same session: one sequential pass over all purchases (reading the data once) and the
calibration summary query alone. Peak resident memory is this process's. Figures go to stdout (and --json
FILE); bench/README.md records them.
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
from bench_reports import build
from bench_reports import reference as scan_purchases
from bench_sales import first_orders

from crm_tasks.store.engine import make_engine, upgrade

AS_OF = date(2026, 12, 31)


def vary_spend(url: str) -> None:
    """Scale each customer's amounts by a factor from 0.5 to 1.5 taken from their id: ``build`` draws an
    amount per purchase alone, so every customer would have the same mean spend, and Gamma-Gamma (whose
    mixing distribution is of customers' mean spends) has nothing to fit and does not converge."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE purchases SET amount = amount * (5 + (CAST(substr(customer_id, 2) AS BIGINT) "
                          "* 7919) % 11) / 10"))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE purchases"))


def summary_only(url: str) -> tuple[float, int]:
    """The calibration summary query alone (fetched as raw rows), and how many buyers it returns."""
    from crm_tasks.analytics.clv import calibration_summary
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    t = time.perf_counter()
    with engine.connect() as conn:
        buyers = len(calibration_summary(conn, load_settings(), AS_OF))
    return time.perf_counter() - t, buyers


def fit(url: str) -> dict:
    from sqlalchemy import func, select

    from crm_tasks.analytics.clv import fit_clv
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import CustomerClv

    engine = make_engine(url)
    t = time.perf_counter()
    result = fit_clv(engine, load_settings(), AS_OF)
    seconds = time.perf_counter() - t
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(CustomerClv)).scalar_one()
    return {"seconds": round(seconds, 2), **result.summary(), "rows_in_table": stored}


def night(url: str) -> None:
    """A night's file: 20,000 purchases of 2026-12-30 and 1,000 late ones of 2026-06-15, by customers who
    bought before. (New buyers are left out: in this data nobody ever stops buying, so BG/NBD's dropout
    parameters fit to about 0, where lifetimes' expected purchases of a one-time buyer are undefined and
    the fit is refused; that case is tested, not timed.)"""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    stamp = (lambda d: f"'{d}T12:00:00.000000'") if sqlite else (lambda d: f"TIMESTAMPTZ '{d} 12:00:00+00'")
    money = "12340000" if sqlite else "1234"
    with engine.begin() as conn:
        for prefix, day, skip, n in (("N", "2026-12-30", 0, 20_000), ("L", "2026-06-15", 20_000, 1_000)):
            conn.execute(text(f"""
                INSERT INTO purchases (transaction_id, customer_id, purchased_at, amount, currency, store_id, sku,
                                       category, quantity, coupon_code, batch_id, line_no)
                SELECT '{prefix}' || customer_id, customer_id, {stamp(day)}, {money}, 'INR', 'S1', 'SKU-1', 'grocery',
                       1, NULL, 2, 1
                FROM (SELECT customer_id FROM customer_metrics WHERE orders > 1
                      ORDER BY customer_id LIMIT {n} OFFSET {skip}) buyers"""))


def queue(url: str, where: str = "") -> None:
    """What ingest leaves for the fit: every customer queued after the load written inside the database, or
    a night's buyers refreshed through the metrics as ingest refreshes them (which queues them)."""
    from sqlalchemy import text

    from crm_tasks.analytics.purchase_days import queue_everyone
    from crm_tasks.ingest import metrics
    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        if not where:
            queue_everyone(conn)
            return
        buyers = set(conn.execute(text(f"SELECT DISTINCT customer_id FROM purchases WHERE {where}")).scalars())
        metrics.mark_for_rebuild(conn, buyers)
        metrics.refresh(conn)


def main() -> None:
    args = parse_args(__doc__, (("--no-build",), {"action": "store_true",
                                                   "help": "Time the database an earlier run built."}))
    figures = {}
    for dialect in args.dialects.split(","):
        if args.no_build:
            url = built_database(dialect, args.data, "bench-clv.db", "crm_bench_clv")
            upgrade(make_engine(url))
        else:
            url = fresh_database(dialect, args.data, file="bench-clv.db", schema="crm_bench_clv")
            build(url, args.customers, args.purchases)
            vary_spend(url)
            first_orders(url)
            queue(url)
        scan = scan_purchases(url)
        first = fit(url)  # builds every customer's purchase days: once, after the first load
        night(url)
        queue(url, "transaction_id LIKE 'N%' OR transaction_id LIKE 'L%'")
        nightly = fit(url)  # the nightly fit: the night's 21,000 buyers' days, then the fit on all
        again = fit(url)  # nothing new: the same scores again
        summary_s, buyers = summary_only(url)
        figures[dialect] = {"customers": args.customers, "purchases": args.purchases, "buyers": buyers,
                            "reference_scan_s": round(scan, 2), "summary_query_s": round(summary_s, 2),
                            "first": first, "night": nightly, "again": again, "peak_rss_mib": peak_rss_mib()}
        print(json.dumps({dialect: figures[dialect]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
