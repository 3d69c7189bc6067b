"""``recommended_category`` in custom segment rules: the category of each customer's first recommendation,
from the latest refresh on or before the segment's as-of date; empty without one. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from crm_tasks.analytics.recommendations import recommendations_for, refresh_recommendations
from crm_tasks.segments import compute as segments
from tests.factories import add_customers
from tests.recommendations.data import T0, add_impressions, add_products, add_purchases
from tests.recommendations.test_recommendations import AS_OF, _rules, _small_shop
from tests.segments.support import members


def test_a_rule_on_the_recommended_category_selects_by_the_first_recommendation(engine, seg_cfg):
    _small_shop(engine)
    # F bought soap alone: the dearer face cream (G's) is its up-sell, and first, as nothing complements soap.
    add_products(engine, {"sku": "CREAM", "name": "Face cream", "category": "beauty", "price": Decimal(90)})
    add_customers(engine, {"customer_id": "F"}, {"customer_id": "G"})
    add_purchases(engine, [("F", "SOAP", T0 + timedelta(days=100), "40"),
                           ("G", "CREAM", T0 + timedelta(days=100), "90")], start=100)
    cfg = _rules(seg_cfg, min_support=3, per_customer=3)
    refresh_recommendations(engine, cfg, AS_OF)
    (cfg.segments.folder / "beauty_next.yaml").write_text(
        "name: beauty_next\ndescription: first recommendation is beauty, for the test\n"
        "rule: {field: recommended_category, eq: beauty}\n")
    (cfg.segments.folder / "no_list.yaml").write_text(
        "name: no_list\ndescription: without recommendations\nrule: {field: recommended_category, is_null: true}\n")
    result = segments.recompute(engine, cfg, AS_OF)
    assert result.problems == []
    everyone = ["A", "B", "C", "D", "E", "F", "G", "NEW"]
    lists = recommendations_for(engine, everyone)
    expected = {c for c, lines in lists.items() if lines[0].category == "beauty"}
    assert expected == {"F"} and lists["F"][0].kind == "up_sell"
    assert members(engine, "beauty_next") == expected
    assert members(engine, "no_list") == set()

    # Looking back before the refresh: the lists are not seen yet, so the field is empty for everyone.
    segments.recompute(engine, cfg, AS_OF - timedelta(days=1))
    assert members(engine, "beauty_next") == set()
    assert members(engine, "no_list") == set(everyone)


def test_the_field_is_described_for_marketing(cfg):
    assert segments.rule_fields(cfg)["recommended_category"].type == "text"


def test_the_shop_wide_list_stands_in_for_a_customer_without_one_and_an_empty_list_stays_empty(engine, seg_cfg):
    _small_shop(engine)
    add_customers(engine, {"customer_id": "Z"})
    # E bought rice and was shown everything else in stock: its list is empty, and stays so in the rules.
    add_impressions(engine, [("E", s, AS_OF - timedelta(days=1)) for s in ("DAL", "TEA", "RICE-XL", "SOAP")])
    cfg = _rules(seg_cfg, min_support=3, per_customer=3, recent_days=30)
    refresh_recommendations(engine, cfg, AS_OF)
    (cfg.segments.folder / "grocery_next.yaml").write_text(
        "name: grocery_next\ndescription: first recommendation is grocery, for the test\n"
        "rule: {field: recommended_category, eq: grocery}\n")
    (cfg.segments.folder / "no_list.yaml").write_text(
        "name: no_list\ndescription: without recommendations\nrule: {field: recommended_category, is_null: true}\n")
    assert segments.recompute(engine, cfg, AS_OF).problems == []
    everyone = ["A", "B", "C", "D", "E", "NEW", "Z"]
    lists = recommendations_for(engine, everyone)
    expected = {c for c, lines in lists.items() if lines[0].category == "grocery"}
    assert {"NEW", "Z"} <= expected  # neither has a line of its own: the best sellers' first, rice, is grocery
    assert members(engine, "grocery_next") == expected
    assert members(engine, "no_list") == {"E"} == set(everyone) - set(lists)
