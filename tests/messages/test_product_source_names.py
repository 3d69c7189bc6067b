"""The reason a product is shown names the product it comes from in the customer's language (the catalogue's
name_<language>), falling back to its default name (crm_tasks/messages/render.py product blocks, fed by
crm_tasks/analytics/recommendations.py's lists), on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

from babel import Locale

from crm_tasks.analytics.recommendations import recommendations_for, refresh_recommendations
from crm_tasks.messages.preview import SAMPLE_PRODUCTS
from crm_tasks.messages.render import product_block, renderer_for
from crm_tasks.settings import load_settings
from tests.factories import add_customers
from tests.recommendations.data import T0, add_products, add_purchases

REPO_CFG = load_settings()
UTM = {"source": "crm", "campaign": "birthday", "content": "product"}


def _block(item, lang: str, locale: str) -> dict:
    renderer = renderer_for(REPO_CFG)
    return product_block(item, lang=lang, loc=Locale.parse(locale), labels=renderer.labels(lang, "category."),
                         texts=renderer.labels(lang, "product."), utm=UTM)


def test_the_source_is_named_in_the_messages_language_else_by_its_default_name():
    cross = SAMPLE_PRODUCTS[0]  # bought with Basmati Rice 5 kg, named in te, fa and ur, not in hi
    assert _block(cross, "fa", "fa_IR")["reason"] == "42 مشتری این کالا را همراه با برنج باسماتی ۵ کیلو خریده‌اند"
    assert _block(cross, "ur", "ur_PK")["reason"] == "42 گاہکوں نے اسے باسمتی چاول 5 کلو کے ساتھ خریدا"
    assert _block(cross, "te", "te_IN")["reason"].startswith("42 మంది కస్టమర్లు దీన్ని బాస్మతి బియ్యం 5 కిలో ")
    assert _block(cross, "hi", "hi_IN")["reason"] == "42 ग्राहकों ने इसे Basmati Rice 5 kg के साथ खरीदा"
    assert _block(cross, "en", "en_IN")["reason"] == "Bought with Basmati Rice 5 kg by 42 customers"
    up = replace(SAMPLE_PRODUCTS[1], source_names={"fa": "هدفون"})  # an up-sell's reference too
    assert "یک پله بالاتر از هدفون" in _block(up, "fa", "fa_IR")["reason"]
    assert _block(up, "ur", "ur_PK")["reason"].startswith("Earbuds سے ایک درجہ بہتر")


def test_stored_lists_carry_the_catalogues_names_of_the_source(engine, cfg):
    add_products(engine,
                 {"sku": "RICE", "name": "Basmati rice", "name_fa": "برنج باسماتی", "name_hi": "बासमती चावल",
                  "price": Decimal(400)},
                 {"sku": "DAL", "name": "Toor dal", "name_fa": "عدس زرد", "name_hi": None, "price": Decimal(150)})
    add_customers(engine, *({"customer_id": c} for c in ("A", "B", "C", "E")))
    at = T0 + timedelta(days=100)
    add_purchases(engine, [(c, s, at, "100") for c in ("A", "B", "C") for s in ("RICE", "DAL")]
                  + [("E", "RICE", at, "400"), ("E", "UNLISTED", at, "10")])
    refresh_recommendations(engine, cfg, date(2026, 5, 1))
    dal = recommendations_for(engine, ["E"])["E"][0]
    assert (dal.sku, dal.kind, dal.source_sku) == ("DAL", "cross_sell", "RICE")
    assert dal.source_names == {"fa": "برنج باسماتی", "hi": "बासमती चावल"}
    assert dal.source_name_in("fa") == "برنج باسماتی" and dal.source_name_in("te") == "Basmati rice"
    assert _block(dal, "fa", "fa_IR")["reason"] == "3 مشتری این کالا را همراه با برنج باسماتی خریده‌اند"
    assert _block(dal, "hi", "hi_IN")["reason"] == "3 ग्राहकों ने इसे बासमती चावल के साथ खरीदा"
    assert _block(dal, "te", "te_IN")["reason"].startswith("3 మంది కస్టమర్లు దీన్ని Basmati rice ")
