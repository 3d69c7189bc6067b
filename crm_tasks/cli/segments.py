"""Customer segments: ``crm segments recompute|list|show|transitions``."""

from __future__ import annotations

import click

from crm_tasks.cli.common import emit, engine, json_output, parse_date, reported, settings, store


@click.group("segments")
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
@click.option("--as-of", "as_of", callback=parse_date,
              help="Business date to compute as of (default: the latest loaded partition date).")
@click.option("--from", "start", callback=parse_date, help="Backfill: first date of a range (with --to).")
@click.option("--to", "end", callback=parse_date, help="Backfill: last date, inclusive.")
@click.option("--dry-run", is_flag=True, help="Compute and report, store nothing.")
@json_output
def segments_recompute(as_of, start, end, dry_run, as_json) -> None:
    """Recompute every segment as of a date and record the history.

    Examples: crm segments recompute --as-of 2026-03-31    crm segments recompute --from 2026-03-01 --to 2026-03-31
    """
    from crm_tasks.segments import compute as segments

    if (start is None) != (end is None) or (as_of and start):
        raise click.UsageError("give --as-of DATE, or --from DATE --to DATE, or neither (the latest loaded date)")
    cfg = settings()
    db = store(as_json)
    with reported(as_json):
        if start:
            if dry_run:
                raise click.UsageError("--dry-run takes a single --as-of date")
            results = segments.recompute_range(db, cfg, start, end)
        else:
            results = [segments.recompute(db, cfg, as_of or segments.default_as_of(db), dry_run=dry_run)]
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
    emit(as_json, payload, "\n".join(human))


@segments_group.command("list")
@json_output
def segments_list(as_json) -> None:
    """Every segment with its size and the change since the previous recompute.

    Example: crm segments list
    """
    from crm_tasks.segments import history

    db = store(as_json)
    result = history.list_segments(db)
    payload = result.to_dict()
    if result.as_of is None:
        human = "no segments computed yet: run `crm segments recompute`"
    else:
        since = f" (change since {result.previous_as_of})" if result.previous_as_of else ""
        human = _sizes_table(payload["segments"], f"segments as of {result.as_of}{since}")
        human += "".join(f"\n  problem: {s.error}" for s in result.segments if s.error)
    emit(as_json, payload, human)


@segments_group.command("show")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0), help="Members to list.")
@click.option("--as-of", "as_of", callback=parse_date, help="Members on an earlier date (from the history).")
@json_output
def segments_show(name, limit, as_of, as_json) -> None:
    """A segment's members: customer ids with their scores (no contact data), highest value first.

    Example: crm segments show rfm:champions --limit 10
    """
    from crm_tasks.segments import history

    with reported(as_json):
        result = history.show_segment(engine(), name, limit, as_of)
    lines = [f"{name}{f' on {as_of}' if as_of else ''}: {result.size} members"
             + (f" (first {len(result.members)})" if len(result.members) < result.size else "")]
    for m in result.members:
        lines.append(f"  {m['customer_id']:<20} since {m['member_since']}  {m['lifecycle'] or '':<12} "
                     f"{m['rfm_segment'] or '':<20} recency {m['recency_days'] if m['recency_days'] is not None else '-':>4}"
                     f"  orders {m['frequency'] if m['frequency'] is not None else '-':>4}  value {m['monetary']}")
    emit(as_json, result.to_dict(), "\n".join(lines))


@segments_group.command("transitions")
@click.option("--since", required=True, callback=parse_date, help="First day of moves to count.")
@click.option("--until", callback=parse_date, help="Last day, inclusive (default: all recorded).")
@click.option("--from-segment", "from_segment", help="Only moves out of this segment; lists the customers.")
@click.option("--to-segment", "to_segment", help="Only moves into this segment; lists the customers.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0), help="Customers to list.")
@json_output
def segments_transitions(since, until, from_segment, to_segment, limit, as_json) -> None:
    """Who moved from which segment to which since a date (RFM, lifecycle and value tiers).

    Example: crm segments transitions --since 2026-03-24 --from-segment rfm:champions --to-segment rfm:at_risk
    """
    from crm_tasks.segments import history

    with reported(as_json):
        result = history.transitions(engine(), since, until, from_segment, to_segment, limit)
    lines = [f"moves since {since}{f' until {until}' if until else ''}:"]
    lines += [f"  {p.from_segment or '(entered)':<30} -> {p.to_segment:<30} {p.customers:>8}" for p in result.pairs]
    lines += [f"  {c['moved_on']}  {c['customer_id']}" for c in result.customers]
    emit(as_json, result.to_dict(), "\n".join(lines))

