"""Segments benchmark: the full recompute for 1M customers and 10M purchases, against pandas.

    .venv/bin/python bench/bench_segments.py                  # both dialects, full size
    .venv/bin/python bench/bench_segments.py --purchases 1000000 --customers 100000 --dialects sqlite

The database is loaded once per dialect through the real ingest (bench_ingest's
landing files and code) and kept in bench/data/ (SQLite) or the schema
crm_bench_segments (PostgreSQL). Each timed step then runs in its own process, as
it would in its own Airflow task, and reports its peak memory (max RSS):

1. ``first``: the first recompute, as of the end of the data (the year of history
   plus one night of 30k purchases and 3k profile updates): every membership is
   new, the history is written from nothing;
2. ``next``: the next day's recompute, the nightly case: scores, stages, tiers,
   the shipped custom segments, and the history diff (a day later recency has
   moved, so customers change segments);
3. ``rerun``: the same date again (undo, then the same result);
4. ``look_back``: a dry run as of a month earlier, which rescans the purchases;
5. ``pandas_metrics`` and ``pandas_purchases``: the same RFM scores and named
   segments in vectorised pandas, from the same maintained totals and from the raw
   purchases, read from and stored back into the same database (with the engine's
   own fastest bulk insert). RFM only: no lifecycle, tiers, custom segments or history.

Figures go to stdout (and --json FILE); bench/README.md records them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import peak_rss_mib

INITIAL, NIGHT = date(2026, 1, 1), date(2026, 1, 2)  # bench_ingest's landing partitions
FIRST, NEXT, LOOK_BACK = date(2026, 1, 3), date(2026, 1, 4), date(2025, 12, 1)
PG_URL = os.environ.get("CRM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCHEMA = "crm_bench_segments"


def database(dialect: str, root: Path, landing: Path, tag: str) -> str:
    """A database holding the initial load and one night, through the real ingest; built once."""
    from sqlalchemy import create_engine, text

    from crm_tasks.store.engine import make_engine, upgrade

    marker = root / f"segments-{dialect}-{tag}.ready"
    if dialect == "sqlite":
        url = f"sqlite:///{root / f'segments-{tag}.db'}"
    else:
        url = f"{PG_URL}?options=-csearch_path%3D{SCHEMA}"
    if not marker.exists():
        if dialect == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(root / f"segments-{tag}.db") + suffix).unlink(missing_ok=True)
        else:
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        upgrade(make_engine(url))
        t = time.time()
        for day in (INITIAL, NIGHT):
            for source in ("customers", "purchases"):
                child(["ingest", url, str(landing), day.isoformat(), source])
        marker.write_text(url)
        print(f"{dialect}: loaded the initial data in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    upgrade(make_engine(url))
    return url


def reset_segments(url: str) -> None:
    """Forget every recompute, so that each run starts as on a fresh database: on PostgreSQL the
    tables are truncated, which also forgets their size (a DELETE leaves the pages, and the
    planner would see a table that once held rows, hiding a first night's plan)."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    tables = ("segment_memberships", "segment_sizes", "segment_runs", "segment_stage", "customer_scores", "segments")
    with make_engine(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- steps, each in its own process -----------------------------------------------------------


def step_ingest(url: str, landing: str, day: str, source: str) -> dict:
    from bench_ingest import phase

    return phase(url, Path(landing), date.fromisoformat(day), source)


def step_recompute(url: str, day: str, dry_run: str) -> dict:
    from crm_tasks.segments import compute as segments
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    cfg = load_settings()
    t = time.perf_counter()
    r = segments.recompute(make_engine(url), cfg, date.fromisoformat(day), dry_run=dry_run == "1")
    return {"seconds": round(time.perf_counter() - t, 2), "phases": r.phases, "source": r.source,
            "customers": r.customers,
            "scored": r.scored, "memberships": r.memberships, "entered": r.entered, "exited": r.exited,
            "problems": len(r.problems), "peak_rss_mib": peak_rss_mib(),
            "sizes": {s.name: s.size for s in r.segments}}


def step_pandas(url: str, day: str, source: str) -> dict:
    """RFM scores and named segments in vectorised pandas, read from the same database."""
    import numpy as np
    import pandas as pd
    from sqlalchemy import text

    from crm_tasks.segments import compute as segments
    from crm_tasks.settings import load_settings
    from crm_tasks.store.bulk import bulk_insert
    from crm_tasks.store.engine import make_engine

    cfg = load_settings()
    cutoff = segments.cutoff_for(date.fromisoformat(day), cfg.timezone)
    engine = make_engine(url)
    t = time.perf_counter()
    with engine.connect() as conn:
        customers = pd.read_sql(text("SELECT customer_id FROM customers"), conn)
        if source == "metrics":
            m = pd.read_sql(text("SELECT customer_id, currency, orders, last_purchase_at AS last_at, revenue "
                                 "FROM customer_metrics"), conn)
        else:
            p = pd.read_sql(text("SELECT customer_id, currency, purchased_at, amount FROM purchases"), conn)
            p["purchased_at"] = pd.to_datetime(p["purchased_at"], utc=True, format="ISO8601")
            p = p[p["purchased_at"] < cutoff]
            p["order"] = p["amount"] >= 0
            p["order_at"] = p["purchased_at"].where(p["order"])
            m = p.groupby(["customer_id", "currency"], sort=False).agg(
                orders=("order", "sum"), last_at=("order_at", "max"), revenue=("amount", "sum")).reset_index()
    m["last_at"] = pd.to_datetime(m["last_at"], utc=True, format="ISO8601")
    rates = {k: float(v) for k, v in cfg.segments.exchange_rates.items()}
    units = 10_000 if engine.dialect.name == "sqlite" and source == "metrics" else 1
    m["money"] = (m["revenue"].astype(float) / units * m["currency"].map(rates)).round(4)
    c = m.groupby("customer_id", sort=False).agg(frequency=("orders", "sum"), last_at=("last_at", "max"),
                                                 monetary=("money", "sum"))
    c = c[c.index.isin(customers["customer_id"]) & (c["frequency"] > 0)]
    c["recency"] = (int(cutoff.timestamp()) - c["last_at"].astype("int64") // 10**9) // 86400
    n = len(c)
    scores = {}
    for col, key, asc in (("r", "recency", False), ("f", "frequency", True), ("m", "monetary", True)):
        rank = c[key].rank(method="min", ascending=asc).to_numpy(np.int64)
        scores[col] = 1 + 5 * (rank - 1) // n
    grid = np.array([[""] * 5] + [list(segments.RFM_GRID[r]) for r in range(1, 6)], dtype=object)
    fm = (scores["f"] + scores["m"] + 1) // 2
    c["rfm_segment"] = grid[scores["r"], fm - 1]
    # Stored, as the engine stores its scores: a segment campaigns cannot read is not done.
    rows = list(zip(c.index.tolist(), scores["r"].tolist(), scores["f"].tolist(), scores["m"].tolist(),
                    c["rfm_segment"].tolist()))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_pandas_scores (customer_id VARCHAR(64) PRIMARY KEY, "
                          "r_score INTEGER, f_score INTEGER, m_score INTEGER, rfm_segment VARCHAR(32))"))
        conn.execute(text("DELETE FROM bench_pandas_scores"))
        bulk_insert(conn, "bench_pandas_scores", ["customer_id", "r_score", "f_score", "m_score", "rfm_segment"],
                    rows)
    sizes = c["rfm_segment"].value_counts().to_dict()
    return {"seconds": round(time.perf_counter() - t, 2), "scored": n, "peak_rss_mib": peak_rss_mib(),
            "sizes": {f"rfm:{k}": int(v) for k, v in sizes.items()}}


STEPS = {"ingest": step_ingest, "recompute": step_recompute, "pandas": step_pandas}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(STEPS[sys.argv[2]](*sys.argv[3:])))
        return
    from bench_ingest import ensure_data, parse_args

    args = parse_args(__doc__)
    landing = ensure_data(args.data, args.customers, args.purchases, args.night)
    tag = f"{args.customers}-{args.purchases}"
    results = {"customers": args.customers, "purchases": args.purchases, "cpus": os.cpu_count(), "runs": {}}
    for dialect in args.dialects.split(","):
        url = database(dialect, args.data, landing, tag)
        reset_segments(url)
        run: dict = {}
        run["first"] = child(["recompute", url, FIRST.isoformat(), "0"])
        run["next"] = child(["recompute", url, NEXT.isoformat(), "0"])
        run["rerun"] = child(["recompute", url, NEXT.isoformat(), "0"])
        run["look_back"] = child(["recompute", url, LOOK_BACK.isoformat(), "1"])
        run["pandas_metrics"] = child(["pandas", url, NEXT.isoformat(), "metrics"])
        run["pandas_purchases"] = child(["pandas", url, NEXT.isoformat(), "purchases"])
        # The same RFM: pandas and SQL must agree on every named segment's size.
        ours = {k: v for k, v in run["next"]["sizes"].items() if k.startswith("rfm:") and v}
        for name in ("pandas_metrics", "pandas_purchases"):
            run[name]["agrees"] = run[name]["sizes"] == ours
        results["runs"][dialect] = run
        for name in ("first", "next", "rerun", "look_back", "pandas_metrics", "pandas_purchases"):
            r = run[name]
            extra = (f"source {r['source']:<9} entered {r['entered']:>8} left {r['exited']:>7}" if "source" in r
                     else f"same sizes as SQL: {r['agrees']}")
            print(f"{dialect:<10} {name:<16} {r['seconds']:>7.1f} s  peak {r['peak_rss_mib']:>5} MiB  {extra}",
                  flush=True)
        if args.json:  # after each dialect: a long run keeps what it measured
            for r in run.values():
                r.pop("sizes", None)
            previous = json.loads(args.json.read_text()) if args.json.exists() else {}
            previous.update({k: v for k, v in results.items() if k != "runs"})
            previous.setdefault("runs", {})[dialect] = run
            args.json.write_text(json.dumps(previous, indent=2))
        for name in ("pandas_metrics", "pandas_purchases"):
            print(f"{dialect:<10} the nightly recompute is {run[name]['seconds'] / run['next']['seconds']:.1f}x "
                  f"as fast as {name}", flush=True)



if __name__ == "__main__":
    main()
