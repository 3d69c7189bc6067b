"""Landing files in: ``crm ingest``, ``crm batches``, ``crm generate-data``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from crm_tasks.cli.common import emit, fail, json_output, parse_date, reported, settings, store
from crm_tasks.errors import CrmError, IngestFailed


@click.command()
@click.option("--date", "day", callback=parse_date, help="Ingest one partition date (YYYY-MM-DD).")
@click.option("--from", "start", callback=parse_date, help="First date of a range (with --to).")
@click.option("--to", "end", callback=parse_date, help="Last date of a range, inclusive.")
@click.option("--all", "everything", is_flag=True, help="Every partition in the landing folder.")
@json_output
def ingest(day, start, end, everything, as_json) -> None:
    """Load landing files into the CRM database and print each batch's reconciliation.

    Examples: crm ingest --date 2026-03-01    crm ingest --all --json
    """
    from crm_tasks.ingest.batches import all_dates, format_report, ingest_dates

    chosen = (day is not None) + (start is not None or end is not None) + everything
    if chosen != 1 or (start is None) != (end is None):
        raise click.UsageError("give exactly one of --date DATE, --from DATE --to DATE, or --all")
    cfg = settings()
    db = store(as_json)
    if everything:
        with reported(as_json):
            dates = all_dates(Path(cfg.landing_dir))
    elif day:
        dates = [day]
    else:
        dates = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    try:
        report = ingest_dates(db, cfg, dates)
    except IngestFailed as exc:
        payload = exc.report.to_dict()  # type: ignore[attr-defined]
        if not as_json:
            click.echo(format_report(payload))
        fail(exc, as_json, payload)
    except CrmError as exc:
        fail(exc, as_json)
    payload = report.to_dict()
    emit(as_json, payload, format_report(payload))


@click.command()
@click.option("--from", "start", callback=parse_date, help="First partition date.")
@click.option("--to", "end", callback=parse_date, help="Last partition date, inclusive.")
@click.option("--quiet", is_flag=True, help="Only the totals, not one line per file.")
@json_output
def batches(start, end, quiet, as_json) -> None:
    """Show the stored reconciliation of loaded, rejected and unreadable files.

    Example: crm batches --from 2026-03-01 --to 2026-03-31
    """
    from crm_tasks.ingest.batches import format_report, stored_report

    db = store(as_json)
    payload = stored_report(db, start, end).to_dict()
    shown = payload | {"batches": []} if quiet else payload
    emit(as_json, payload, format_report(shown))


@click.command("generate-data")
@click.option("--customers", default=2000, show_default=True, type=click.IntRange(1), help="Number of customers.")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1), help="Days of purchases.")
@click.option("--start", callback=parse_date, default="2025-11-01", show_default=True, help="First day.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed (same seed, same files).")
@click.option("--bad-rows", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of rows to damage (bad emails, dates, amounts, duplicates, truncated lines).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Landing folder to write (default: the configured landing folder).")
@json_output
def generate_data(customers, days, start, seed, bad_rows, out, as_json) -> None:
    """Write demo landing partitions: a multi-locale customer base and its purchases.

    Example: crm generate-data --customers 2000 --days 365 --start 2025-11-01 --seed 7 --bad-rows 0.01
    """
    from crm_tasks.demo.generate import generate

    target = out or Path(settings().landing_dir)
    summary = generate(target, customers, days, start, seed, bad_rows).to_dict()
    emit(as_json, summary,
          f"wrote {summary['files']} files to {target}: {summary['customers']} customers, "
          f"{summary['purchases']} purchases from {summary['start']} to {summary['end']}"
          + (f"; damaged rows: {summary['bad_rows']}" if summary["bad_rows"] else ""))

