"""The night as a whole: every stage of one night, end to end, on a shop already loaded.

    .venv/bin/python bench/bench_nightly.py                                   # 1M / 10M, both dialects
    .venv/bin/python bench/bench_nightly.py --customers 100000 --purchases 1000000 --dialects sqlite

The database is built first, untimed: bench_ingest.py's landing files (``--customers`` profiles and
``--purchases`` purchases over 2025) ingested as of 2026-01-01, segments recomputed and every report of
crm_reports refreshed as of that day: the state a shop is in the evening before. Then one night,
2026-01-02 (``--night`` purchases and 0.3 % of the profiles changed), through the same library calls the
DAGs make (crm_tasks/airflow/tasks.py), each stage in its own process so that its peak memory is its own:

1. ``ingest_customers``, ``ingest_purchases`` (crm_ingest);
2. ``segments`` (crm_segments);
3. ``results``, ``sales``, ``forecast``, ``clv``, ``figures``, ``recommendations`` (crm_reports);
4. ``plan:<campaign>`` for every shipped campaign (campaigns/*.yaml), and ``plan:offer_100k``, the shipped
   at-risk offer to up to 100k customers (its guardrail raised for the benchmark);
5. ``send:<campaign>``: every planned message sent to a local SMTP sink (``crm smtp-sink``, pinned to the
   other core) over ``delivery.connections`` connections, as of the latest send time of the night's plans;
6. ``cleanup`` (crm_cleanup).

The reference, in the same run: plain aiosmtplib sending pre-built messages of the night's average size
over the same number of connections to the same sink (bench_delivery.py's ``raw``), before and after the
sends, the faster kept. Targets (issue 14): everything but sending ≤ 60 s at ≤ 2 GiB; sending at ≥ 75 % of
the reference. Figures go to stdout and ``--json FILE``; bench/README.md records them.
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
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_ingest import INITIAL, NIGHT, ensure_data, fresh_database, parse_args, peak_rss_mib

SCHEMA = "crm_bench_nightly"
REPORTS = ("results", "sales", "forecast", "clv", "figures", "recommendations")
OFFER = "offer_100k"


def settings(url: str, landing: str, smtp: str | None = None):
    from crm_tasks.settings import load_settings

    env = {"CRM_DATABASE_URL": url, "CRM_LANDING_DIR": landing} | ({"CRM_SMTP_URL": smtp} if smtp else {})
    return load_settings(ROOT / "crm.yaml", env=env)


def campaigns(cfg) -> dict:
    """The shipped campaigns by name, and the 100k offer: the shipped at-risk offer under its own name."""
    from crm_tasks.campaigns.definitions import load_campaigns

    found, problems = load_campaigns(cfg)
    if problems:
        raise SystemExit(f"the shipped campaigns do not load: {problems}")
    out = {c.name: c for c in found}
    offer = out["at_risk_offer"].model_copy(update={"name": OFFER, "max_audience": 200_000})
    return out | {OFFER: offer}


def stage(name: str, url: str, landing: str, day: str, smtp: str | None) -> dict:
    """One stage, in this (child) process; what it did, in counts."""
    from crm_tasks.store.engine import make_engine

    cfg = settings(url, landing, smtp)
    engine = make_engine(url)
    as_of = date.fromisoformat(day)
    if name.startswith("ingest_"):
        from crm_tasks.ingest.batches import ingest_dates

        report = ingest_dates(engine, cfg, [as_of], [name.removeprefix("ingest_")])
        return {"rows": report.totals["rows_read"], "loaded": report.totals["rows_loaded"],
                "reconciles": report.reconciles}
    if name == "segments":
        from crm_tasks.segments.compute import recompute

        r = recompute(engine, cfg, as_of).summary()
        return {k: r[k] for k in ("customers", "memberships", "entered", "exited") if k in r}
    if name == "results":
        from crm_tasks.results.campaigns import refresh_results

        return {"runs": refresh_results(engine, cfg, as_of).runs}
    if name == "sales":
        from crm_tasks.analytics.sales import refresh_sales

        return {"changed_days": refresh_sales(engine, cfg, as_of).changed}
    if name == "forecast":
        from crm_tasks.analytics.forecast import forecast_revenue

        return {"status": str(forecast_revenue(engine, cfg, as_of).status)}
    if name == "clv":
        from crm_tasks.analytics.clv import fit_clv

        return {"status": str(fit_clv(engine, cfg, as_of).status)}
    if name == "figures":
        from crm_tasks.analytics.figures import store_figures

        return {"reports": store_figures(engine, cfg, as_of).reports}
    if name == "recommendations":
        from crm_tasks.analytics.recommendations import refresh_recommendations

        return {k: v for k, v in refresh_recommendations(engine, cfg, as_of).summary().items()
                if isinstance(v, int)}
    if name == "cleanup":
        from crm_tasks.cleanup.archive import run_cleanup

        r = run_cleanup(engine, cfg, as_of).summary()
        return {k: r[k] for k in ("profiles_before", "kept", "archived", "merged", "purged") if k in r}
    kind, campaign_name = name.split(":", 1)
    campaign = campaigns(cfg)[campaign_name]
    if kind == "plan":
        from crm_tasks.campaigns.planning import default_run_at, plan_campaign
        from crm_tasks.errors import CampaignBlocked

        try:
            r = plan_campaign(engine, cfg, campaign, as_of, default_run_at(campaign, as_of, cfg.timezone),
                              audience_limit=100_000 if campaign_name == OFFER else None, sample=0)
        except CampaignBlocked as exc:  # a guardrail is the product working: recorded, not a crash
            return {"blocked": str(exc)[:200]}
        return {"run_id": r.run_id, "audience": r.audience, "recipients": r.recipients, "rendered": r.rendered,
                "phases": r.phases}
    from sqlalchemy import func, select

    from crm_tasks.clock import running_from
    from crm_tasks.delivery.send import deliver, smtp_target
    from crm_tasks.store.models import Message

    # As of the night's latest send time: every message due, none stale yet.
    with engine.connect() as conn:
        latest = conn.execute(select(func.max(Message.send_at)).where(Message.campaign == campaign_name)).scalar()
    r = deliver(engine, cfg, campaign_name, None, target=smtp_target(cfg), clock=running_from(latest))
    return {"sent": r.sent, "states": r.states}


def child(args: list[str], cpu: str | None = None) -> dict:
    """Run one stage in its own process (pinned to ``cpu`` when given): its result, seconds and peak memory."""
    cmd = ([*("taskset", "-c", cpu)] if cpu else []) + [sys.executable, __file__, "--stage", *args]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if out.returncode:
        return {"seconds": round(seconds, 2), "error": out.stderr.strip().splitlines()[-1][:300]}
    return {"seconds": round(seconds, 2), **json.loads(out.stdout.strip().splitlines()[-1])}


def build(url: str, landing: Path) -> dict:
    """The evening before: the history ingested, segments and every report as of INITIAL (untimed figures)."""
    done = {}
    for name in ("ingest_customers", "ingest_purchases", "segments", *REPORTS):
        done[name] = child([name, url, str(landing), INITIAL.isoformat(), ""])
        print(f"  built {name}: {done[name]}", flush=True)
        if "error" in done[name]:
            raise SystemExit(f"the build failed at {name}: {done[name]['error']}")
    return done


def night(url: str, landing: Path, smtp: str, connections: int) -> dict:
    from bench_delivery import step_raw

    from crm_tasks.store.engine import make_engine

    day = NIGHT.isoformat()
    stages: dict[str, dict] = {}
    for name in ("ingest_customers", "ingest_purchases", "segments", *REPORTS):
        stages[name] = child([name, url, str(landing), day, smtp])
        print(f"  {name}: {stages[name]}", flush=True)
    names = sorted(campaigns(settings(url, str(landing))))
    for name in names:
        stages[f"plan:{name}"] = child([f"plan:{name}", url, str(landing), day, smtp])
        print(f"  plan:{name}: {stages[f'plan:{name}']}", flush=True)
    stages["cleanup"] = child(["cleanup", url, str(landing), day, smtp])
    print(f"  cleanup: {stages['cleanup']}", flush=True)
    size = _average_size(make_engine(url), settings(url, str(landing)))
    n = max(1, min(50_000, sum(s.get("recipients", 0) for s in stages.values())))
    raw = [step_raw(smtp, connections, n, size)]
    sends = {}
    for name in names:
        if stages[f"plan:{name}"].get("recipients"):
            sends[f"send:{name}"] = child([f"send:{name}", url, str(landing), day, smtp], "0")
            print(f"  send:{name}: {sends[f'send:{name}']}", flush=True)
    raw.append(step_raw(smtp, connections, n, size))
    best = max(raw, key=lambda r: r["per_second"])
    sent = sum(s.get("sent", 0) for s in sends.values())
    send_seconds = sum(s.get("work_s", s["seconds"]) for s in sends.values())
    rest = sum(s.get("work_s", s["seconds"]) for s in stages.values())
    return {
        "stages": stages, "sends": sends,
        "all_but_sending_s": round(rest, 1),
        "peak_mib": max(s.get("peak_mib", 0) for s in stages.values()),
        "sent": sent, "send_seconds": round(send_seconds, 1),
        "sent_per_second": round(sent / send_seconds) if send_seconds else None,
        "raw": {"per_second": best["per_second"], "runs_per_second": [r["per_second"] for r in raw],
                "message_bytes": size, "messages": n},
        "share_of_raw": round(sent / send_seconds / best["per_second"], 2) if send_seconds else None,
    }


def _average_size(engine, cfg) -> int:
    """Average bytes of the night's messages as delivery builds them (50 of each template at most)."""
    from sqlalchemy import select

    from crm_tasks.messages.mime import Envelope, build_message
    from crm_tasks.messages.render import renderer_for
    from crm_tasks.store.models import Message

    renderer = renderer_for(cfg)
    with engine.connect() as conn:
        rows = conn.execute(select(Message.context, Message.template, Message.recipient)
                            .order_by(Message.created_at.desc()).limit(200)).all()
    sizes = []
    for ctx, template, rcpt in rows:
        r = renderer.render(template, ctx)
        sizes.append(len(build_message(Envelope("S", "s@example.com", rcpt, "", r.subject, "<x@example.com>"),
                                       r.text, r.html)))
    return sum(sizes) // len(sizes) if sizes else 4000


def main() -> None:
    args = parse_args(__doc__, (("--stage",), {"nargs": 5, "help": "internal: run one stage"}),
                      (("--connections",), {"type": int, "default": 4}))
    if args.stage:
        name, url, landing, day, smtp = args.stage
        started = time.perf_counter()
        out = stage(name, url, landing, day, smtp or None)
        # The stage's own time: the process's start and imports (which a warm Airflow worker does not pay
        # per task) are in the parent's "seconds".
        print(json.dumps(out | {"work_s": round(time.perf_counter() - started, 2), "peak_mib": peak_rss_mib()},
                         default=str))
        return
    from bench_delivery import free_port, sink

    landing = ensure_data(args.data, args.customers, args.purchases, args.night)
    port = free_port()
    smtp = f"smtp+insecure://127.0.0.1:{port}"
    proc = sink(port)
    results = {"customers": args.customers, "purchases": args.purchases, "night": args.night, "dialects": {}}
    try:
        for dialect in args.dialects.split(","):
            load = os.getloadavg()
            url = fresh_database(dialect, args.data, "bench-nightly.db", SCHEMA)
            started = time.perf_counter()
            build(url, landing)
            built = round(time.perf_counter() - started, 1)
            print(f"{dialect}: built in {built} s", flush=True)
            out = night(url, landing, smtp, args.connections)
            out |= {"build_seconds": built, "load_average": {"before": [round(x, 1) for x in load],
                                                             "after": [round(x, 1) for x in os.getloadavg()]}}
            results["dialects"][dialect] = out
            print(json.dumps({dialect: {k: v for k, v in out.items() if k not in ("stages", "sends")}}), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
