"""Forecast benchmark: the nightly revenue forecast on 1M customers and 10M purchases.

    .venv/bin/python bench/bench_forecast.py                        # both dialects, full size
    .venv/bin/python bench/bench_forecast.py --customers 100000 --purchases 1000000 --dialects sqlite

The database is the results benchmark's (``bench_reports.build``: 10M purchases over 2025-2026, 2 %
refunds), so the two share their figures' ground. Timed, as of 2026-12-31, twice (the second replaces the
first fit's rows): ``forecast_revenue`` (the daily series read from the sales cube, four ETS forms fitted
and compared, 90 days with intervals, 8 backtest refits, one transaction), next to two references in the
same session: the bare pass over all purchases (``bench_reports.reference``) and statsmodels alone fitting the
chosen form once to the same series and forecasting 90 days with intervals. Figures go to stdout (and
--json FILE); bench/README.md records them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import built_database, fresh_database, parse_args, peak_rss_mib
from bench_reports import AS_OF, build, reference
from bench_sales import cube, first_orders


def forecast(url: str) -> dict:
    from crm_tasks.analytics.forecast import forecast_revenue
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    return forecast_revenue(make_engine(url), load_settings(), AS_OF).summary()


def statsmodels_alone(url: str, model: str) -> dict:
    """The same series, fitted once in the chosen form by statsmodels, 90 days forecast with 95 % intervals."""
    from crm_tasks.analytics.forecast import CANDIDATES, daily_revenue, fit_ets
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    series = daily_revenue(make_engine(url), load_settings(), AS_OF)
    spec = next(s for s in CANDIDATES if s.name == model)
    t = time.perf_counter()
    fit_ets(series, spec).get_prediction(start=len(series), end=len(series) + 89).summary_frame(alpha=0.05)
    return {"days": len(series), "fit_and_predict_s": round(time.perf_counter() - t, 2)}


def main() -> None:
    args = parse_args(__doc__, (("--no-build",), {"action": "store_true",
                                                   "help": "Time the database an earlier run built."}))
    figures = {}
    for dialect in args.dialects.split(","):
        if args.no_build:
            url = built_database(dialect, args.data, "bench-forecast.db", "crm_bench_forecast")
        else:
            url = fresh_database(dialect, args.data, file="bench-forecast.db", schema="crm_bench_forecast")
            build(url, args.customers, args.purchases)
            first_orders(url)
            cube(url)  # the forecast reads the sales cube, which crm_reports refreshes first (bench_sales.py)
        scan = reference(url)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            summary = forecast(url)
            runs.append({**summary, "wall_s": round(time.perf_counter() - t, 2)})
        figures[dialect] = {"reference_scan_s": round(scan, 2),
                            "statsmodels_alone": statsmodels_alone(url, runs[0]["model"]),
                            "forecast": runs, "peak_rss_mib": peak_rss_mib()}
        print(json.dumps({dialect: figures[dialect]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
