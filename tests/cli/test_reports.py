"""crm report refresh / campaign / lift / control, and crm campaign run --replay, on a real database."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta

from click.testing import CliRunner
from sqlalchemy import select, update

from crm_tasks.cli import main
from crm_tasks.store.models import Message
from tests.conftest import REPO
from tests.factories import add_customers, add_membership, buy, campaign, plan
from tests.smtp_servers import SmtpServer


def _measured_run(engine, cfg):
    add_customers(engine, *({"customer_id": f"C{i:03d}", "birthday": date(1990, 5, 1)} for i in range(240)))
    plan(engine, cfg, campaign(holdout_share=0.5), date(2026, 5, 1), datetime(2026, 5, 1, 3, 0, tzinfo=UTC),
         record=True, dry_run=False)
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=Message.send_at))
    for i in range(0, 240, 4):
        buy(engine, f"C{i:03d}", datetime(2026, 5, 2, 8, tzinfo=UTC), "250")


def test_refresh_then_the_campaign_report_as_json_text_and_csv(use_settings, engine, tmp_path):
    _measured_run(engine, use_settings)
    runner = CliRunner()
    refreshed = runner.invoke(main, ["report", "refresh", "--as-of", "2026-05-20", "--json"])
    assert refreshed.exit_code == 0, refreshed.output
    assert json.loads(refreshed.stdout)["runs"] == 1

    out = runner.invoke(main, ["report", "campaign", "birthday", "--json", "--csv", str(tmp_path / "r.csv")])
    assert out.exit_code == 0, out.output
    [run] = json.loads(out.stdout)["runs"]
    [treatment] = run["treatment"]
    lift = treatment["lift"]
    assert {"conversion", "revenue", "attributed", "lift"} <= set(treatment) and run["holdout"]["customers"] > 0
    assert treatment["customers"] + run["holdout"]["customers"] == 240
    assert lift["conversion"]["difference"]["ci_low"] <= lift["conversion"]["difference"]["ci_high"]
    assert {"ci_low", "ci_high", "estimate"} <= set(lift["revenue"]["difference"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text(encoding="utf-8"))))
    assert [r["group"] for r in rows] == ["treatment", "holdout"]
    assert rows[0]["conversion_ci_low"] == str(lift["conversion"]["difference"]["ci_low"]) or \
        rows[0]["conversion_ci_low"] == "'" + str(lift["conversion"]["difference"]["ci_low"])

    text = runner.invoke(main, ["report", "campaign", "birthday"])
    assert text.exit_code == 0 and "lift:" in text.output and "holdout:" in text.output
    lifted = runner.invoke(main, ["report", "lift", "--since", "2026-05-01", "--json"])
    assert [r["campaign"] for r in json.loads(lifted.stdout)["runs"]] == ["birthday"]
    control = runner.invoke(main, ["report", "control", "--json"])
    months = json.loads(control.stdout)["months"]  # crm.yaml's 5 % control group, for 12 months
    assert control.exit_code == 0 and len(months) == 12
    assert all(m["control"]["customers"] + m["marketed"]["customers"] == 240 for m in months)
    missing = runner.invoke(main, ["report", "campaign", "anniversary"])
    assert missing.exit_code == 1 and "no results for campaign 'anniversary' as of 2026-05-20" in missing.output


def test_a_replayed_run_is_sent_as_if_on_its_day(use_settings, engine, monkeypatch, tmp_path):
    from crm_tasks.settings import settings

    folder = tmp_path / "campaigns"
    folder.mkdir()
    src = (REPO / "campaigns" / "birthday.yaml").read_text(encoding="utf-8")
    (folder / "birthday.yaml").write_text(src + "\nholdout_share: 0\n", encoding="utf-8")
    monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(folder))
    add_customers(engine, {"customer_id": "R1", "birthday": date(1990, 4, 2)},
                  {"customer_id": "R2", "birthday": date(1990, 4, 2), "timezone": "America/New_York"})
    with SmtpServer() as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        settings.cache_clear()
        out = CliRunner().invoke(main, ["campaign", "run", "birthday", "--as-of", "2026-04-02", "--replay", "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["delivery"]["sent"] == 2 and len(srv.handler.messages) == 2
    with engine.connect() as conn:
        sent = dict(conn.execute(select(Message.customer_id, Message.sent_at)).all())
    # Each at its own 09:00 of that day (New York's window opens hours after Kolkata's), not today: a birthday
    # message would be stale today (lateness 0) and expire instead.
    assert sent["R1"].date() == date(2026, 4, 2) and sent["R2"] - sent["R1"] > timedelta(hours=9)


def test_sales_report_refreshes_the_cube_and_writes_safe_csv(use_settings, engine, tmp_path):
    add_customers(engine, {"customer_id": "S1"})
    buy(engine, "S1", datetime(2026, 6, 3, 8, tzinfo=UTC), "120.50")
    buy(engine, "S1", datetime(2026, 6, 20, 8, tzinfo=UTC), "-20.50")
    out = CliRunner().invoke(main, ["report", "sales", "--by", "month", "--refresh", "2026-06-30", "--json",
                                    "--csv", str(tmp_path / "s.csv")])
    assert out.exit_code == 0, out.output
    [june] = json.loads(out.stdout)["rows"]
    assert (june["period"], june["revenue"], june["refunded"], june["orders"], june["buyers"]) == \
        ("2026-06-01", "100.00", "20.50", 1, 1)
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines()[0].startswith("period,revenue")
    bad = CliRunner().invoke(main, ["report", "sales", "--by", "year"])
    assert bad.exit_code == 2


def test_sales_report_by_segment(use_settings, engine):
    add_customers(engine, {"customer_id": "G1"}, {"customer_id": "G2"})
    add_membership(engine, "rfm:champions", "G1", date(2026, 6, 1))
    buy(engine, "G1", datetime(2026, 6, 3, 8, tzinfo=UTC), "70")
    buy(engine, "G2", datetime(2026, 6, 3, 9, tzinfo=UTC), "30")
    out = CliRunner().invoke(main, ["report", "sales", "--by", "month", "--refresh", "2026-06-30", "--segment",
                                    "rfm:champions", "--json"])
    assert out.exit_code == 0, out.output
    [june] = json.loads(out.stdout)["rows"]
    assert (june["revenue"], june["orders"], june["buyers"]) == ("70.00", 1, 1)
    bad = CliRunner().invoke(main, ["report", "sales", "--segment", "champions"])
    assert bad.exit_code != 0 and "rfm:<segment>" in bad.output


def test_kpis_command_prints_one_row_per_month(use_settings, engine):
    add_customers(engine, {"customer_id": "K1"})
    buy(engine, "K1", datetime(2026, 2, 3, 8, tzinfo=UTC), "10")
    out = CliRunner().invoke(main, ["report", "kpis", "--as-of", "2026-03-31", "--months", "3", "--json"])
    assert out.exit_code == 0, out.output
    months = json.loads(out.stdout)["months"]
    assert [m["month"] for m in months] == ["2026-01-01", "2026-02-01", "2026-03-01"]
    assert [m["new_customers"] for m in months] == [0, 1, 0]
    text = CliRunner().invoke(main, ["report", "kpis", "--as-of", "2026-03-15", "--months", "1"])
    assert text.exit_code == 0 and "2026-03*" in text.output  # the month is not over yet


def test_cohorts_command(use_settings, engine):
    add_customers(engine, {"customer_id": "K1"})
    buy(engine, "K1", datetime(2026, 2, 3, 8, tzinfo=UTC), "10")
    buy(engine, "K1", datetime(2026, 3, 3, 8, tzinfo=UTC), "10")
    out = CliRunner().invoke(main, ["report", "cohorts", "--as-of", "2026-03-31", "--months", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["cohorts"] == [
        {"month": "2026-02-01", "customers": 1, "active": [1, 1], "retention": [1.0, 1.0]},
        {"month": "2026-03-01", "customers": 0, "active": [0], "retention": [0.0]}]
