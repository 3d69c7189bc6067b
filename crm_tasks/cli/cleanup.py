"""Stale profiles and erasure: ``crm cleanup [restore]``, ``crm erase``."""

from __future__ import annotations

from pathlib import Path

import click

from crm_tasks.cli.common import emit, engine, fail, json_output, parse_date, reported, settings, store
from crm_tasks.errors import CrmError


@click.group("cleanup", invoke_without_command=True)
@click.option("--as-of", "as_of", callback=parse_date, help="Business date to clean as of (YYYY-MM-DD).")
@click.option("--dry-run", is_flag=True, help="Report what a real run would archive, merge and purge; store nothing.")
@json_output
@click.pass_context
def cleanup_group(ctx, as_of, dry_run, as_json) -> None:
    """Archive stale profiles, merge duplicates, purge archived ones after the grace period.

    Examples: crm cleanup --as-of 2026-03-29 --dry-run    crm cleanup restore C0000042
    """
    if ctx.invoked_subcommand is not None:
        return
    if as_of is None:
        raise click.UsageError("give --as-of DATE (or a subcommand such as `restore ID`)")
    from crm_tasks.cleanup.archive import format_report, run_cleanup
    from crm_tasks.errors import CleanupBlocked

    db = store(as_json)
    try:
        result = run_cleanup(db, settings(), as_of, dry_run=dry_run)
    except CleanupBlocked as exc:
        if not as_json:
            click.echo(format_report(exc.result.to_dict()))
        fail(exc, as_json, exc.result.to_dict())
    except CrmError as exc:
        fail(exc, as_json)
    payload = result.to_dict()
    emit(as_json, payload, format_report(payload))


@cleanup_group.command("restore")
@click.argument("customer_id")
@json_output
def cleanup_restore(customer_id, as_json) -> None:
    """Put an archived profile back, as it was, until it is purged after its grace period.

    Example: crm cleanup restore C0000042
    """
    from crm_tasks.cleanup.restore import restore

    with reported(as_json):
        result = restore(engine(), settings(), customer_id)
    emit(as_json, result.to_dict(), f"restored {result.customer_id} (archived on {result.archived_on}, "
                                     f"{result.reason}); it takes part in segments from the next recompute")


@click.command("erase")
@click.option("--email", help="The person's e-mail address.")
@click.option("--customer", "customer_id", help="The person's customer id.")
@click.option("--preview-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of rendered previews (default: CRM_PREVIEW_DIR, var/preview).")
@click.option("--mail-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the local SMTP sink's .eml files (default: var/mail).")
@json_output
def erase_command(email, customer_id, preview_dir, mail_dir, as_json) -> None:
    """Erase a person's personal data everywhere the CRM keeps it; keep the suppression hash and aggregates.

    Examples: crm erase --email asha@example.com    crm erase --customer C0000042
    """
    from crm_tasks.cleanup.erasure import erase

    if not email and not customer_id:
        raise click.UsageError("give --email ADDRESS and/or --customer ID")
    with reported(as_json):
        result = erase(engine(), settings(), email=email, customer_id=customer_id,
                       preview_dir=preview_dir, mail_dir=mail_dir)
    lines = [f"erased {', '.join(result.customer_ids) or 'no profile found'}:"]
    lines += [f"  {table:<20} {n:>6} removed" for table, n in result.removed.items()]
    lines += [f"  {table:<20} {n:>6} kept under the pseudonymous customer id" for table, n in result.kept.items()]
    lines.append(f"  {'suppressions':<20} {result.suppressed:>6} address hashes added (reason erased)")
    emit(as_json, result.to_dict(), "\n".join(lines))

