"""Campaigns benchmark: planning over a million profiles, and plan + render for 100k recipients.

    .venv/bin/python bench/bench_campaigns.py                       # SQLite and PostgreSQL
    .venv/bin/python bench/bench_campaigns.py --dialects sqlite --customers 200000

The database is synthetic and built once per dialect (bench/data/campaigns-*.db, or
the PostgreSQL schema crm_bench_campaigns): 1M profiles in five locales and time
zones with birthdays and consent, their maintained purchase totals, 1M purchases over
the last 90 days, a catalogue of the 800 products they name (names in the five
languages, prices, links, images), the recommendations refreshed from them (so every
offer e-mail shows product blocks), and 100k members of lifecycle:at_risk.

Steps, each timed in its own process:

1. ``birthday_1m``: the birthday campaign planned and recorded over 1M profiles
   (the trigger scans them all; about 1/365 have a birthday that day);
2. ``offer_100k``: a coupon offer to the 100k at-risk members, planned, coupons
   issued, every message rendered and the plan and ledger recorded;
3. ``render``: the compiled templates rendering 100k messages (subject, HTML and
   text) from contexts built beforehand, on one core: the renderer's own speed.

Figures go to stdout (and --json FILE); bench/README.md records them. With
``--repeat N`` each step runs N times and the fastest run is kept (other work on
the machine only ever slows a run down); every figure carries the 1-minute load
average when its step started and the seconds of all its runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import peak_rss_mib  # noqa: E402

AS_OF = date(2026, 6, 15)
PG_URL = os.environ.get("CRM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCHEMA = "crm_bench_campaigns"
LOCALES = [("en-IN", "Asia/Kolkata"), ("hi-IN", "Asia/Kolkata"), ("te-IN", "Asia/Kolkata"),
           ("fa-IR", "Asia/Tehran"), ("ur-PK", "Asia/Karachi")]
CATEGORIES = ["grocery", "household", "beauty", "apparel", "electronics", "toys", "home", "sports"]


def build(url: str, customers: int) -> None:
    import numpy as np
    from sqlalchemy import insert, text

    from crm_tasks.store.bulk import bulk_insert
    from crm_tasks.store.engine import make_engine, upgrade
    from crm_tasks.store.models import Segment
    from crm_tasks.store.types import timestamp_texts

    rng = np.random.default_rng(11)
    engine = make_engine(url)
    upgrade(engine)
    ids = [f"C{i:08d}" for i in range(customers)]
    loc = rng.integers(0, len(LOCALES), customers)
    born = np.datetime64("1950-01-01") + rng.integers(0, 20000, customers).astype("timedelta64[D]")
    first = (np.datetime64("2024-01-01T00:00:00") + rng.integers(0, 800 * 86400, customers)
             .astype("timedelta64[s]")).astype("datetime64[us]")
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        dialect = conn.dialect.name
        stamps = timestamp_texts(first, dialect)
        t0_text = timestamp_texts(np.array([np.datetime64("2024-01-01T00:00:00", "us")]), dialect)[0]
        rows = [(c, "Asha", "Rao", f"{c.lower()}@example.com", str(b), LOCALES[k][0], LOCALES[k][1], "IN",
                 bool(consent), "{}", t0_text, t0_text, 1)
                for c, b, k, consent in zip(ids, born.astype(str), loc, rng.random(customers) < 0.9)]
        for i in range(0, customers, 100_000):
            bulk_insert(conn, "customers", ["customer_id", "first_name", "last_name", "email", "birthday", "locale",
                                            "timezone", "country", "email_consent", "attributes", "created_at",
                                            "updated_at", "batch_id"], rows[i:i + 100_000])
        money = 1 if dialect == "postgresql" else 10_000
        cats = rng.integers(0, len(CATEGORIES), customers)
        rows = [(c, "INR", s, s, 3, 0, 3, 3000 * money, 1000 * money, CATEGORIES[k])
                for c, s, k in zip(ids, stamps, cats)]
        for i in range(0, customers, 100_000):
            bulk_insert(conn, "customer_metrics", ["customer_id", "currency", "first_purchase_at",
                                                   "last_purchase_at", "orders", "refunds", "items", "revenue",
                                                   "avg_basket", "favourite_category"], rows[i:i + 100_000])
        n = customers
        when = (np.datetime64("2026-03-20T00:00:00") + rng.integers(0, 88 * 86400, n)
                .astype("timedelta64[s]")).astype("datetime64[us]")
        pc = rng.integers(0, len(CATEGORIES), n)
        rows = [(f"T{i:09d}", ids[i % customers], s, 500 * money, "INR", "S1", f"{CATEGORIES[k].upper()}-{sku}",
                 CATEGORIES[k], 1, None, 1, i)
                for i, (s, k, sku) in enumerate(zip(timestamp_texts(when, dialect), pc,
                                                    rng.integers(1000, 1100, n)))]
        for i in range(0, n, 100_000):
            bulk_insert(conn, "purchases", ["transaction_id", "customer_id", "purchased_at", "amount", "currency",
                                            "store_id", "sku", "category", "quantity", "coupon_code", "batch_id",
                                            "line_no"], rows[i:i + 100_000])
        _catalogue(conn, dialect, money, t0_text)
        sid = conn.execute(insert(Segment).values(name="lifecycle:at_risk", family="lifecycle", description="",
                                                  status="active", updated_at=t0).returning(Segment.id)).scalar_one()
        members = rng.choice(customers, min(100_000, customers), replace=False)
        bulk_insert(conn, "segment_memberships", ["segment_id", "customer_id", "valid_from"],
                    [(sid, ids[m], str(AS_OF - timedelta(days=int(m % 30)))) for m in members])
        if dialect == "postgresql":
            # The statistics the nightly ingest and segment recompute leave behind them (they analyse what they
            # write): a database loaded in bulk has none until autovacuum runs, if it runs at all.
            conn.execute(text("ANALYZE customers, customer_metrics, customer_category_metrics, purchases, products, "
                              "segment_memberships"))
    engine.dispose()


# Product names in the five languages of the shipped templates, per category (a real catalogue names each
# product; these vary by number so that every block differs).
NAMES = {"en": "Basket item", "hi": "टोकरी सामान", "te": "బుట్ట వస్తువు", "fa": "کالای سبد", "ur": "ٹوکری کا سامان"}


def _catalogue(conn, dialect: str, money: int, t0_text: str) -> None:
    """Every SKU the purchases name, in stock, with names in five languages, a price, a link and an image:
    the offer's e-mails show product blocks, as a shop with a catalogue sends them."""
    from crm_tasks.store.bulk import bulk_insert

    rows = []
    for c in CATEGORIES:
        for sku in range(1000, 1100):
            name = {lang: f"{text} {c} {sku}" for lang, text in NAMES.items()}
            rows.append((f"{c.upper()}-{sku}", name["en"], name["hi"], name["te"], name["fa"], name["ur"], "Brand",
                         c, (100 + sku % 400) * money, "INR", f"https://shop.example/p/{c}-{sku}",
                         f"https://shop.example/img/{c}-{sku}.jpg", True, t0_text, 1))
    bulk_insert(conn, "products", ["sku", "name", "name_hi", "name_te", "name_fa", "name_ur", "brand", "category",
                                   "price", "currency", "url", "image_url", "in_stock", "updated_at", "batch_id"],
                rows)


def recommend(url: str) -> float:
    """The nightly recommendation refresh before the plans, as the DAGs run it; returns its seconds."""
    from crm_tasks.analytics.recommendations import refresh_recommendations
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    result = refresh_recommendations(engine, load_settings(), AS_OF - timedelta(days=1))
    engine.dispose()
    return result.seconds


def database(dialect: str, root: Path, customers: int) -> str:
    from sqlalchemy import create_engine, text

    marker = root / f"campaigns-{dialect}-{customers}-catalogue.ready"
    url = (f"sqlite:///{root / f'campaigns-{customers}.db'}" if dialect == "sqlite"
           else f"{PG_URL}?options=-csearch_path%3D{SCHEMA}")
    if not marker.exists():
        if dialect == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                (root / f"campaigns-{customers}.db{suffix}").unlink(missing_ok=True)
        else:
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
            admin.dispose()
        started = time.perf_counter()
        build(url, customers)
        print(f"built the {dialect} database in {time.perf_counter() - started:.0f} s; recommendations refreshed "
              f"in {recommend(url):.0f} s", flush=True)
        marker.write_text("ok")
    return url


def step(url: str, name: str) -> dict:
    """One timed step, in this (child) process."""
    from crm_tasks.campaigns.definitions import Campaign
    from crm_tasks.campaigns.planning import plan_campaign
    from crm_tasks.messages.render import renderer_for
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine

    cfg = load_settings()
    engine = make_engine(url)
    run_at = datetime(2026, 6, 15, 0, 30, tzinfo=UTC)
    if name == "birthday_1m":
        c = Campaign(name="birthday", kind="date_trigger", template="birthday", schedule={"cron": "0 6 * * *"},
                     trigger={"field": "birthday", "recurrence": "yearly"}, holdout_share=0.05,
                     coupon={"type": "percent", "value": 15, "valid_days": 14})
    else:
        c = Campaign(name="offer", kind="segment", template="offer", schedule={"cron": "0 6 * * *"},
                     audience={"segment": "lifecycle:at_risk"}, holdout_share=0.05, max_audience=200_000,
                     frequency_cap={"messages": 50, "days": 7},
                     coupon={"type": "percent", "value": 20, "valid_days": 21})
    if name == "render":
        # The contexts offer_100k stored in the ledger, loaded outside the clock: only renders are timed.
        renderer = renderer_for(cfg)
        contexts = _contexts(engine, c)
        started, cpu = time.perf_counter(), time.process_time()
        for ctx in contexts:
            renderer.render(c.template, ctx)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        products = sum(len(ctx["customer"]["recommendations"]) for ctx in contexts)
        # Per CPU second is the per-core rate whatever else the machine runs; per wall second is what this run saw.
        return {"step": name, "messages": len(contexts), "product_blocks": products, "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2), "renders_per_second": round(len(contexts) / seconds),
                "renders_per_cpu_second": round(len(contexts) / cpu), "peak_mib": peak_rss_mib()}
    started, cpu = time.perf_counter(), time.process_time()
    r = plan_campaign(engine, cfg, c, AS_OF, run_at, sample=0)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"step": name, "audience": r.audience, "recipients": r.recipients, "holdout": r.holdout,
            "rendered": r.rendered, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "phases": r.phases,
            "renders_per_second": round(r.rendered / r.phases["render"]) if r.rendered else None,
            "peak_mib": peak_rss_mib()}


def _contexts(engine, campaign) -> list[dict]:
    from sqlalchemy import select

    from crm_tasks.store.models import Message

    with engine.connect() as conn:
        return list(conn.execute(select(Message.context).where(Message.campaign == campaign.name)).scalars())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--dialects", default="sqlite,postgresql")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each step; the fastest is kept")
    ap.add_argument("--steps", default="birthday_1m,offer_100k,render",
                    help="comma-separated steps (render needs offer_100k's ledger rows)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.url, args.step)))
        return
    root = HERE / "data"
    root.mkdir(exist_ok=True)
    results = {}
    for dialect in args.dialects.split(","):
        url = database(dialect, root, args.customers)
        results[dialect] = []
        for name in args.steps.split(","):
            runs = []
            for _ in range(args.repeat):
                load = round(os.getloadavg()[0], 2)
                out = subprocess.run([sys.executable, __file__, "--step", name, "--url", url],
                                     check=True, capture_output=True, text=True)
                runs.append({**json.loads(out.stdout.strip().splitlines()[-1]), "load": load})
                print(dialect, json.dumps(runs[-1]), flush=True)
            figures = min(runs, key=lambda r: r["seconds"])
            if args.repeat > 1:
                figures["runs_seconds"] = [r["seconds"] for r in runs]
            results[dialect].append(figures)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
