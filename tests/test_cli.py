"""The crm command: help with examples, one JSON object with --json, errors as exit code 1."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from crm_tasks.cli import main
from tests.helpers import customer, purchase, write_csv


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(all_commands(main)), ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_ingest_json_is_one_object_and_reconciles(use_settings, landing):
    write_csv(landing, "customers", "2026-03-01", [customer("C1")])
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1"), purchase("T1"), purchase("T2", amount="?")])
    result = CliRunner().invoke(main, ["ingest", "--date", "2026-03-01", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["totals"] == {"rows_read": 4, "rows_loaded": 2, "rows_quarantined": 1, "rows_duplicate": 1,
                                 "rows_withheld": 0}
    assert payload["reconciles"] is True and payload["files"] == 2
    human = CliRunner().invoke(main, ["batches"])
    assert "purchases/dt=2026-03-01/purchases.csv" in human.output
    assert "read = loaded + quarantined + duplicates + withheld: reconciles" in human.output


def test_failed_ingest_exits_1_with_the_report(use_settings, landing):
    write_csv(landing, "purchases", "2026-03-01", [purchase(f"B{i}", amount="?") for i in range(12)])
    result = CliRunner().invoke(main, ["ingest", "--all", "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["failed_files"] == 1 and "12 of 12 rows" in payload["error"]
    assert "error:" in result.stderr


def test_ingest_refuses_an_unmigrated_database(tmp_path, monkeypatch):
    from crm_tasks.config import settings

    monkeypatch.setenv("CRM_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["ingest", "--all"])
    finally:
        settings.cache_clear()
    assert result.exit_code == 1
    assert "run `crm db upgrade` first" in result.stderr


def test_ingest_needs_exactly_one_selection():
    result = CliRunner().invoke(main, ["ingest", "--date", "2026-03-01", "--all"])
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = CliRunner().invoke(main, ["ingest", "--date", "2026-02-30"])
    assert result.exit_code == 2 and "'2026-02-30' is not a date" in result.output


def test_generate_data_json(tmp_path):
    result = CliRunner().invoke(main, ["generate-data", "--customers", "30", "--days", "3", "--out",
                                       str(tmp_path / "l"), "--json"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["customers"] == 30 and payload["files"] >= 2 and payload["purchases"] > 0
