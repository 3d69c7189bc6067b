"""Previews and the template check: every template in every language, and one customer's message to look at."""

from __future__ import annotations

import email
import json
from email import policy

from click.testing import CliRunner

from crm_tasks.cli import main
from crm_tasks.messages.preview import check_templates
from crm_tasks.settings import load_settings
from tests.factories import add_customers

REPO_CFG = load_settings()


def test_templates_check_passes_on_the_shipped_templates():
    result = check_templates(REPO_CFG)
    assert result["errors"] == []
    assert result["rendered"] == len(result["templates"]) * len(result["languages"]) * 4
    assert result["missing"] == {}


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


def test_a_preview_shows_the_customers_products_and_shop_links_with_utm(use_settings, engine, tmp_path):
    from datetime import date

    from sqlalchemy import insert

    from crm_tasks.store.models import CustomerRecommendation
    from tests.recommendations.data import add_products

    add_customers(engine, {"customer_id": "C8", "first_name": "Sita", "locale": "te-IN"})
    add_products(engine, {"sku": "DAL-1", "name": "Toor Dal 1 kg", "name_te": "కంది పప్పు 1 కిలో"})
    with engine.begin() as conn:
        conn.execute(insert(CustomerRecommendation).values(customer_id="C8", rank=1, sku="DAL-1", kind="popular",
                                                           source_sku=None, customers=12, score=12.0,
                                                           as_of=date(2027, 1, 9)))
    out = CliRunner().invoke(main, ["preview", "at_risk_offer", "--customer", "C8", "--as-of", "2027-01-10",
                                    "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    msg = email.message_from_bytes((tmp_path / "at_risk_offer-C8-te.eml").read_bytes(), policy=policy.default)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    utm = "utm_source=crm&utm_medium=email&utm_campaign=at_risk_offer&utm_content=at_risk_offer"
    assert f"https://shop.example.in/p/DAL-1?{utm}" in text and f"https://shop.example.com/?{utm}" in text
    assert "కంది పప్పు 1 కిలో" in text and 'alt="కంది పప్పు 1 కిలో"' in html and "₹100.00" in text
