"""Cleanup benchmark: 1M customers, 25% of them stale or duplicated, archived and later purged.

    .venv/bin/python bench/bench_cleanup.py                       # both dialects, full size, twice
    .venv/bin/python bench/bench_cleanup.py --customers 100000 --dialects sqlite --repeat 1

The database is written directly (bulk inserts, not through ingest: the cleanup reads
only profiles, per-customer totals and suppressions), once per repetition, so that every
repetition starts from the same state. As of 2026-01-31:

- 75% fresh profiles (updated or bought in the last year, 5% of them silent for 18-24
  months: "at risk"), 80% of all profiles with a purchase;
- 20% ``inactive`` (no purchase and no update for more than 24 months; half bought once,
  long ago), 3% ``no_contact`` (no address, no phone), 1% ``hard_bounce`` (a hard-bounce
  suppression for their address, no phone), 1% duplicates (the address of a fresh profile,
  older: merged into it, with their purchase re-pointed and both metrics rebuilt).

Each timed step runs in its own process, as in its own Airflow task, and reports its peak
memory (VmHWM):

1. ``dry_run``: the whole cleanup in a transaction that is rolled back;
2. ``archive``: the real run: 10k merges and 240k profiles archived (the guardrail opened
   to 30% for the benchmark);
3. ``rerun``: the same date again (finds nothing new, the same result);
4. ``purge``: 30 days later, the 240k archived profiles purged: address hashes into
   ``suppressions``, ledger rows redacted, the archive emptied.

Figures go to stdout (and --json FILE); bench/README.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import fresh_database, peak_rss_mib

AS_OF = date(2026, 1, 31)
PURGE = AS_OF + timedelta(days=30)
SCHEMA = "crm_bench_cleanup"


def _stamps(days_before, dialect: str) -> list:
    """Instants ``days_before`` (float array) before AS_OF's midnight UTC, in the dialect's storage text."""
    import numpy as np

    from crm_tasks.store.types import timestamp_texts

    base = np.datetime64(AS_OF.isoformat(), "us")
    return timestamp_texts(base - (days_before * 86_400e6).astype("timedelta64[us]"), dialect)


def build(url: str, n: int, seed: int = 11) -> dict:
    """Write the benchmark's profiles, totals, purchases and suppressions; returns the planted counts."""
    import numpy as np
    from sqlalchemy import text

    from crm_tasks.delivery.suppression import email_hash
    from crm_tasks.settings import load_settings
    from crm_tasks.store.bulk import bulk_insert
    from crm_tasks.store.engine import make_engine, upgrade
    from crm_tasks.store.keys import load_keys

    engine = make_engine(url)
    upgrade(engine)
    dialect = engine.dialect.name
    rng = np.random.default_rng(seed)
    kind = rng.choice(5, size=n, p=[0.75, 0.20, 0.03, 0.01, 0.01])  # fresh, inactive, no contact, bounce, dup
    ids = np.array([f"C{i:07d}" for i in range(n)], dtype=object)
    emails = np.array([f"c{i:07d}@example.com" for i in range(n)], dtype=object)
    phones = np.array([f"+9170{i:08d}" for i in range(n)], dtype=object)
    fresh = np.flatnonzero(kind == 0)
    dups = np.flatnonzero(kind == 4)
    emails[dups] = emails[rng.choice(fresh, size=len(dups), replace=False)]  # an older copy of a fresh profile
    has_phone = rng.random(n) < 0.5
    phones[~has_phone | (kind == 2) | (kind == 3)] = None
    emails[kind == 2] = None
    at_risk = (kind == 0) & (rng.random(n) < 0.05)
    updated = np.where(kind == 1, rng.uniform(760, 1500, n), rng.uniform(1, 360, n))
    updated = np.where(at_risk, rng.uniform(560, 720, n), updated)
    updated = np.where(kind == 4, updated + 30, updated)  # the duplicate is the older copy
    buyer = np.where(kind == 1, rng.random(n) < 0.5, rng.random(n) < 0.85) & ~at_risk
    bought = np.where(kind == 1, rng.uniform(760, 1500, n), rng.uniform(1, 360, n))
    sql_bool = (lambda v: int(v)) if dialect == "sqlite" else bool
    upd, buy = _stamps(updated, dialect), _stamps(bought, dialect)
    money = 1_000_000 if dialect == "sqlite" else "100.0000"
    t = time.time()
    with engine.begin() as conn:
        for table in ("customers", "customer_metrics", "customer_category_metrics", "purchases", "suppressions",
                      "archived_customers", "customer_merges", "cleanup_runs"):
            conn.execute(text(f"DELETE FROM {table}"))
        cols = ["customer_id", "first_name", "last_name", "email", "phone", "birthday", "locale", "timezone",
                "country", "email_consent", "attributes", "created_at", "updated_at", "batch_id"]
        rows = [(ids[i], "Asha", "Rao", emails[i], phones[i], None, "en-IN", "Asia/Kolkata", "IN", sql_bool(True),
                 "{}", upd[i], upd[i], 1) for i in range(n)]
        bulk_insert(conn, "customers", cols, rows)
        b = np.flatnonzero(buyer)
        bulk_insert(conn, "customer_metrics",
                    ["customer_id", "currency", "first_purchase_at", "last_purchase_at", "orders", "refunds", "items",
                     "revenue", "avg_basket", "favourite_category"],
                    [(ids[i], "INR", buy[i], buy[i], 1, 0, 1, money, money, "grocery") for i in b])
        bulk_insert(conn, "customer_category_metrics",
                    ["customer_id", "currency", "category", "first_purchase_at", "last_purchase_at", "orders",
                     "refunds", "items", "revenue", "order_revenue"],
                    [(ids[i], "INR", "grocery", buy[i], buy[i], 1, 0, 1, money, money) for i in b])
        bulk_insert(conn, "purchases",
                    ["transaction_id", "customer_id", "purchased_at", "amount", "currency", "store_id", "sku",
                     "category", "quantity", "coupon_code", "batch_id", "line_no"],
                    [(f"T{i}", ids[i], buy[i], money, "INR", "S1", "SKU-1", "grocery", 1, None, 1, i) for i in b])
        secret = load_keys(conn, load_settings()).hashing
        now = _stamps(np.array([1.0]), dialect)[0]
        bulk_insert(conn, "suppressions", ["email_hash", "customer_id", "reason", "created_at"],
                    [(email_hash(emails[i], secret), ids[i], "hard_bounce", now) for i in np.flatnonzero(kind == 3)])
        if dialect == "postgresql":
            conn.execute(text("ANALYZE"))
    planted = {name: int((kind == k).sum()) for k, name in enumerate(
        ("fresh", "inactive", "no_contact", "hard_bounce", "duplicate"))}
    print(f"built {n} profiles in {time.time() - t:.0f} s: {planted}", file=sys.stderr, flush=True)
    return planted


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_cleanup(url: str, day: str, dry_run: str) -> dict:
    from crm_tasks.cleanup.archive import run_cleanup
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    cfg = load_settings()
    cfg = cfg.model_copy(update={"cleanup": cfg.cleanup.model_copy(update={"max_archive_share": 0.30})})
    t = time.perf_counter()
    r = run_cleanup(make_engine(url), cfg, date.fromisoformat(day), dry_run=dry_run == "1")
    return {"seconds": round(time.perf_counter() - t, 2), "phases": r.phases, "peak_rss_mib": peak_rss_mib(),
            "profiles_before": r.profiles_before, "kept": r.kept, "archived": r.archived, "merged": r.merged,
            "purged": r.purged, "reasons": r.reasons, "reconciles": r.reconciles,
            "freshness": [r.active_share, r.at_risk_share, r.archived_share]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(step_cleanup(*sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--dialects", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=2, help="build and time this many times per dialect")
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    results: dict = {"customers": args.customers, "cpus": os.cpu_count(), "runs": {}}
    for dialect in args.dialects.split(","):
        for rep in range(args.repeat):
            url = fresh_database(dialect, args.data, "cleanup.db", SCHEMA)
            planted = build(url, args.customers)
            load = os.getloadavg()[0]
            run = {"planted": planted, "load_before": round(load, 2)}
            run["dry_run"] = child([url, AS_OF.isoformat(), "1"])
            run["archive"] = child([url, AS_OF.isoformat(), "0"])
            run["rerun"] = child([url, AS_OF.isoformat(), "0"])
            run["purge"] = child([url, PURGE.isoformat(), "0"])
            results["runs"].setdefault(dialect, []).append(run)
            for name in ("dry_run", "archive", "rerun", "purge"):
                r = run[name]
                print(f"{dialect:<10} #{rep + 1} {name:<8} {r['seconds']:>6.1f} s  peak {r['peak_rss_mib']:>5} MiB  "
                      f"archived {r['archived']:>7} merged {r['merged']:>6} purged {r['purged']:>7} "
                      f"reconciles {r['reconciles']}  (load {load:.1f})", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
