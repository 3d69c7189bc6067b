"""Campaigns and their delivery: ``crm campaign list|plan|run|status``, ``crm coupons``."""

from __future__ import annotations

import sys

import click

from crm_tasks.cli.common import emit, engine, fail, json_output, parse_date, reported, settings, store
from crm_tasks.errors import CrmError


@click.group("campaign")
def campaign_group() -> None:
    """Campaigns from campaigns/*.yaml: list them, and plan one for any date."""


@campaign_group.command("list")
@json_output
def campaign_list(as_json) -> None:
    """Every campaign file: kind, schedule, template, and the problem if it is broken.

    Example: crm campaign list
    """
    from crm_tasks.campaigns.definitions import load_campaigns

    campaigns, problems = load_campaigns(settings())
    payload = {"campaigns": [{"name": c.name, "kind": c.kind, "enabled": c.enabled, "cron": c.schedule.cron,
                              "template": c.template, "description": c.description} for c in campaigns],
               "problems": [str(p) for p in problems]}
    lines = [f"  {c['name']:<24} {c['kind']:<20} {c['cron']:<14} {c['template']:<18}"
             f"{'' if c['enabled'] else ' [disabled]'}" for c in payload["campaigns"]]
    lines += [f"  broken: {p}" for p in payload["problems"]]
    emit(as_json, payload, "\n".join(lines) or "no campaign files")
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
@click.option("--as-of", "as_of", required=True, callback=parse_date, help="The day the messages are for.")
@click.option("--at", "at", help="Plan as if run at this local time (HH:MM, campaign time zone); "
                                 "default: the schedule's time that day.")
@click.option("--limit", "audience_limit", type=click.IntRange(1), help="At most this many recipients.")
@click.option("--show", default=20, show_default=True, type=click.IntRange(0), help="Recipients to list.")
@json_output
def campaign_plan(name, as_of, at, audience_limit, show, as_json) -> None:
    """Who would receive what, and who not and why, on any date. Stores and sends nothing.

    Example: crm campaign plan birthday --as-of 2028-02-29
    """
    from datetime import UTC, datetime, time
    from zoneinfo import ZoneInfo

    from crm_tasks.campaigns.definitions import get_campaign
    from crm_tasks.campaigns.planning import plan_campaign
    from crm_tasks.errors import CampaignBlocked

    cfg = settings()
    db = store(as_json)
    with reported(as_json):
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
            result = plan_campaign(db, cfg, campaign, as_of, run_at, record=False,
                                   audience_limit=audience_limit, sample=show)
        except CampaignBlocked as exc:
            result = exc.result
    payload = result.to_dict()
    lines = _plan_lines(payload)
    for m in result.sample:
        lines.append(f"  {m.customer_id:<16} {m.locale:<3} {m.local_send_at:<22} {m.idempotency_key}"
                     + (f"  coupon {m.coupon_code}" if m.coupon_code else ""))
    if result.recipients > len(result.sample) and result.sample:
        lines.append(f"  ... and {result.recipients - len(result.sample)} more")
    lines.append("  (a preview: nothing was stored or sent)")
    emit(as_json, payload, "\n".join(lines))


def _state_line(states: dict) -> str:
    return ", ".join(f"{state} {n}" for state, n in states.items()) or "no messages"


@campaign_group.command("run")
@click.argument("name")
@click.option("--as-of", "as_of", required=True, callback=parse_date, help="The day the messages are for.")
@click.option("--limit", "audience_limit", type=click.IntRange(1), help="At most this many recipients.")
@click.option("--test-recipient", help="Send every message to this address instead (test keys only).")
@click.option("--replay", is_flag=True,
              help="Deliver as if on the run's day: the ledger's clock starts at the run's scheduled time, so send "
                   "windows, lateness and sent_at are that day's (demos, and replaying a past date on a test server).")
@json_output
def campaign_run(name, as_of, audience_limit, test_recipient, replay, as_json) -> None:
    """Plan a campaign for a date and deliver it now, with the same code the DAG runs; prints the
    ledger's final states. The SMTP server is CRM_SMTP_URL. Messages not yet due (send window,
    retry backoff) stay in the ledger; run it again later, or let the DAG do it.

    Example: CRM_SMTP_URL=smtp+insecure://127.0.0.1:8025 crm campaign run birthday --as-of 2026-10-30
    """
    from crm_tasks.campaigns.definitions import get_campaign
    from crm_tasks.campaigns.planning import plan_campaign
    from crm_tasks.delivery.replay import replay as replay_run
    from crm_tasks.delivery.send import deliver, smtp_target
    from crm_tasks.errors import CampaignBlocked

    cfg = settings()
    db = store(as_json)
    payload: dict = {}
    try:
        campaign = get_campaign(cfg, name)
        target = smtp_target(cfg)  # before planning: a run that cannot send should not plan
        try:
            plan = plan_campaign(db, cfg, campaign, as_of, audience_limit=audience_limit,
                                 test_recipient=test_recipient, sample=0)
        except CampaignBlocked as exc:
            payload = {"plan": exc.result.summary()}
            raise
        payload = {"plan": plan.summary()}
        if replay:
            result = replay_run(db, cfg, campaign.name, plan.run_id, plan.run_at, target=target)
        else:
            result = deliver(db, cfg, campaign.name, plan.run_id, target=target)
    except CrmError as exc:
        fail(exc, as_json, payload)
    payload["delivery"] = result.summary()
    lines = _plan_lines(payload["plan"])
    lines.append(f"delivered over {target.describe()} in {result.batches} batch(es), {result.seconds:.1f} s: "
                 f"sent {result.sent}, deferred {result.deferred}, failed {result.failed}, "
                 f"unknown {result.unknown}, suppressed {result.suppressed}, expired {result.expired}")
    total = sum(result.states.values())
    lines.append(f"  ledger of run {plan.run_id}: {_state_line(result.states)}; recipients {plan.recipients} "
                 f"= {total} messages: {'reconciles' if total == plan.recipients else 'DOES NOT RECONCILE'}")
    if result.retry_at:
        lines.append(f"  some messages are due later (from {result.retry_at}); run again then")
    emit(as_json, payload, "\n".join(lines))


@campaign_group.command("status")
@click.argument("name")
@click.option("--as-of", "as_of", callback=parse_date,
              help="The day the messages were for (default: the latest day the campaign ran for).")
@json_output
def campaign_status_command(name, as_of, as_json) -> None:
    """The ledger of a campaign's runs for a date: messages by state and the most common problems.

    Examples: crm campaign status birthday    crm campaign status birthday --as-of 2026-10-30
    """
    from crm_tasks.delivery.send import campaign_status

    with reported(as_json):
        status = campaign_status(engine(), settings(), name, as_of)
    lines = [f"{name} for {status['as_of']}:"]
    for run in status["runs"]:
        kind = " [dry run]" if run["dry_run"] else " [test]" if run["test_run"] else ""
        lines.append(f"  run {run['run_id']}{kind} ({run['status']}, {run['recipients']} recipients): "
                     f"{_state_line(run['states'])}")
        lines += [f"    {p['state']} x{p['messages']}: {p['error']}" for p in run["problems"]]
    emit(as_json, status, "\n".join(lines))


@click.command("coupons")
@click.option("--campaign", help="Only this campaign.")
@json_output
def coupons_report(campaign, as_json) -> None:
    """Coupons issued and redeemed per campaign, matched from purchases' coupon_code.

    A targeted coupon is redeemed only by a purchase in its category or of its product; purchases that
    carried its code on anything else are shown as "outside scope".

    Example: crm coupons --campaign at_risk_offer
    """
    from crm_tasks.campaigns.coupons import redemptions

    rows = [r.to_dict() for r in redemptions(engine(), campaign)]
    lines = [f"  {r['campaign']:<24} issued {r['issued']:>7}  redeemed {r['redeemed']:>6} "
             f"({r['redemption_rate']:.1%})  revenue {r['revenue'] or '-'}"
             + (f"  outside scope {r['outside_scope']}" if r["outside_scope"] else "") for r in rows]
    emit(as_json, {"campaigns": rows}, "\n".join(lines) or "no coupons issued yet")

