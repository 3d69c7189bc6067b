"""Customer lifetime value benchmark: the nightly fit and scoring on 1M customers and 10M purchases.

    .venv/bin/python bench/bench_clv.py                        # both dialects, full size
    .venv/bin/python bench/bench_clv.py --customers 100000 --purchases 1000000 --dialects sqlite

The data is the results benchmark's (``bench_reports.build``: written inside the database, 1M profiles,
10M purchases over 2025-2026 with 2 % refunds and skewed buyers), each customer's amounts then scaled by a
factor of their own (``vary_spend``). Timed, as of 2026-12-31, twice (the
second shows a re-run replaces the scores rather than adding to them): ``fit_clv`` (the SQL calibration
summary, BG/NBD and Gamma-Gamma, scoring every buyer, writing ``customer_clv``), with its phases, against
two references in the same session: one sequential pass over all purchases (reading the data once) and the
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

from bench_ingest import fresh_database, parse_args, peak_rss_mib
from bench_reports import build
from bench_reports import reference as scan_purchases

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
    result = fit_clv(engine, load_settings(), AS_OF)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(CustomerClv)).scalar_one()
    return result.summary() | {"rows_in_table": stored}


def main() -> None:
    args = parse_args(__doc__)
    figures = {}
    for dialect in args.dialects.split(","):
        url = fresh_database(dialect, args.data, file="bench-clv.db", schema="crm_bench_clv")
        build(url, args.customers, args.purchases)
        vary_spend(url)
        scan = scan_purchases(url)
        summary_s, buyers = summary_only(url)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            summary = fit(url)
            runs.append({"seconds": round(time.perf_counter() - t, 2), **summary})
        figures[dialect] = {"customers": args.customers, "purchases": args.purchases, "buyers": buyers,
                            "reference_scan_s": round(scan, 2), "summary_query_s": round(summary_s, 2),
                            "fit": runs, "peak_rss_mib": peak_rss_mib()}
        print(json.dumps({dialect: figures[dialect]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
