"""The CRM database schema: ``crm db upgrade``."""

from __future__ import annotations

import click

from crm_tasks.cli.common import emit, engine, json_output, reported, settings


@click.group()
def db() -> None:
    """The CRM database schema."""


@db.command("upgrade")
@json_output
def db_upgrade(as_json: bool) -> None:
    """Create or migrate the CRM database to the latest schema.

    Example: crm db upgrade
    """
    from crm_tasks.store.engine import explain_url, upgrade

    with reported(as_json):
        url = settings().resolved_database_url()
        revision = upgrade(engine())
    emit(as_json, {"database": explain_url(url), "revision": revision},
          f"{explain_url(url)} is at revision {revision}")

