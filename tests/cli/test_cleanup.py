"""crm cleanup, crm cleanup restore and crm erase print a report and exactly one JSON object."""

from __future__ import annotations

import pytest

from tests.cleanup.support import config_with_share, stale_base


@pytest.fixture
def base(engine, cfg):
    """Ten profiles; five of them stale, one for each rule (and one stale by two)."""
    return stale_base(engine, cfg)


def test_the_cleanup_commands_print_the_report_and_one_json_object(base, use_settings, monkeypatch, tmp_path):
    import json

    from click.testing import CliRunner

    from crm_tasks.cli import main

    runner = CliRunner()
    blocked = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31"])
    assert blocked.exit_code == 1 and "max_archive_share 10%" in blocked.output
    dry = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31", "--dry-run"])
    assert dry.exit_code == 0 and "a real run would fail" in dry.output
    monkeypatch.setenv("CRM_CONFIG", config_with_share(tmp_path / "crm.yaml"))
    from crm_tasks.settings import settings

    settings.cache_clear()
    out = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["reasons"] == {"inactive": 2, "hard_bounce": 1, "no_contact": 1} and payload["reconciles"]
    assert payload["examples"]["no_contact"] == ["NOBODY"]
    text = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31"]).output
    assert "profiles before 10 = kept 6 + archived 4 + merged away 0" in text
    assert "archived, inactive: 2  e.g. GONE, SILENT" in text
    restored = runner.invoke(main, ["cleanup", "restore", "GONE", "--json"])
    assert json.loads(restored.output)["customer_id"] == "GONE"
    again = runner.invoke(main, ["cleanup", "restore", "GONE"])
    assert again.exit_code == 1 and "current profile" in again.output
    assert runner.invoke(main, ["cleanup"]).exit_code == 2


def test_erase_deletes_the_previews_crm_preview_wrote_without_either_naming_a_folder(use_settings, engine,
                                                                                    monkeypatch, tmp_path):
    """One setting (CRM_PREVIEW_DIR) for both: in an installed image the package's own folder is not where
    previews go, and an erasure must still find them."""
    import json
    from datetime import date

    from click.testing import CliRunner

    from crm_tasks.cli import main
    from crm_tasks.settings import settings
    from tests.factories import add_customers

    monkeypatch.setenv("CRM_PREVIEW_DIR", str(tmp_path / "previews"))
    settings.cache_clear()
    add_customers(engine, {"customer_id": "P1", "email": "p1@example.com", "birthday": date(1990, 5, 10)},
                  {"customer_id": "P2", "email": "p2@example.com", "birthday": date(1990, 5, 10)})
    for cid in ("P1", "P2"):
        out = CliRunner().invoke(main, ["preview", "birthday", "--customer", cid, "--as-of", "2026-05-10"])
        assert out.exit_code == 0, out.output
    written = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert len(written) == 4 and all("-P1-" in n or "-P2-" in n for n in written)
    gone = CliRunner().invoke(main, ["erase", "--customer", "P1", "--json"])
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["removed"]["previews"] == 2
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == [n for n in written if "-P2-" in n]
