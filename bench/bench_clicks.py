"""Click endpoint benchmark: sustained clicks per second through the public app, on one core.

    .venv/bin/python bench/bench_clicks.py                                   # 20k clicks, SQLite and PostgreSQL
    .venv/bin/python bench/bench_clicks.py --clicks 5000 --dialects sqlite   # a quick look

A fresh database (bench/data/bench-clicks.db, or the PostgreSQL schema crm_bench_clicks) holds a sent
ledger of ``--messages`` messages with their Message-IDs. ``--clicks`` tracked links of them, made by the
send path's own code (``crm_tasks.delivery.clicks.make_token``; 20% are second clicks of a link already
followed, so the upsert takes both of its branches), are followed one after another through the real
ASGI app (``create_app``: the 429 check, the shape check, the keys read, verification, the counting
upsert, the 302), called in-process as an ASGI server calls it, the process pinned to one core. Each
click must answer 302 with its URL, and at the end the ``clicks`` table must hold every click.

In the same process, on the same core and database, two references:

- ``raw``: the work no implementation can avoid, with nothing around it: per click one HMAC
  verification of the token's signature and, on the raw driver connection (sqlite3 or psycopg), the
  same INSERT ... SELECT ... ON CONFLICT DO UPDATE and a commit that, as the app's, does not wait for
  the disk on PostgreSQL (the keys read once, as the app's key cache reads them once every 10 seconds);
- ``bare``: a minimal app of the same framework whose route only answers a fixed 302: the cost of the
  ASGI call and the thread-pool hop that a sync route pays.

``raw`` runs before and after the app, the faster run is kept. Figures go to stdout and ``--json FILE``;
bench/README.md records them. The PostgreSQL server runs on the same machine, unpinned.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_ingest import fresh_database

SCHEMA = "crm_bench_clicks"
DOMAIN = "example.com"
WINDOW = 1000  # clicks per window of the slowest-window figure


def build_ledger(url: str, n: int) -> None:
    """``n`` sent messages with their Message-IDs (the columns the click path reads, and the required rest)."""
    from sqlalchemy import insert

    from crm_tasks.messages.mime import message_id_for
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.models import Message

    engine = make_engine(url)
    now = datetime(2026, 6, 15, 6, 0, tzinfo=UTC)
    rows = [{"idempotency_key": f"birthday:C{i:08d}:2026", "campaign": "birthday", "customer_id": f"C{i:08d}",
             "run_id": 1, "occurrence": "2026", "state": "sent", "test": False, "recipient": f"c{i}@example.com",
             "locale": "en", "template": "birthday", "send_at": now, "context": {}, "created_at": now,
             "updated_at": now, "sent_at": now, "message_id": message_id_for(f"birthday:C{i:08d}:2026", DOMAIN)}
            for i in range(n)]
    with engine.begin() as conn:
        for i in range(0, n, 5000):
            conn.execute(insert(Message), rows[i:i + 5000])
    engine.dispose()


def workload(n_messages: int, n_clicks: int, secret: str, seed: int = 7) -> list[tuple[str, str]]:
    """(token, url) per click: distinct links of random messages, and 20% second clicks among them."""
    from crm_tasks.delivery.clicks import Kind, make_token
    from crm_tasks.messages.mime import message_id_for

    rnd = random.Random(seed)
    firsts = n_clicks - n_clicks // 5
    picked = rnd.sample(range(n_messages * 3), firsts)  # (message, link 1..3) pairs, each once
    out = []
    for p in picked:
        i, link_no = divmod(p, 3)
        digest = message_id_for(f"birthday:C{i:08d}:2026", DOMAIN)[1:33]
        url = f"https://shop.example.com/p/{i % 997}?utm_source=crm&utm_medium=email&utm_campaign=birthday"
        out.append((make_token(Kind.CLICK, digest, link_no + 1, url, secret), url))
    out += rnd.choices(out, k=n_clicks - firsts)
    rnd.shuffle(out)
    return out


def _scope(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "https",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"crm.example.com"), (b"user-agent", b"bench")],
            "client": ("203.0.113.7", 50000), "server": ("crm.example.com", 443)}


async def _call(app, path: str) -> tuple[int, str | None]:
    """One GET through the ASGI app, as a server makes it: (status, Location)."""
    got: dict = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            got["status"] = message["status"]
            got["location"] = dict(message["headers"]).get(b"location", b"").decode() or None

    await app(_scope(path), receive, send)
    return got["status"], got["location"]


def through_app(app, clicks: list[tuple[str, str]], in_flight: int = 1) -> dict:
    """Follow every click through ``app``, ``in_flight`` at a time (1: one after another; more: that many
    readers clicking at once, the sync route's thread pool overlapping their database waits); each must
    redirect to its URL."""
    async def run() -> list[tuple[float, float]]:
        times: list[tuple[float, float]] = []
        todo = iter(clicks)

        async def reader() -> None:
            for token, url in todo:
                began = time.perf_counter()
                status, location = await _call(app, f"/r/{token}")
                if status != 302 or location != url:
                    raise SystemExit(f"a click answered {status} {location!r}, not 302 to its URL")
                times.append((began, time.perf_counter()))

        await asyncio.gather(*(reader() for _ in range(in_flight)))
        return times

    start, cpu = time.perf_counter(), time.process_time()
    times = asyncio.run(run())
    return _figures(start, cpu, times) | {"in_flight": in_flight}


def _figures(start: float, cpu: float, times: list[tuple[float, float]]) -> dict:
    """Clicks per second over the run and over its slowest WINDOW clicks, per CPU-second, and latencies."""
    ends = sorted(end for _, end in times)
    seconds = ends[-1] - start
    cpu_s = time.process_time() - cpu
    windows = [WINDOW / (ends[i + WINDOW - 1] - (ends[i - 1] if i else start))
               for i in range(0, len(ends) - WINDOW + 1, WINDOW)]
    latencies = sorted(end - began for began, end in times)
    return {"clicks": len(ends), "seconds": round(seconds, 2), "per_s": round(len(ends) / seconds),
            "slowest_window_per_s": round(min(windows)) if windows else None,
            "cpu_s": round(cpu_s, 2), "per_cpu_s": round(len(ends) / cpu_s),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3)}


def raw_reference(engine, clicks: list[tuple[str, str]], secret: str) -> dict:
    """The floor: per click one HMAC check of the signature, the same upsert and a commit, on the raw driver
    connection (no SQLAlchemy, no ASGI, no token parsing); the keys are read once."""
    import struct

    from crm_tasks.delivery.clicks import Kind, verify_token
    from crm_tasks.store.keys import sign, unb64

    sqlite = engine.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    keys_sql = f"SELECT purpose, secret FROM secret_keys WHERE retired_at IS NULL OR valid_until > {mark}"
    upsert = (f"INSERT INTO clicks (idempotency_key, kind, link_no, url, first_at, last_at, count) "
              f"SELECT idempotency_key, 'click', {mark}, {mark}, {mark}, {mark}, 1 FROM messages "
              f"WHERE message_id = {mark} AND NOT test LIMIT 1 "
              f"ON CONFLICT (idempotency_key, kind, link_no) DO UPDATE SET count = clicks.count + 1, "
              f"last_at = excluded.last_at")
    # What each token signs, and the message and link it names, worked out before the clock starts.
    plan = []
    for token, url in clicks:
        t = verify_token(Kind.CLICK, token, (secret,))
        signed = struct.pack(">B16sH", 1, bytes.fromhex(t.digest), t.link_no) + url.encode()
        plan.append((signed, unb64(token.split(".")[1]), t.link_no, url, f"<{t.digest}@{DOMAIN}>"))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        times = []
        start, cpu = time.perf_counter(), time.process_time()
        cur.execute(keys_sql, (datetime.now(UTC).replace(tzinfo=None).isoformat() if sqlite else datetime.now(UTC),))
        cur.fetchall()
        raw.commit()
        for signed, sig, link_no, url, mid in plan:
            began = time.perf_counter()
            now = datetime.now(UTC)
            stamp = now.replace(tzinfo=None).isoformat(timespec="microseconds") if sqlite else now
            if not hmac.compare_digest(sig, sign(secret, b"click", signed)):
                raise SystemExit("the reference's HMAC check failed")
            if not sqlite:
                cur.execute("SET LOCAL synchronous_commit TO OFF")  # as the app commits a click
            cur.execute(upsert, (link_no, url, stamp, stamp, mid))
            raw.commit()
            times.append((began, time.perf_counter()))
        return _figures(start, cpu, times)
    finally:
        raw.close()


def bare_reference(n: int) -> dict:
    """A minimal app of the same framework whose sync route only redirects: the ASGI and thread-pool floor."""
    from fastapi import FastAPI
    from starlette.responses import Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def redirect(request):
        return Response(status_code=302, headers={"Location": "https://shop.example.com/"})

    app.add_route("/r/{token}", redirect, methods=["GET"])
    clicks = [("x" * 100, "https://shop.example.com/")] * n
    return through_app(app, clicks)


def counted(engine) -> tuple[int, int]:
    from sqlalchemy import func, select

    from crm_tasks.store.models import Click

    with engine.connect() as conn:
        return tuple(conn.execute(select(func.count(), func.coalesce(func.sum(Click.count), 0))
                                  .select_from(Click)).one())


def clear(engine) -> None:
    from sqlalchemy import delete

    from crm_tasks.store.models import Click

    with engine.begin() as conn:
        conn.execute(delete(Click))


def one_dialect(dialect: str, args) -> dict:
    from crm_tasks.delivery.unsubscribe import create_app
    from crm_tasks.settings import load_settings
    from crm_tasks.store.engine import make_engine
    from crm_tasks.store.keys import load_keys

    (HERE / "data").mkdir(exist_ok=True)
    url = fresh_database(dialect, HERE / "data", "bench-clicks.db", SCHEMA)
    build_ledger(url, args.messages)
    cfg = load_settings(ROOT / "crm.yaml", env={"CRM_DATABASE_URL": url})
    engine = make_engine(url)
    with engine.connect() as conn:
        secret = load_keys(conn, cfg).signing
    clicks = workload(args.messages, args.clicks, secret)
    distinct = len(set(clicks))
    out = {"dialect": dialect, "messages": args.messages, "distinct_links": distinct}
    out["raw_before"] = raw_reference(engine, clicks, secret)
    app = create_app(lambda: cfg, lambda: engine)
    for name, in_flight in (("app", 1), ("app_in_flight", args.in_flight)):
        clear(engine)
        out[name] = through_app(app, clicks, in_flight)
        rows, total = counted(engine)
        if (rows, total) != (distinct, len(clicks)):
            raise SystemExit(f"{dialect}: {rows} rows counting {total} clicks, expected {distinct} and {len(clicks)}")
        out[name] |= {"rows": rows, "counted": total}
    clear(engine)
    out["raw_after"] = raw_reference(engine, clicks, secret)
    out["raw"] = max(out["raw_before"], out["raw_after"], key=lambda r: r["per_s"])
    out["share_of_raw"] = round(out["app"]["per_s"] / out["raw"]["per_s"], 2)
    engine.dispose()
    return out


def _line(name: str, r: dict) -> str:
    return (f"{name} {r['per_s']:,}/s (slowest {WINDOW}: {r['slowest_window_per_s']:,}/s; {r['per_cpu_s']:,} per "
            f"CPU-second; p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="sent messages in the ledger")
    ap.add_argument("--clicks", type=int, default=20_000, help="clicks followed per measurement")
    ap.add_argument("--in-flight", type=int, default=8, help="clicks at once in the second app run")
    ap.add_argument("--dialects", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--cpu", type=int, default=0, help="the core this process is pinned to")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})  # one core: the app, its thread pool and the references alike
    results = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
               "load_before": os.getloadavg()[0], "pinned_to": args.cpu, "clicks": args.clicks,
               "bare": bare_reference(args.clicks), "runs": []}
    print(_line("bare 302 route:", results["bare"]), flush=True)
    for dialect in args.dialects:
        r = one_dialect(dialect, args)
        results["runs"].append(r)
        print(f"{dialect}:", flush=True)
        print("  " + _line("app, one at a time:", r["app"]), flush=True)
        print("  " + _line(f"app, {args.in_flight} at once:", r["app_in_flight"]), flush=True)
        print("  " + _line("raw reference:", r["raw"]) + f" (before {r['raw_before']['per_s']:,}/s, after "
              f"{r['raw_after']['per_s']:,}/s); app one at a time / raw: {r['share_of_raw']:.0%}", flush=True)
    results["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
