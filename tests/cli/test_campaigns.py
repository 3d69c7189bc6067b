"""crm campaign plan / templates check / preview / coupons, on a real database."""

from __future__ import annotations

import json
from datetime import date

from click.testing import CliRunner
from sqlalchemy import func, select

from crm_tasks.cli import main
from crm_tasks.store.models import CampaignRun, Message
from tests.factories import add_customers


def test_plan_previews_a_leap_day_and_stores_nothing(use_settings, engine):
    add_customers(engine, {"customer_id": "LEAP", "birthday": date(2000, 2, 29), "locale": "ur-PK",
                           "timezone": "Asia/Karachi"},
                  {"customer_id": "NOPE", "birthday": date(2000, 2, 29), "email_consent": False})
    out = CliRunner().invoke(main, ["campaign", "plan", "birthday", "--as-of", "2027-02-28", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["audience"] == 2 and payload["reasons"] == {"no_consent": 1}
    # Whether LEAP is held out is the hash's decision; either way it is accounted for.
    assert payload["recipients"] + payload["holdout"] == 1
    human = CliRunner().invoke(main, ["campaign", "plan", "birthday", "--as-of", "2028-02-29", "--at", "07:00"])
    assert human.exit_code == 0 and "excluded, no_consent: 1" in human.output
    assert "nothing was stored or sent" in human.output
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(Message)).scalar() == 0
    bad = CliRunner().invoke(main, ["campaign", "plan", "birthdya", "--as-of", "2027-02-28"])
    assert bad.exit_code == 1 and "did you mean 'birthday'" in bad.output.lower()


def test_campaign_list_and_templates_check(use_settings):
    listed = CliRunner().invoke(main, ["campaign", "list", "--json"])
    assert listed.exit_code == 0
    assert {c["name"] for c in json.loads(listed.stdout)["campaigns"]} >= {"birthday", "anniversary", "thank_you"}
    checked = CliRunner().invoke(main, ["templates", "check", "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["errors"] == []




def test_a_campaign_without_coupons_lists_no_coupon(use_settings, engine):
    from datetime import UTC, datetime

    from tests.factories import add_first_purchase

    add_customers(engine, {"customer_id": "C1"})
    add_first_purchase(engine, "C1", datetime(2026, 3, 1, 10, tzinfo=UTC))
    out = CliRunner().invoke(main, ["campaign", "plan", "thank_you", "--as-of", "2026-03-02"])
    assert out.exit_code == 0, out.output
    assert "C1" in out.output and "coupon" not in out.output and "nan" not in out.output.lower()
    payload = json.loads(CliRunner().invoke(main, ["campaign", "plan", "thank_you", "--as-of", "2026-03-02",
                                                   "--json"]).stdout)
    assert payload["recipients"] == 1
