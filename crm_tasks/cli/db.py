"""The CRM database: ``crm db upgrade`` (schema, and the keys it generates) and ``crm db rotate-key``."""

from __future__ import annotations

import click

from crm_tasks.cli.common import emit, engine, json_output, reported, settings, store


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



@db.command("rotate-key")
@click.option("--grace-days", type=click.IntRange(min=0), default=30, show_default=True,
              help="How long links signed with the current key keep working.")
@json_output
def db_rotate_key(grace_days: int, as_json: bool) -> None:
    """Replace the key that signs unsubscribe links with a new random one; links already sent keep
    working for --grace-days. Suppression hashes keep their own key, which never rotates.

    Example: crm db rotate-key --grace-days 30
    """
    from dataclasses import asdict

    from crm_tasks.store.keys import rotate_signing_key

    db = store(as_json)
    with reported(as_json), db.begin() as conn:
        done = rotate_signing_key(conn, settings(), grace_days)
    emit(as_json, asdict(done),
         f"new signing key {done.new_key_id}; links signed before keep working until {done.old_links_valid_until}")
