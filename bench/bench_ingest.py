"""Ingest benchmark: 1M customers and 10M purchases, then one incremental night.

    .venv/bin/python bench/bench_ingest.py                 # both dialects, full size
    .venv/bin/python bench/bench_ingest.py --purchases 1000000 --dialects sqlite

Each source of each phase (customers, then purchases) runs in its own process,
as each is its own Airflow task, so that its peak memory (VmHWM) is its own. Landing files are generated once into bench/data/ and reused.
On PostgreSQL the reference is a raw COPY of the same purchase file (``raw_copy``), timed just before
and just after the initial load: the ingest is reported as a ratio to their mean, with the load average
each figure met (the machine may be shared). Each child logs where its load's time went to stderr;
CRM_BENCH_PROFILE=DIR also writes a cProfile of each child there.
Figures go to stdout (and --json FILE); bench/README.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

INITIAL, NIGHT = date(2026, 1, 1), date(2026, 1, 2)
PG_URL = os.environ.get("CRM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def ensure_data(root: Path, customers: int, purchases: int, night: int) -> Path:
    from datagen import customers_frame, purchases_frame, write

    landing = root / f"landing-{customers}-{purchases}-{night}"
    marker = landing / ".complete"
    if marker.exists():
        return landing
    t = time.time()
    write(customers_frame(customers, INITIAL), landing / "customers" / f"dt={INITIAL}" / "customers.csv")
    write(purchases_frame(purchases, customers, date(2025, 1, 1), 365),
          landing / "purchases" / f"dt={INITIAL}" / "history.csv")
    # The night: new purchases, and profile updates for 0.3% of the base.
    write(purchases_frame(night, customers, NIGHT, 1, seed=9, prefix="N"),
          landing / "purchases" / f"dt={NIGHT}" / "purchases.csv")
    updates = max(1, customers // 330)
    write(customers_frame(updates, NIGHT, seed=5, start_id=customers // 2,
                          updated=f"{NIGHT.isoformat()}T09:00:00+05:30"),
          landing / "customers" / f"dt={NIGHT}" / "customers.csv")
    marker.write_text("ok")
    print(f"generated landing files in {time.time() - t:.0f} s: {landing}", file=sys.stderr)
    return landing


def phase(url: str, landing: Path, day: date, source: str) -> dict:
    """Runs inside the child process: ingest one source of one date."""
    from crm_tasks.ingest.batches import ingest_dates
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    cfg = load_settings(env={"CRM_LANDING_DIR": str(landing)})
    engine = make_engine(url)
    t = time.perf_counter()
    report = ingest_dates(engine, cfg, [day], [source])
    seconds = time.perf_counter() - t
    totals = report.totals
    return {"seconds": round(seconds, 2), "rows": totals["rows_read"],
            "rows_per_s": round(totals["rows_read"] / seconds), "loaded": totals["rows_loaded"],
            "reconciles": report.reconciles,
            "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> int:
    """This process's peak resident memory in MiB. (ru_maxrss would carry over the peak of
    a parent that generated the data in the same run: Linux keeps it across fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def parse_args(doc: str, *extra: tuple[tuple, dict]) -> argparse.Namespace:
    """The benchmarks' shared options: data sizes, dialects, where data and results go; ``extra`` adds a
    benchmark's own, as (names, keywords) of ``add_argument``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--purchases", type=int, default=10_000_000)
    ap.add_argument("--night", type=int, default=30_000)
    ap.add_argument("--dialects", default="sqlite,postgresql")
    ap.add_argument("--data", type=Path, default=HERE / "data", help="where data files and databases go")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    for names, keywords in extra:
        ap.add_argument(*names, **keywords)
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    return args


def built_database(dialect: str, root: Path, file: str, schema: str) -> str:
    """The URL of a database an earlier run of a benchmark built (its ``--no-build``): the SQLite ``root/file``
    or the PostgreSQL ``schema``, as ``fresh_database`` made it."""
    return f"sqlite:///{root / file}" if dialect == "sqlite" else f"{PG_URL}?options=-csearch_path%3D{schema}"


def fresh_database(dialect: str, root: Path, file: str = "bench-crm.db", schema: str = "crm_bench") -> str:
    """A new, migrated CRM database: the SQLite ``root/file``, or the PostgreSQL ``schema``, made anew."""
    from sqlalchemy import create_engine, text

    from crm_tasks.store.engine import make_engine, upgrade

    if dialect == "sqlite":
        db = root / file
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        url = f"sqlite:///{db}"
    else:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def raw_copy(url: str, landing: Path, day: date) -> dict:
    """The reference, in the same run: PostgreSQL's own COPY of the same purchase file into a table of
    the purchases' types with its unique transaction id (what any load must check), no validation."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    path = next((landing / "purchases" / f"dt={day}").glob("*.csv"))
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS ref_purchases"))
        conn.execute(text("CREATE TABLE ref_purchases (LIKE purchases INCLUDING DEFAULTS)"))
        conn.execute(text("ALTER TABLE ref_purchases ALTER batch_id DROP NOT NULL, ALTER line_no DROP NOT NULL, "
                          "ADD PRIMARY KEY (id), ADD UNIQUE (transaction_id)"))
    with open(path, "rb") as fh:
        header = fh.readline().decode().strip()
    raw = engine.raw_connection()
    load = os.getloadavg()[0]
    try:
        t = time.perf_counter()
        with raw.cursor() as cur, open(path, "rb") as fh:
            with cur.copy(f"COPY ref_purchases ({header}) FROM STDIN (FORMAT csv, HEADER)") as copy:
                while block := fh.read(1 << 20):
                    copy.write(block)
            rows = cur.rowcount
        raw.commit()
        seconds = time.perf_counter() - t
    finally:
        raw.close()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE ref_purchases"))
    return {"seconds": round(seconds, 2), "rows": rows, "rows_per_s": round(rows / seconds), "load": load}


def run_child(url: str, landing: Path, day: date) -> dict:
    out = {}
    for source in ("customers", "purchases"):
        cmd = [sys.executable, __file__, "--child", url, str(landing), day.isoformat(), source]
        # The child's log (stage timings of the load) goes straight to stderr.
        load = os.getloadavg()[0]  # the machine is shared: each figure goes with the load it met
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        out[source] = json.loads(done.stdout.strip().splitlines()[-1]) | {"load": load}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, landing, day, source = sys.argv[2:6]
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"  [{source} {day}] %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if profile := os.environ.get("CRM_BENCH_PROFILE"):  # a cProfile of each child, to this folder
            import cProfile

            with cProfile.Profile() as prof:
                result = phase(url, Path(landing), date.fromisoformat(day), source)
            prof.dump_stats(Path(profile) / f"{source}-{day}.prof")
        else:
            result = phase(url, Path(landing), date.fromisoformat(day), source)
        print(json.dumps(result))
        return
    args = parse_args(__doc__)
    landing = ensure_data(args.data, args.customers, args.purchases, args.night)
    results = {"customers": args.customers, "purchases": args.purchases, "night": args.night,
               "cpus": os.cpu_count(), "runs": {}}
    for dialect in args.dialects.split(","):
        url = fresh_database(dialect, args.data)
        # The reference moves with the machine's load (other work, PostgreSQL's checkpoints): it is
        # measured just before and just after the initial load, and the ingest compared with their mean.
        before = raw_copy(url, landing, INITIAL) if dialect == "postgresql" else None
        initial = run_child(url, landing, INITIAL)
        after = raw_copy(url, landing, INITIAL) if dialect == "postgresql" else None
        night = run_child(url, landing, NIGHT)
        results["runs"][dialect] = {"initial": initial, "night": night}
        if dialect == "postgresql":
            mean = (before["seconds"] + after["seconds"]) / 2
            ratio = initial["purchases"]["seconds"] / mean
            results["runs"][dialect]["raw_copy"] = {"before": before, "after": after, "mean_seconds": round(mean, 2),
                                                    "ingest_ratio": round(ratio, 2)}
            print(f"{dialect:<10} raw COPY of the same purchase file: {before['rows']} rows {before['seconds']:.1f} s "
                  f"before (load {before['load']:.1f}), {after['seconds']:.1f} s after (load {after['load']:.1f}) "
                  f"the load (load {initial['purchases']['load']:.1f}); the ingest took {ratio:.2f}x their mean",
                  flush=True)
        for name, r in (("initial load", initial), ("night", night)):
            total = r["customers"]["seconds"] + r["purchases"]["seconds"]
            c, p = r["customers"], r["purchases"]
            print(f"{dialect:<10} {name:<13} customers {c['rows']:>9} rows {c['seconds']:>6.1f} s "
                  f"({c['rows_per_s']:>7}/s, peak {c['peak_rss_mib']:>5} MiB)  purchases {p['rows']:>9} rows "
                  f"{p['seconds']:>6.1f} s ({p['rows_per_s']:>7}/s, peak {p['peak_rss_mib']:>5} MiB)  "
                  f"total {total:>6.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
