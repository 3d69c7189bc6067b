"""What every ``crm`` command shares: the settings, the store, output and errors.

Every command that reports results takes ``--json`` and then prints exactly one JSON
object on stdout (the library's result object). Errors go to stderr with exit code 1.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import date
from typing import NoReturn

import click
from sqlalchemy import Engine

from crm_tasks.errors import CrmError
from crm_tasks.settings import settings

__all__ = ["emit", "engine", "fail", "json_output", "parse_date", "reported", "settings", "store"]

# Every reporting command takes it; then it prints exactly one JSON object: the library's result.
json_output = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def engine() -> Engine:
    """The CRM database of the process-wide settings (not checked: see ``store``)."""
    from crm_tasks.store.engine import make_engine

    return make_engine(settings().resolved_database_url())


def store(as_json: bool) -> Engine:
    """The CRM database, checked to be at the code's schema; exits with the reason when it is not."""
    from crm_tasks.store.engine import check_schema

    eng = engine()
    with reported(as_json):
        check_schema(eng)
    return eng


def emit(as_json: bool, payload: dict, human: str) -> None:
    if as_json:
        click.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        click.echo(human)


def fail(exc: CrmError, as_json: bool, payload: dict | None = None) -> NoReturn:
    if as_json:
        click.echo(json.dumps((payload or {}) | {"error": str(exc)}, ensure_ascii=False, default=str))
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@contextmanager
def reported(as_json: bool, payload: dict | None = None):
    """A domain error inside the block ends the command: its message on stderr, exit code 1."""
    try:
        yield
    except CrmError as exc:
        fail(exc, as_json, payload)


def parse_date(_ctx, _param, value):
    """A click callback: YYYY-MM-DD text to a date, or a usage error naming the value."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date in YYYY-MM-DD form") from None
