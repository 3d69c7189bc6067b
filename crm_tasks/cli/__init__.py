"""The ``crm`` command: a thin wrapper over crm_tasks, for engineers, marketing ops and the demo.

One module per command group, in pipeline order; each command calls one library function
and prints its result object (``--json``) or a readable summary. Shared pieces are in
``common``.
"""

from __future__ import annotations

import logging

import click

from crm_tasks.cli import (
    bounces,
    campaigns,
    cleanup,
    db,
    ingest,
    messages,
    recommendations,
    reports,
    segments,
    templates,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CRM campaign engine: ingest, segments and campaigns for retail loyalty data."""
    # The commands print what matters themselves; without a handler, Python's
    # last-resort handler would echo the library's warnings to stderr a second time.
    logging.getLogger("crm_tasks").addHandler(logging.NullHandler())


for _command in (
    db.db,
    ingest.ingest, ingest.batches, ingest.generate_data,
    segments.segments_group,
    campaigns.campaign_group, campaigns.coupons_report,
    templates.templates_group, messages.preview, messages.smtp_sink,
    cleanup.cleanup_group, cleanup.erase_command,
    bounces.bounces_group,
    reports.report_group,
    recommendations.recommendations_group,
):
    main.add_command(_command)


