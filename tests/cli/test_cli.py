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
    from crm_tasks.settings import settings

    monkeypatch.setenv("CRM_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["ingest", "--all"])
    finally:
        settings.cache_clear()
    assert result.exit_code == 1
    assert "run `crm db upgrade` first" in result.stderr


def test_ingest_from_a_missing_landing_folder_exits_1_naming_it(use_settings, tmp_path, monkeypatch):
    from crm_tasks.settings import settings

    monkeypatch.setenv("CRM_LANDING_DIR", str(tmp_path / "does-not-exist"))
    settings.cache_clear()
    for args in (["ingest", "--all"], ["ingest", "--date", "2026-03-01"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, args
        assert "the landing folder" in result.stderr and "does-not-exist" in result.stderr
        assert "reconciles" not in result.stdout  # no green report of nothing


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


# --- crm segments ---------------------------------------------------------------------------


def test_every_segments_command_is_among_those_with_help():
    assert {p for p in all_commands(main) if p[0] == "segments"} == {
        ("segments", "recompute"), ("segments", "list"), ("segments", "show"), ("segments", "transitions")}


@pytest.fixture
def segmented(use_settings, landing):
    """Three profiles loaded for 2026-03-01: a recent buyer, an old buyer and a prospect."""
    write_csv(landing, "customers", "2026-03-01", [customer("AMY"), customer("BEN"), customer("PRO")])
    write_csv(landing, "purchases", "2026-03-01", [
        purchase("A1", "AMY", "2026-03-01T10:00:00+05:30", "500.00"),
        purchase("B1", "BEN", "2025-06-01T10:00:00+05:30", "80.00"),
    ])
    assert CliRunner().invoke(main, ["ingest", "--all"]).exit_code == 0
    return use_settings


def _open_sizes(engine) -> dict[str, int]:
    from sqlalchemy import func, select

    from crm_tasks.store.models import Segment, SegmentMembership

    with engine.connect() as conn:
        return dict(conn.execute(
            select(Segment.name, func.count()).join(SegmentMembership, SegmentMembership.segment_id == Segment.id)
            .where(SegmentMembership.valid_to.is_(None)).group_by(Segment.name)).all())


def test_segments_recompute_json_counts_match_the_database(segmented, engine):
    # Without a date: as of the latest loaded partition.
    result = CliRunner().invoke(main, ["segments", "recompute", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (run,) = payload["runs"]
    assert run["as_of"] == "2026-03-01" and run["customers"] == 3 and run["scored"] == 2
    stored = _open_sizes(engine)
    assert {s["name"]: s["size"] for s in run["segments"] if s["size"]} == stored
    assert run["memberships"] == sum(stored.values()) == run["entered"]
    assert stored["lifecycle:new"] == 1 and stored["lifecycle:prospect"] == 1

    # A backfill is one run per day; a dry run reports without storing.
    result = CliRunner().invoke(main, ["segments", "recompute", "--from", "2026-03-02", "--to", "2026-03-04", "--json"])
    assert [r["as_of"] for r in json.loads(result.stdout)["runs"]] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    result = CliRunner().invoke(main, ["segments", "recompute", "--as-of", "2026-04-05", "--dry-run", "--json"])
    assert json.loads(result.stdout)["runs"][0]["dry_run"] is True
    assert json.loads(CliRunner().invoke(main, ["segments", "list", "--json"]).stdout)["as_of"] == "2026-03-04"


def test_segments_list_show_and_transitions_json(segmented):
    runner = CliRunner()
    assert runner.invoke(main, ["segments", "recompute", "--as-of", "2026-03-01"]).exit_code == 0
    # AMY's first order is 35 days old on 2026-04-05: she moves from new to active.
    assert runner.invoke(main, ["segments", "recompute", "--as-of", "2026-04-05"]).exit_code == 0

    listed = json.loads(runner.invoke(main, ["segments", "list", "--json"]).stdout)
    assert (listed["as_of"], listed["previous_as_of"]) == ("2026-04-05", "2026-03-01")
    new = next(s for s in listed["segments"] if s["name"] == "lifecycle:new")
    assert (new["size"], new["previous"], new["change"], new["exited"]) == (0, 1, -1, 1)

    shown = json.loads(runner.invoke(main, ["segments", "show", "lifecycle:active", "--json"]).stdout)
    assert shown["size"] == 1 and [m["customer_id"] for m in shown["members"]] == ["AMY"]
    assert "email" not in shown["members"][0]  # ids and scores only
    earlier = json.loads(runner.invoke(main, ["segments", "show", "lifecycle:new", "--as-of", "2026-03-15",
                                              "--limit", "5", "--json"]).stdout)
    assert earlier["as_of"] == "2026-03-15" and [m["customer_id"] for m in earlier["members"]] == ["AMY"]

    moved = json.loads(runner.invoke(main, ["segments", "transitions", "--since", "2026-04-05", "--from-segment",
                                            "lifecycle:new", "--to-segment", "lifecycle:active", "--json"]).stdout)
    assert moved["pairs"] == [{"from_segment": "lifecycle:new", "to_segment": "lifecycle:active", "customers": 1}]
    assert [(c["customer_id"], c["moved_on"]) for c in moved["customers"]] == [("AMY", "2026-04-05")]
    human = runner.invoke(main, ["segments", "transitions", "--since", "2026-04-05"])
    assert "lifecycle:new" in human.output and "-> lifecycle:active" in human.output


def test_segments_show_of_an_unknown_name_exits_1_naming_it(segmented):
    CliRunner().invoke(main, ["segments", "recompute"])
    result = CliRunner().invoke(main, ["segments", "show", "rfm:champs", "--json"])
    assert result.exit_code == 1
    assert "no segment named 'rfm:champs'" in json.loads(result.stdout)["error"]
    assert "rfm:champions" in result.stderr  # the closest names are suggested


def test_segments_recompute_takes_a_date_or_a_range_not_both():
    result = CliRunner().invoke(main, ["segments", "recompute", "--as-of", "2026-03-01", "--from", "2026-03-01",
                                       "--to", "2026-03-02"])
    assert result.exit_code == 2 and "give --as-of DATE, or --from DATE --to DATE" in result.output
