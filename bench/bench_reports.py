"""Results benchmark: the crm_reports refresh on 1M customers, 10M purchases and 1M ledger rows.

    .venv/bin/python bench/bench_reports.py                        # both dialects, full size
    .venv/bin/python bench/bench_reports.py --customers 100000 --purchases 1000000 --dialects sqlite

The database is written inside the database itself (numbers series, deterministic arithmetic in
place of randomness), so that building 10M purchases takes a minute rather than an ingest:

- 1M profiles created over 2024-2026, 10M purchases over 2025-2026 (2 % refunds, skewed buyers);
- 20 weekly campaign runs from 2026-07-01, each assigning 55,000 customers: 50,000 sent (1M ledger
  rows, all ``sent``) and 5,000 held out; the first five carry coupons, redeemed by 1 in 400
  purchases after the first run.

Timed, as of 2026-12-31, twice (the second shows a re-run replaces rather than appends):
``refresh`` (attribution, every run's groups and lift, 12 control-group months), against the
reference in the same session: one sequential pass over all purchases (the cost of reading the data
once, in the same database). Figures go to stdout (and --json FILE); bench/README.md
records them.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_ingest import fresh_database, parse_args, peak_rss_mib

AS_OF = date(2026, 12, 31)
FIRST_RUN = datetime(2026, 7, 1, 3, 30, tzinfo=UTC)
RUNS = 20  # each assigns 5.5 % of the customers (55,000 of 1M): 10/11 sent, 1/11 held out
P_EPOCH = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
C_EPOCH = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())


def _spell(dialect: str) -> dict:
    """The few expressions the generator writes differently per dialect."""
    if dialect == "sqlite":
        return {
            "numbers": "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < {count} - 1)",
            "from_n": "n",
            "cid": "printf('C%07d', {x})",
            "ts": "strftime('%Y-%m-%dT%H:%M:%S', {epoch}, 'unixepoch') || '.000000'",
            "money": "({units}) * 10000",
            "false": "0", "true": "1",
        }
    return {
        "numbers": "",
        "from_n": "generate_series(0::bigint, {count} - 1) AS n(x)",
        "cid": "'C' || lpad(({x})::text, 7, '0')",
        "ts": "to_timestamp({epoch})",
        "money": "({units})::numeric",
        "false": "FALSE", "true": "TRUE",
    }


def _series(s: dict, count: int) -> tuple[str, str]:
    return s["numbers"].format(count=count), s["from_n"].format(count=count)


def insert_customers(conn, s: dict, customers: int) -> None:
    """``customers`` plain profiles with ids of ``s['cid']``, created over 2024-2026, written inside the database."""
    from sqlalchemy import text

    head, source = _series(s, customers)
    conn.execute(text(f"""{head}
        INSERT INTO customers (customer_id, first_name, last_name, email, phone, birthday, locale, timezone,
                               country, email_consent, attributes, created_at, updated_at, batch_id)
        SELECT {s['cid'].format(x='x')}, 'Asha', 'Rao', 'c' || x || '@example.com', NULL, NULL, 'en-IN',
               'Asia/Kolkata', 'IN', {s['true']}, '{{}}', {s['ts'].format(epoch=f'{C_EPOCH} + (x * 7919) % 94608000')},
               {s['ts'].format(epoch=f'{C_EPOCH} + (x * 7919) % 94608000')}, 1
        FROM {source}"""))


def skewed_buyer(customers: int) -> str:
    """The buyer number of purchase ``x``: the product of two uniform numbers favours low ids."""
    return f"((x * 2654435761) % {customers}) * ((x * 40503) % {customers}) / {customers}"


def insert_purchases(conn, s: dict, purchases: int, who: str, *, sku: str, category: str,
                     coupon: str = "NULL") -> None:
    """``purchases`` purchases over 2025-2026 (one in 50 a refund) by customer ``who``, with the given SQL
    expressions of ``x`` for the SKU, category and coupon code, written inside the database."""
    from sqlalchemy import text

    head, source = _series(s, purchases)
    conn.execute(text(f"""{head}
        INSERT INTO purchases (transaction_id, customer_id, purchased_at, amount, currency, store_id, sku,
                               category, quantity, coupon_code, batch_id, line_no)
        SELECT 'T' || x, {s['cid'].format(x=who)}, {s['ts'].format(epoch=f'{P_EPOCH} + (x * 104729) % 63072000')},
               {s['money'].format(units='CASE WHEN x % 50 = 0 THEN -1 ELSE 1 END * (100 + (x * 31) % 4900)')},
               'INR', 'S' || (x % 40), {sku}, {category}, 1, {coupon}, 1, x
        FROM {source}"""))


def build(url: str, customers: int, purchases: int) -> None:
    from sqlalchemy import text

    assigned = customers * 55 // 1000  # 55,000 of 1M per run
    sent = assigned * 10 // 11

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    s = _spell(engine.dialect.name)
    started = time.time()
    with engine.begin() as conn:
        insert_customers(conn, s, customers)
        coupon = (f"CASE WHEN x % 400 = 0 AND {P_EPOCH} + (x * 104729) % 63072000 > {int(FIRST_RUN.timestamp())} "
                  f"THEN 'K' || ((x / 400) % {5 * sent}) END")
        insert_purchases(conn, s, purchases, skewed_buyer(customers), sku="'SKU-' || (x % 500)",
                         category="'grocery'", coupon=coupon)
    with engine.begin() as conn:
        from sqlalchemy import insert

        from crm_tasks.store.models import CampaignRun

        for k in range(RUNS):
            run_at = FIRST_RUN.timestamp() + k * 7 * 86400
            conn.execute(insert(CampaignRun).values(
                id=k + 1, campaign=f"offer_{k % 4}", as_of=datetime.fromtimestamp(run_at, UTC).date(),
                run_at=datetime.fromtimestamp(run_at, UTC), dry_run=False, test_run=False, status="planned",
                audience=assigned, recipients=sent, holdout=assigned - sent, excluded=0, reasons={}, diff={},
                parameters={"definition": {"attribution_days": 7}}, error=None, created_at=datetime.now(UTC)))
        head, source = _series(s, RUNS * assigned)
        run = f"(x / {assigned})"
        j = f"(x % {assigned})"
        conn.execute(text(f"""{head}
            INSERT INTO campaign_plan (run_id, customer_id, outcome, reason, occurrence, idempotency_key, locale,
                                       template, coupon_code, send_at, local_send_at)
            SELECT {run} + 1, {s['cid'].format(x=f'({run} * {assigned} + {j} * 1000003) % {customers}')},
                   CASE WHEN {j} < {sent} THEN 'send' ELSE 'holdout' END, NULL, 'o' || {run},
                   'offer:' || x, 'en', 'offer', NULL, NULL, NULL
            FROM {source}"""))
        first = int(FIRST_RUN.timestamp())
        conn.execute(text(f"""
            INSERT INTO messages (idempotency_key, campaign, customer_id, run_id, occurrence, state, test, recipient,
                                  locale, template, coupon_code, send_at, context, created_at, updated_at, attempts,
                                  sent_at, message_id)
            SELECT p.idempotency_key, r.campaign, p.customer_id, p.run_id, p.occurrence, 'sent', {s['false']},
                   'x@example.com', 'en', 'offer',
                   CASE WHEN p.run_id <= 5 THEN 'K' || ((p.run_id - 1) * {sent} + ROW_NUMBER() OVER (
                        PARTITION BY p.run_id ORDER BY p.customer_id) - 1) END,
                   r.run_at, '{{}}', r.run_at, r.run_at, 1,
                   {s['ts'].format(epoch=f"{first} + (p.run_id - 1) * 604800 + 1800")}, 'm' || p.idempotency_key
            FROM campaign_plan p JOIN campaign_runs r ON r.id = p.run_id WHERE p.outcome = 'send'"""))
        conn.execute(text("""
            INSERT INTO coupons (code, idempotency_key, campaign, customer_id, value, value_type, currency, issued_on,
                                 expires_on, run_id)
            SELECT coupon_code, idempotency_key, campaign, customer_id, 10, 'percent', NULL, '2026-07-01',
                   '2027-07-01', run_id
            FROM messages WHERE coupon_code IS NOT NULL"""))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    print(f"built {customers} customers, {purchases} purchases, {RUNS * sent} messages in "
          f"{time.time() - started:.0f} s", file=sys.stderr, flush=True)


def reference(url: str) -> float:
    """One sequential pass over all purchases (their count and sum per currency): reading the data once,
    in the same database."""
    from sqlalchemy import text

    from crm_tasks.store.engine import make_engine

    engine = make_engine(url)
    t = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(text("SELECT currency, COUNT(*), SUM(amount) FROM purchases GROUP BY currency")).all()
    return time.perf_counter() - t


def refresh(url: str) -> dict:
    from sqlalchemy import func, select

    from crm_tasks.results.campaigns import refresh_results
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import Attribution

    cfg = load_settings()
    engine = make_engine(url)
    result = refresh_results(engine, cfg, AS_OF)
    with engine.connect() as conn:
        attributed = conn.execute(select(func.count()).select_from(Attribution)).scalar_one()
    return result.summary() | {"attributions_in_table": attributed}


def main() -> None:
    args = parse_args(__doc__)
    figures = {}
    for dialect in args.dialects.split(","):
        url = fresh_database(dialect, args.data, file="bench-reports.db", schema="crm_bench_reports")
        build(url, args.customers, args.purchases)
        ref = reference(url)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            summary = refresh(url)
            runs.append({"seconds": round(time.perf_counter() - t, 2), **summary})
        figures[dialect] = {"reference_scan_s": round(ref, 2), "refresh": runs,
                            "ratio": round(min(r["seconds"] for r in runs) / ref, 2), "peak_rss_mib": peak_rss_mib()}
        print(json.dumps({dialect: figures[dialect]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
