"""Coupon codes and their redemptions, matched from purchases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from click.testing import CliRunner
from sqlalchemy import insert

from crm_tasks.cli import main
from crm_tasks.store.models import Coupon, Purchase


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
