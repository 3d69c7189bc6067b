"""Late bounces and complaints: ``crm bounces read``."""

from __future__ import annotations

from pathlib import Path

import click

from crm_tasks.cli.common import emit, json_output, reported, settings, store


@click.group("bounces")
def bounces_group() -> None:
    """The bounce mailbox: delivery status notifications and complaint reports after the send."""


@bounces_group.command("read")
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Read this maildir instead of CRM_BOUNCE_IMAP_URL or delivery.feedback.maildir.")
@json_output
def bounces_read(maildir, as_json) -> None:
    """Read the bounce mailbox once: suppress hard bounces and complaints, count soft bounces, move each
    report to the processed folder and anything else to the unparsed folder.

    Examples: crm bounces read    crm bounces read --maildir /var/mail/bounces --json
    """
    from crm_tasks.delivery.bounce_mailbox import open_mailbox, read_bounces

    db = store(as_json)
    cfg = settings()
    with reported(as_json):
        result = read_bounces(db, cfg, open_mailbox(cfg, maildir=maildir))
    payload = result.summary()
    e = result.events
    head = (f"{result.mailbox}: {result.messages} messages, {result.reports} reports, "
            f"{result.unparsed} kept in {cfg.delivery.feedback.unparsed_folder}")
    lines = [head]
    lines += [f"  unparsed, {why}: {n}" for why, n in sorted(result.unparsed_reasons.items())]
    lines.append(f"  events: {e.read} read = {e.applied} applied + {e.unmatched} unmatched + {e.forged} forged "
                 f"+ {e.duplicate} duplicate ({'reconciles' if result.reconciles else 'DOES NOT RECONCILE'})")
    lines += [f"  {kind}: {n}" for kind, n in sorted(e.kinds.items())]
    lines.append(f"  addresses suppressed: {e.suppressed}; soft bounces counted: {e.soft_bounces}")
    emit(as_json, payload, "\n".join(lines))
