"""crm campaign plan / templates check / preview / coupons, on a real database."""

from __future__ import annotations

import email
import json
from datetime import UTC, date, datetime
from email import policy

from click.testing import CliRunner
from sqlalchemy import func, insert, select

from crm_tasks.cli import main
from crm_tasks.store.models import CampaignRun, Coupon, Message, Purchase
from tests.campaign_factories import add_customers


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


def test_preview_writes_eml_and_html_without_the_real_address(use_settings, engine, tmp_path):
    add_customers(engine, {"customer_id": "C7", "first_name": "Zahra", "locale": "fa-IR", "timezone": "Asia/Tehran"})
    out = CliRunner().invoke(main, ["preview", "at_risk_offer", "--customer", "C7", "--as-of", "2027-01-10",
                                    "--out", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    msg = email.message_from_bytes((tmp_path / "at_risk_offer-C7-fa.eml").read_bytes(), policy=policy.default)
    assert msg["Subject"] == payload["subject"] and "c7@example.com" not in str(msg)
    html = (tmp_path / "at_risk_offer-C7-fa.html").read_text(encoding="utf-8")
    assert 'dir="rtl"' in html and "Zahra" in html and "PREVIEW000" in html


def test_coupon_redemptions_are_matched_from_purchases(use_settings, engine):
    now = datetime(2027, 1, 5, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(Coupon), [
            {"code": code, "idempotency_key": f"k:{code}", "campaign": "at_risk_offer", "customer_id": owner,
             "value": 20, "value_type": "percent", "currency": None, "issued_on": date(2027, 1, 1),
             "expires_on": date(2027, 1, 10), "run_id": 1}
            for code, owner in (("AAAA222222", "C1"), ("BBBB333333", "C2"), ("CCCC444444", "C3"))])
        base = {"currency": "INR", "store_id": "S1", "sku": "X", "category": "grocery", "quantity": 1,
                "batch_id": 1, "line_no": 1}
        conn.execute(insert(Purchase), [
            {**base, "transaction_id": "T1", "customer_id": "C1", "purchased_at": now, "amount": 150,
             "coupon_code": "AAAA222222"},
            {**base, "transaction_id": "T2", "customer_id": "C9", "purchased_at": datetime(2027, 1, 12, tzinfo=UTC),
             "amount": 50.5, "coupon_code": "BBBB333333"},
            {**base, "transaction_id": "T3", "customer_id": "C1", "purchased_at": now, "amount": 10,
             "coupon_code": None},
        ])
    out = CliRunner().invoke(main, ["coupons", "--json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)["campaigns"]
    assert row["issued"] == 3 and row["redeemed"] == 2 and row["by_other_customer"] == 1
    assert row["after_expiry"] == 1 and row["revenue"] == {"INR": "200.5000"}
    assert row["redemption_rate"] == round(2 / 3, 4)
