"""The ``crm`` command: a thin wrapper over crm_tasks, for engineers, marketing ops and the demo.

Every command that reports results takes ``--json`` and then prints exactly one
JSON object on stdout. Errors go to stderr with exit code 1.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, timedelta
from pathlib import Path

import click

from crm_tasks.config import settings as load_default_settings
from crm_tasks.errors import CrmError, IngestFailed


def _engine():
    from crm_tasks.db import make_engine

    return make_engine(load_default_settings().resolved_database_url())


def _emit(as_json: bool, payload: dict, human: str) -> None:
    if as_json:
        click.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        click.echo(human)


def _fail(exc: CrmError, as_json: bool, payload: dict | None = None) -> None:
    if as_json:
        click.echo(json.dumps((payload or {}) | {"error": str(exc)}, ensure_ascii=False, default=str))
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CRM campaign engine: ingest, segments and campaigns for retail loyalty data."""
    # The commands print what matters themselves; without a handler, Python's
    # last-resort handler would echo the library's warnings to stderr a second time.
    logging.getLogger("crm_tasks").addHandler(logging.NullHandler())


@main.group()
def db() -> None:
    """The CRM database schema."""


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def db_upgrade(as_json: bool) -> None:
    """Create or migrate the CRM database to the latest schema.

    Example: crm db upgrade
    """
    from crm_tasks.db import explain_url, upgrade

    try:
        url = load_default_settings().resolved_database_url()
        revision = upgrade(_engine())
    except CrmError as exc:
        _fail(exc, as_json)
    _emit(as_json, {"database": explain_url(url), "revision": revision},
          f"{explain_url(url)} is at revision {revision}")


def _parse_date(_ctx, _param, value):
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date in YYYY-MM-DD form") from None


@main.command()
@click.option("--date", "day", callback=_parse_date, help="Ingest one partition date (YYYY-MM-DD).")
@click.option("--from", "start", callback=_parse_date, help="First date of a range (with --to).")
@click.option("--to", "end", callback=_parse_date, help="Last date of a range, inclusive.")
@click.option("--all", "everything", is_flag=True, help="Every partition in the landing folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ingest(day, start, end, everything, as_json) -> None:
    """Load landing files into the CRM database and print each batch's reconciliation.

    Examples: crm ingest --date 2026-03-01    crm ingest --all --json
    """
    from crm_tasks.db import check_schema
    from crm_tasks.ingest import all_dates, format_report, ingest_dates

    chosen = (day is not None) + (start is not None or end is not None) + everything
    if chosen != 1 or (start is None) != (end is None):
        raise click.UsageError("give exactly one of --date DATE, --from DATE --to DATE, or --all")
    cfg = load_default_settings()
    if everything:
        dates = all_dates(Path(cfg.landing_dir))
    elif day:
        dates = [day]
    else:
        dates = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    engine = _engine()
    try:
        check_schema(engine)
        report = ingest_dates(engine, cfg, dates)
    except IngestFailed as exc:
        payload = exc.report.to_dict()  # type: ignore[attr-defined]
        if not as_json:
            click.echo(format_report(payload))
        _fail(exc, as_json, payload)
    except CrmError as exc:
        _fail(exc, as_json)
    payload = report.to_dict()
    _emit(as_json, payload, format_report(payload))


@main.command()
@click.option("--from", "start", callback=_parse_date, help="First partition date.")
@click.option("--to", "end", callback=_parse_date, help="Last partition date, inclusive.")
@click.option("--quiet", is_flag=True, help="Only the totals, not one line per file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def batches(start, end, quiet, as_json) -> None:
    """Show the stored reconciliation of loaded, rejected and unreadable files.

    Example: crm batches --from 2026-03-01 --to 2026-03-31
    """
    from crm_tasks.db import check_schema
    from crm_tasks.ingest import format_report, stored_report

    engine = _engine()
    try:
        check_schema(engine)
    except CrmError as exc:
        _fail(exc, as_json)
    payload = stored_report(engine, start, end).to_dict()
    shown = payload | {"batches": []} if quiet else payload
    _emit(as_json, payload, format_report(shown))


@main.command("generate-data")
@click.option("--customers", default=2000, show_default=True, type=click.IntRange(1), help="Number of customers.")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1), help="Days of purchases.")
@click.option("--start", callback=_parse_date, default="2025-11-01", show_default=True, help="First day.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed (same seed, same files).")
@click.option("--bad-rows", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of rows to damage (bad emails, dates, amounts, duplicates, truncated lines).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Landing folder to write (default: the configured landing folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def generate_data(customers, days, start, seed, bad_rows, out, as_json) -> None:
    """Write demo landing partitions: a multi-locale customer base and its purchases.

    Example: crm generate-data --customers 2000 --days 365 --start 2025-11-01 --seed 7 --bad-rows 0.01
    """
    from crm_tasks.generate import generate

    target = out or Path(load_default_settings().landing_dir)
    summary = generate(target, customers, days, start, seed, bad_rows).to_dict()
    _emit(as_json, summary,
          f"wrote {summary['files']} files to {target}: {summary['customers']} customers, "
          f"{summary['purchases']} purchases from {summary['start']} to {summary['end']}"
          + (f"; damaged rows: {summary['bad_rows']}" if summary["bad_rows"] else ""))


@main.group("segments")
def segments_group() -> None:
    """Customer segments: RFM, lifecycle stages, value tiers and custom rules, with history."""


def _sizes_table(rows: list[dict], title: str) -> str:
    lines = [title, f"  {'segment':<34} {'size':>9} {'change':>8} {'entered':>8} {'left':>8}"]
    for r in rows:
        change = "" if r.get("change") is None else f"{r['change']:+d}"
        size = "" if r.get("size") is None else r["size"]
        flag = "" if r.get("status", "active") == "active" else f"  [{r['status']}]"
        lines.append(f"  {r['name']:<34} {size:>9} {change:>8} {r.get('entered') or 0:>8} "
                     f"{r.get('exited') or 0:>8}{flag}")
    return "\n".join(lines)


@segments_group.command("recompute")
@click.option("--as-of", "as_of", callback=_parse_date,
              help="Business date to compute as of (default: the latest loaded partition date).")
@click.option("--from", "start", callback=_parse_date, help="Backfill: first date of a range (with --to).")
@click.option("--to", "end", callback=_parse_date, help="Backfill: last date, inclusive.")
@click.option("--dry-run", is_flag=True, help="Compute and report, store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def segments_recompute(as_of, start, end, dry_run, as_json) -> None:
    """Recompute every segment as of a date and record the history.

    Examples: crm segments recompute --as-of 2026-03-31    crm segments recompute --from 2026-03-01 --to 2026-03-31
    """
    from crm_tasks import segments
    from crm_tasks.db import check_schema

    if (start is None) != (end is None) or (as_of and start):
        raise click.UsageError("give --as-of DATE, or --from DATE --to DATE, or neither (the latest loaded date)")
    cfg = load_default_settings()
    engine = _engine()
    try:
        check_schema(engine)
        if start:
            if dry_run:
                raise click.UsageError("--dry-run takes a single --as-of date")
            results = segments.recompute_range(engine, cfg, start, end)
        else:
            results = [segments.recompute(engine, cfg, as_of or segments.default_as_of(engine), dry_run=dry_run)]
    except CrmError as exc:
        _fail(exc, as_json)
    payload = {"runs": [r.summary() for r in results]}
    human = []
    for r in results:
        title = (f"segments as of {r.as_of}{' (dry run: nothing stored)' if r.dry_run else ''}: "
                 f"{r.customers} customers, {r.scored} with an order, totals from {r.source}, {r.seconds} s")
        human.append(_sizes_table([s for s in payload["runs"][results.index(r)]["segments"]], title))
        if r.buyers_without_profile:
            human.append(f"  note: {r.buyers_without_profile} customers have purchases but no profile; "
                         "they are not segmented")
        human += [f"  problem: {p}" for p in r.problems]
        # In a backfill, the dates a day undoes are recomputed by the days after it.
        cleared = [d for d in r.cleared_dates if not end or d > end]
        if cleared and r.dry_run:
            human.append(f"  note: a real run would undo the later recomputes {', '.join(map(str, cleared))}")
        elif cleared:
            human.append(f"  note: the later recomputes {', '.join(map(str, cleared))} were undone; "
                         "recompute them in order (--from/--to)")
    _emit(as_json, payload, "\n".join(human))


@segments_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def segments_list(as_json) -> None:
    """Every segment with its size and the change since the previous recompute.

    Example: crm segments list
    """
    from crm_tasks import segments
    from crm_tasks.db import check_schema

    engine = _engine()
    try:
        check_schema(engine)
    except CrmError as exc:
        _fail(exc, as_json)
    result = segments.list_segments(engine)
    payload = result.to_dict()
    if result.as_of is None:
        human = "no segments computed yet: run `crm segments recompute`"
    else:
        since = f" (change since {result.previous_as_of})" if result.previous_as_of else ""
        human = _sizes_table(payload["segments"], f"segments as of {result.as_of}{since}")
        human += "".join(f"\n  problem: {s.error}" for s in result.segments if s.error)
    _emit(as_json, payload, human)


@segments_group.command("show")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0), help="Members to list.")
@click.option("--as-of", "as_of", callback=_parse_date, help="Members on an earlier date (from the history).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def segments_show(name, limit, as_of, as_json) -> None:
    """A segment's members: customer ids with their scores (no contact data), highest value first.

    Example: crm segments show rfm:champions --limit 10
    """
    from crm_tasks import segments

    try:
        result = segments.show_segment(_engine(), name, limit, as_of)
    except CrmError as exc:
        _fail(exc, as_json)
    lines = [f"{name}{f' on {as_of}' if as_of else ''}: {result.size} members"
             + (f" (first {len(result.members)})" if len(result.members) < result.size else "")]
    for m in result.members:
        lines.append(f"  {m['customer_id']:<20} since {m['member_since']}  {m['lifecycle'] or '':<12} "
                     f"{m['rfm_segment'] or '':<20} recency {m['recency_days'] if m['recency_days'] is not None else '-':>4}"
                     f"  orders {m['frequency'] if m['frequency'] is not None else '-':>4}  value {m['monetary']}")
    _emit(as_json, result.to_dict(), "\n".join(lines))


@segments_group.command("transitions")
@click.option("--since", required=True, callback=_parse_date, help="First day of moves to count.")
@click.option("--until", callback=_parse_date, help="Last day, inclusive (default: all recorded).")
@click.option("--from-segment", "from_segment", help="Only moves out of this segment; lists the customers.")
@click.option("--to-segment", "to_segment", help="Only moves into this segment; lists the customers.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0), help="Customers to list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def segments_transitions(since, until, from_segment, to_segment, limit, as_json) -> None:
    """Who moved from which segment to which since a date (RFM, lifecycle and value tiers).

    Example: crm segments transitions --since 2026-03-24 --from-segment rfm:champions --to-segment rfm:at_risk
    """
    from crm_tasks import segments

    try:
        result = segments.transitions(_engine(), since, until, from_segment, to_segment, limit)
    except CrmError as exc:
        _fail(exc, as_json)
    lines = [f"moves since {since}{f' until {until}' if until else ''}:"]
    lines += [f"  {p.from_segment or '(entered)':<30} -> {p.to_segment:<30} {p.customers:>8}" for p in result.pairs]
    lines += [f"  {c['moved_on']}  {c['customer_id']}" for c in result.customers]
    _emit(as_json, result.to_dict(), "\n".join(lines))


@main.group("campaign")
def campaign_group() -> None:
    """Campaigns from campaigns/*.yaml: list them, and plan one for any date."""


@campaign_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_list(as_json) -> None:
    """Every campaign file: kind, schedule, template, and the problem if it is broken.

    Example: crm campaign list
    """
    from crm_tasks.campaigns import load_campaigns

    campaigns, problems = load_campaigns(load_default_settings())
    payload = {"campaigns": [{"name": c.name, "kind": c.kind, "enabled": c.enabled, "cron": c.schedule.cron,
                              "template": c.template, "description": c.description} for c in campaigns],
               "problems": [str(p) for p in problems]}
    lines = [f"  {c['name']:<24} {c['kind']:<20} {c['cron']:<14} {c['template']:<18}"
             f"{'' if c['enabled'] else ' [disabled]'}" for c in payload["campaigns"]]
    lines += [f"  broken: {p}" for p in payload["problems"]]
    _emit(as_json, payload, "\n".join(lines) or "no campaign files")
    if problems:
        sys.exit(1)


def _plan_lines(r: dict) -> list[str]:
    lines = [f"{r['campaign']} for {r['as_of']} (run at {r['run_at']}): audience {r['audience']}, "
             f"recipients {r['recipients']}, holdout {r['holdout']}, excluded {r['excluded']}"]
    lines += [f"  excluded, {reason}: {n}" for reason, n in r["reasons"].items()]
    if r.get("diff"):
        d = r["diff"]
        lines.append(f"  against the run for {d['previous_as_of']} ({d['previous_recipients']} recipients): "
                     f"{d['added']} added, {d['removed']} removed, {d['kept']} kept")
    if r.get("error"):
        lines.append(f"  BLOCKED: {r['error']}")
    return lines


@campaign_group.command("plan")
@click.argument("name")
@click.option("--as-of", "as_of", required=True, callback=_parse_date, help="The day the messages are for.")
@click.option("--at", "at", help="Plan as if run at this local time (HH:MM, campaign time zone); "
                                 "default: the schedule's time that day.")
@click.option("--limit", "audience_limit", type=click.IntRange(1), help="At most this many recipients.")
@click.option("--show", default=20, show_default=True, type=click.IntRange(0), help="Recipients to list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_plan(name, as_of, at, audience_limit, show, as_json) -> None:
    """Who would receive what, and who not and why, on any date. Stores and sends nothing.

    Example: crm campaign plan birthday --as-of 2028-02-29
    """
    from datetime import UTC, datetime, time
    from zoneinfo import ZoneInfo

    from crm_tasks.campaigns import get_campaign
    from crm_tasks.db import check_schema
    from crm_tasks.planning import CampaignBlocked, plan_campaign

    cfg = load_default_settings()
    engine = _engine()
    try:
        check_schema(engine)
        campaign = get_campaign(cfg, name)
        run_at = None
        if at:
            try:
                local = datetime.combine(as_of, time.fromisoformat(at),
                                         tzinfo=ZoneInfo(campaign.schedule.timezone or cfg.timezone))
            except ValueError:
                raise click.BadParameter(f"{at!r} is not a time such as 07:30", param_hint="--at") from None
            run_at = local.astimezone(UTC)
        try:
            result = plan_campaign(engine, cfg, campaign, as_of, run_at, record=False,
                                   audience_limit=audience_limit, sample=show)
        except CampaignBlocked as exc:
            result = exc.result
    except CrmError as exc:
        _fail(exc, as_json)
    payload = result.to_dict()
    lines = _plan_lines(payload)
    for m in result.sample:
        lines.append(f"  {m.customer_id:<16} {m.locale:<3} {m.local_send_at:<22} {m.idempotency_key}"
                     + (f"  coupon {m.coupon_code}" if m.coupon_code else ""))
    if result.recipients > len(result.sample) and result.sample:
        lines.append(f"  ... and {result.recipients - len(result.sample)} more")
    lines.append("  (a preview: nothing was stored or sent)")
    _emit(as_json, payload, "\n".join(lines))


def _state_line(states: dict) -> str:
    return ", ".join(f"{state} {n}" for state, n in states.items()) or "no messages"


@campaign_group.command("run")
@click.argument("name")
@click.option("--as-of", "as_of", required=True, callback=_parse_date, help="The day the messages are for.")
@click.option("--limit", "audience_limit", type=click.IntRange(1), help="At most this many recipients.")
@click.option("--test-recipient", help="Send every message to this address instead (test keys only).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_run(name, as_of, audience_limit, test_recipient, as_json) -> None:
    """Plan a campaign for a date and deliver it now, with the same code the DAG runs; prints the
    ledger's final states. The SMTP server is CRM_SMTP_URL. Messages not yet due (send window,
    retry backoff) stay in the ledger; run it again later, or let the DAG do it.

    Example: CRM_SMTP_URL=smtp+insecure://127.0.0.1:8025 crm campaign run birthday --as-of 2026-10-30
    """
    from crm_tasks.campaigns import get_campaign
    from crm_tasks.db import check_schema
    from crm_tasks.delivery import deliver, smtp_target
    from crm_tasks.planning import CampaignBlocked, plan_campaign

    cfg = load_default_settings()
    engine = _engine()
    payload: dict = {}
    try:
        check_schema(engine)
        campaign = get_campaign(cfg, name)
        target = smtp_target(cfg)  # before planning: a run that cannot send should not plan
        try:
            plan = plan_campaign(engine, cfg, campaign, as_of, audience_limit=audience_limit,
                                 test_recipient=test_recipient, sample=0)
        except CampaignBlocked as exc:
            payload = {"plan": exc.result.summary()}
            raise
        payload = {"plan": plan.summary()}
        result = deliver(engine, cfg, campaign.name, plan.run_id, target=target)
    except CrmError as exc:
        _fail(exc, as_json, payload)
    payload["delivery"] = result.summary()
    lines = _plan_lines(payload["plan"])
    lines.append(f"delivered over {target.describe()} in {result.batches} batch(es), {result.seconds:.1f} s: "
                 f"sent {result.sent}, deferred {result.deferred}, failed {result.failed}, "
                 f"unknown {result.unknown}, suppressed {result.suppressed}")
    total = sum(result.states.values())
    lines.append(f"  ledger of run {plan.run_id}: {_state_line(result.states)}; recipients {plan.recipients} "
                 f"= {total} messages: {'reconciles' if total == plan.recipients else 'DOES NOT RECONCILE'}")
    if result.retry_at:
        lines.append(f"  some messages are due later (from {result.retry_at}); run again then")
    _emit(as_json, payload, "\n".join(lines))


@campaign_group.command("status")
@click.argument("name")
@click.option("--as-of", "as_of", required=True, callback=_parse_date, help="The day the messages were for.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_status_command(name, as_of, as_json) -> None:
    """The ledger of a campaign's runs for a date: messages by state and the most common problems.

    Example: crm campaign status birthday --as-of 2026-10-30
    """
    from crm_tasks.delivery import campaign_status

    try:
        status = campaign_status(_engine(), name, as_of)
    except CrmError as exc:
        _fail(exc, as_json)
    lines = [f"{name} for {as_of}:"]
    for run in status["runs"]:
        kind = " [dry run]" if run["dry_run"] else " [test]" if run["test_run"] else ""
        lines.append(f"  run {run['run_id']}{kind} ({run['status']}, {run['recipients']} recipients): "
                     f"{_state_line(run['states'])}")
        lines += [f"    {p['state']} x{p['messages']}: {p['error']}" for p in run["problems"]]
    _emit(as_json, status, "\n".join(lines))


@main.command("smtp-sink")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store each message here as an .eml file (default: only count them).")
def smtp_sink(host, port, folder) -> None:
    """A local SMTP server (aiosmtpd) that accepts everything and keeps it, for development and the demo.

    Example: crm smtp-sink --port 8025 --dir var/mail   (then CRM_SMTP_URL=smtp+insecure://127.0.0.1:8025)
    """
    from crm_tasks.smtp import run_sink

    click.echo(f"SMTP sink on {host}:{port}, storing messages in {folder or '(nowhere: counting only)'}; "
               "Ctrl-C stops it", err=True)
    try:
        run_sink(host, port, folder)
    except KeyboardInterrupt:
        pass


@main.group("templates")
def templates_group() -> None:
    """The e-mail templates in templates/email/."""


@templates_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def templates_check(as_json) -> None:
    """Render every template in every language against sample customers; fail on any error.

    Example: crm templates check
    """
    from crm_tasks.preview import check_templates

    cfg = load_default_settings()
    try:
        result = check_templates(cfg)
    except CrmError as exc:
        _fail(exc, as_json)
    lines = [f"{result['rendered']} messages rendered from {len(result['templates'])} templates in "
             f"{len(result['languages'])} languages"]
    lines += [f"  missing translations, {lang}: {', '.join(keys)}" for lang, keys in result["missing"].items()]
    lines += [f"  error: {e}" for e in result["errors"]]
    _emit(as_json, result, "\n".join(lines))
    if result["errors"]:
        sys.exit(1)


@main.command("preview")
@click.argument("campaign")
@click.option("--customer", "customer_id", required=True, help="Customer id to render the message for.")
@click.option("--locale", help="Render in this language instead of the customer's (en, hi, te, fa, ur).")
@click.option("--as-of", "as_of", callback=_parse_date, help="Occasion date (default: today in crm.yaml's zone).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("var/preview"),
              show_default=True, help="Folder for the .eml and .html files.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def preview(campaign, customer_id, locale, as_of, out, as_json) -> None:
    """Write one customer's message of a campaign as .eml and .html files, to look at.

    Example: crm preview birthday --customer C000042 --locale fa
    """
    from crm_tasks.preview import preview_message

    cfg = load_default_settings()
    try:
        result = preview_message(_engine(), cfg, campaign, customer_id, out, locale=locale, as_of=as_of)
    except CrmError as exc:
        _fail(exc, as_json)
    _emit(as_json, result, f"wrote {result['eml']} and {result['html']} (subject: {result['subject']})")


@main.command("coupons")
@click.option("--campaign", help="Only this campaign.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def coupons_report(campaign, as_json) -> None:
    """Coupons issued and redeemed per campaign, matched from purchases' coupon_code.

    Example: crm coupons --campaign at_risk_offer
    """
    from crm_tasks.coupons import redemptions

    rows = [r.to_dict() for r in redemptions(_engine(), campaign)]
    lines = [f"  {r['campaign']:<24} issued {r['issued']:>7}  redeemed {r['redeemed']:>6} "
             f"({r['redemption_rate']:.1%})  revenue {r['revenue'] or '-'}" for r in rows]
    _emit(as_json, {"campaigns": rows}, "\n".join(lines) or "no coupons issued yet")


# --- cleanup and erasure (crm_tasks/cleanup.py, crm_tasks/erasure.py) ---------------------------


@main.group("cleanup", invoke_without_command=True)
@click.option("--as-of", "as_of", callback=_parse_date, help="Business date to clean as of (YYYY-MM-DD).")
@click.option("--dry-run", is_flag=True, help="Report what a real run would archive, merge and purge; store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def cleanup_group(ctx, as_of, dry_run, as_json) -> None:
    """Archive stale profiles, merge duplicates, purge archived ones after the grace period.

    Examples: crm cleanup --as-of 2026-03-29 --dry-run    crm cleanup restore C0000042
    """
    if ctx.invoked_subcommand is not None:
        return
    if as_of is None:
        raise click.UsageError("give --as-of DATE (or a subcommand such as `restore ID`)")
    from crm_tasks.cleanup import format_report, run_cleanup
    from crm_tasks.db import check_schema
    from crm_tasks.errors import CleanupBlocked

    engine = _engine()
    try:
        check_schema(engine)
        result = run_cleanup(engine, load_default_settings(), as_of, dry_run=dry_run)
    except CleanupBlocked as exc:
        if not as_json:
            click.echo(format_report(exc.result.to_dict()))
        _fail(exc, as_json, exc.result.to_dict())
    except CrmError as exc:
        _fail(exc, as_json)
    payload = result.to_dict()
    _emit(as_json, payload, format_report(payload))


@cleanup_group.command("restore")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cleanup_restore(customer_id, as_json) -> None:
    """Put an archived profile back, as it was, until it is purged after its grace period.

    Example: crm cleanup restore C0000042
    """
    from crm_tasks.cleanup import restore

    try:
        result = restore(_engine(), load_default_settings(), customer_id)
    except CrmError as exc:
        _fail(exc, as_json)
    _emit(as_json, result.to_dict(), f"restored {result.customer_id} (archived on {result.archived_on}, "
                                     f"{result.reason}); it takes part in segments from the next recompute")


@main.command("erase")
@click.option("--email", help="The person's e-mail address.")
@click.option("--customer", "customer_id", help="The person's customer id.")
@click.option("--preview-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of rendered previews (default: var/preview).")
@click.option("--mail-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the local SMTP sink's .eml files (default: var/mail).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def erase_command(email, customer_id, preview_dir, mail_dir, as_json) -> None:
    """Erase a person's personal data everywhere the CRM keeps it; keep the suppression hash and aggregates.

    Examples: crm erase --email asha@example.com    crm erase --customer C0000042
    """
    from crm_tasks.erasure import erase

    if not email and not customer_id:
        raise click.UsageError("give --email ADDRESS and/or --customer ID")
    try:
        result = erase(_engine(), load_default_settings(), email=email, customer_id=customer_id,
                       preview_dir=preview_dir, mail_dir=mail_dir)
    except CrmError as exc:
        _fail(exc, as_json)
    lines = [f"erased {', '.join(result.customer_ids) or 'no profile found'}:"]
    lines += [f"  {table:<20} {n:>6} removed" for table, n in result.removed.items()]
    lines += [f"  {table:<20} {n:>6} kept under the pseudonymous customer id" for table, n in result.kept.items()]
    lines.append(f"  {'suppressions':<20} {result.suppressed:>6} address hashes added (reason erased)")
    _emit(as_json, result.to_dict(), "\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    main()
