"""What the messages look like: ``crm preview``, and the local ``crm smtp-sink`` (``crm templates check`` is
``crm_tasks/cli/templates.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from crm_tasks.cli.common import emit, engine, json_output, parse_date, reported, settings


@click.command("preview")
@click.argument("campaign")
@click.option("--customer", "customer_id", required=True, help="Customer id to render the message for.")
@click.option("--locale", help="Render in this language instead of the customer's (en, hi, te, fa, ur).")
@click.option("--as-of", "as_of", callback=parse_date, help="Occasion date (default: today in crm.yaml's zone).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the .eml and .html files (default: CRM_PREVIEW_DIR, var/preview).")
@click.option("--variant", help="For an A/B test: the variant to render (default: the first).")
@json_output
def preview(campaign, customer_id, locale, as_of, out, variant, as_json) -> None:
    """Write one customer's message of a campaign as .eml and .html files, to look at.

    Example: crm preview birthday --customer C000042 --locale fa
    """
    from crm_tasks.messages.preview import preview_message

    cfg = settings()
    with reported(as_json):
        result = preview_message(engine(), cfg, campaign, customer_id, out or cfg.preview_dir, locale=locale,
                                 as_of=as_of, variant=variant)
    emit(as_json, result, f"wrote {result['eml']} and {result['html']} (subject: {result['subject']})")


@click.command("smtp-sink")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8025, show_default=True, type=click.IntRange(1, 65535))
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store each message here as an .eml file (default: only count them).")
def smtp_sink(host, port, folder) -> None:
    """A local SMTP server (aiosmtpd) that accepts everything and keeps it, for development and the demo.

    Example: crm smtp-sink --port 8025 --dir var/mail   (then CRM_SMTP_URL=smtp+insecure://127.0.0.1:8025)
    """
    from crm_tasks.delivery.smtp import run_sink

    click.echo(f"SMTP sink on {host}:{port}, storing messages in {folder or '(nowhere: counting only)'}; "
               "Ctrl-C stops it", err=True)
    try:
        run_sink(host, port, folder)
    except KeyboardInterrupt:
        pass

