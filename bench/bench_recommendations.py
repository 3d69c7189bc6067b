"""Recommendations benchmark: the nightly refresh on 1M customers, 10M purchases and 50k products.

    .venv/bin/python bench/bench_recommendations.py                        # both dialects, full size
    .venv/bin/python bench/bench_recommendations.py --customers 100000 --purchases 1000000 --products 5000 \\
        --dialects sqlite

The data is written inside the database (a numbers series, arithmetic in place of randomness), with
co-purchase structure: 1M profiles; 50k products in 100 categories (prices 100-5,000 INR, 1 in 13 out of
stock); 10M purchases over 2025-2026 by skewed buyers (as ``bench_reports.build``), each customer buying
mostly within a "theme" of 10 products of their own (1 purchase in 5 is any product), 2 % refunds.

Timed, as of 2026-12-31 (the default 365-day window: about half the purchases), each in a process of its
own so that its peak resident memory is its own:

- ``refresh``: ``refresh_recommendations`` (statistics, every customer's list, the tables replaced), twice
  (the second shows a re-run replaces), with the lines it wrote to ``customer_recommendations`` (the lists of
  customers with orders or recent impressions; everyone else's is the shop-wide list, stored once);
- the reference in the same run: pandas computing the same co-purchase statistics (support, confidence and
  lift of every pair with the minimum support) from the window's purchases read out of the same database.

Each figure comes with the machine's load average just before and after it. Figures go to stdout (and
--json FILE); bench/README.md records them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import built_database, fresh_database, parse_args, peak_rss_mib
from bench_reports import C_EPOCH, _series, _spell, insert_customers, insert_purchases, skewed_buyer

AS_OF = date(2026, 12, 31)
THEME = 10  # products per customer's theme


def build(url: str, customers: int, purchases: int, products: int) -> None:
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    s = _spell(engine.dialect.name)
    themes = products // THEME
    started = time.time()
    with engine.begin() as conn:
        insert_customers(conn, s, customers)
        head, source = _series(s, products)
        conn.execute(text(f"""{head}
            INSERT INTO products (sku, name, name_hi, name_te, name_fa, name_ur, brand, category, price, currency,
                                  url, image_url, in_stock, updated_at, batch_id)
            SELECT 'P' || x, 'Product ' || x, NULL, NULL, NULL, NULL, NULL, 'cat' || (x % 100),
                   {s['money'].format(units='100 + (x * 37) % 4900')}, 'INR',
                   'https://shop.example.com/p/' || x, 'https://shop.example.com/img/' || x || '.jpg',
                   CASE WHEN x % 13 = 0 THEN {s['false']} ELSE {s['true']} END,
                   {s['ts'].format(epoch=str(C_EPOCH))}, 1
            FROM {source}"""))
        # Skewed buyers as in bench_reports.build; a customer's theme is their id modulo the themes.
        who = skewed_buyer(customers)
        product = (f"CASE WHEN x % 5 = 0 THEN (x * 104729) % {products} "
                   f"ELSE (({who}) % {themes}) * {THEME} + (x * 7) % {THEME} END")
        insert_purchases(conn, s, purchases, who, sku=f"'P' || ({product})", category="'cat'")
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    print(f"built in {time.time() - started:.0f} s", flush=True)


def migrated(url: str) -> None:
    from crm_tasks.store.engine import make_engine, upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


def refresh(url: str) -> dict:
    from sqlalchemy import func, select

    from crm_tasks.analytics.recommendations import refresh_recommendations
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import CustomerRecommendation

    engine = make_engine(url)
    t = time.perf_counter()
    result = refresh_recommendations(engine, load_settings(), AS_OF)
    seconds = round(time.perf_counter() - t, 2)
    with engine.connect() as conn:
        written = conn.execute(select(func.count()).select_from(CustomerRecommendation)).scalar_one()
    return {"seconds": seconds, **result.summary(), "lines_written": written, "peak_rss_mib": peak_rss_mib()}


def reference(url: str) -> dict:
    """The same co-purchase statistics in pandas: the window's orders read from the database, distinct
    (customer, product) baskets, a self-merge on the customer, counts per pair, the minimum support."""
    import pandas as pd
    from sqlalchemy import bindparam, text

    from crm_tasks.analytics.recommendations import window_start
    from crm_tasks.clock import cutoff_for
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.types import UtcDateTime

    cfg = load_settings()
    rules = cfg.recommendations
    engine = make_engine(url)
    t = time.perf_counter()
    start = cutoff_for(window_start(rules, AS_OF) - timedelta(days=1), cfg.timezone)
    end = cutoff_for(AS_OF, cfg.timezone)
    stmt = text("SELECT customer_id, sku FROM purchases WHERE purchased_at >= :start AND purchased_at < :end "
                "AND amount >= 0").bindparams(bindparam("start", type_=UtcDateTime()),
                                              bindparam("end", type_=UtcDateTime()))
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(stmt, {"start": start, "end": end}).all(), columns=["customer", "sku"])
    read = time.perf_counter() - t
    frame["customer"] = frame["customer"].astype("category").cat.codes.astype("int32")
    sku = frame["sku"].astype("category")
    frame["sku"] = sku.cat.codes.astype("int32")
    baskets = frame.drop_duplicates()
    del frame
    buyers = baskets.groupby("sku").size()
    n = baskets["customer"].nunique()
    both = baskets.merge(baskets, on="customer", suffixes=("", "_o"))
    both = both[both["sku"] != both["sku_o"]]
    pair_rows = len(both)
    pairs = both.groupby(["sku", "sku_o"]).size().rename("support").reset_index()
    del both
    pairs = pairs[pairs["support"] >= rules.min_support]
    a, b = buyers.loc[pairs["sku"]].to_numpy(), buyers.loc[pairs["sku_o"]].to_numpy()
    pairs["confidence"] = pairs["support"].to_numpy() / a
    pairs["lift"] = pairs["support"].to_numpy() * n / (a.astype(float) * b)
    return {"seconds": round(time.perf_counter() - t, 2), "read_s": round(read, 2), "baskets": len(baskets),
            "pair_rows": pair_rows, "pairs": len(pairs), "peak_rss_mib": peak_rss_mib()}


def child(what: str, url: str) -> dict:
    """Run ``what`` in a process of its own: its peak memory is then its own. With the machine's load average
    (1, 5, 15 minutes) just before and just after, as ``uptime`` shows it: the machine may be shared."""
    before = [round(x, 2) for x in os.getloadavg()]
    done = subprocess.run([sys.executable, __file__, "--child", what, url], check=False, capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": before,
            "load_after": [round(x, 2) for x in os.getloadavg()], "finished": time.strftime("%H:%M:%S")}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps({"refresh": refresh, "reference": reference}[sys.argv[2]](sys.argv[3])))
        return
    args = parse_args(__doc__, (("--products",), {"type": int, "default": 50_000}),
                      (("--no-build",), {"action": "store_true", "help": "Time the database an earlier run built."}),
                      (("--schema",), {"default": "crm_bench_rec",
                                       "help": "the PostgreSQL schema (a smaller size beside the full one)"}))
    figures = {}
    for dialect in args.dialects.split(","):
        if args.no_build:
            url = built_database(dialect, args.data, "bench-recommendations.db", args.schema)
            migrated(url)  # a database built before the latest migration gets it first, untimed
        else:
            url = fresh_database(dialect, args.data, file="bench-recommendations.db", schema=args.schema)
            build(url, args.customers, args.purchases, args.products)
        first = child("refresh", url)
        again = child("refresh", url)
        ref = child("reference", url)
        figures[dialect] = {"customers": args.customers, "purchases": args.purchases, "products": args.products,
                            "refresh": first, "again": again, "pandas_reference": ref}
        print(json.dumps({dialect: figures[dialect]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
