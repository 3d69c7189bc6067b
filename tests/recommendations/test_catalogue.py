"""Recommendations when the catalogue lags the tills (crm_tasks/analytics/recommendations.py), on SQLite and
PostgreSQL: with no catalogue at all (a first load of purchases) or only part of it, a pair is counted only
where its recommended side is listed, so a shared account's basket of many unlisted products costs nothing, and
the statistics and lists still equal the independent pandas computation."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import delete, func, select

from crm_tasks.analytics.recommendations import recommendations_for, refresh_recommendations
from crm_tasks.store.models import CustomerRecommendation, Product, ProductPair
from tests.factories import add_customers
from tests.recommendations.data import T0, add_purchases, generate, reference, stored
from tests.recommendations.test_recommendations import _same_pairs

AS_OF = date(2026, 5, 1)


def _walk_in_account(engine, products: int = 120) -> None:
    """A till's walk-in customer: one profile that bought ``products`` different unlisted products, each with
    four regular customers buying two of them together (so the pairs have the minimum support)."""
    add_customers(engine, *({"customer_id": c} for c in ["WALK-IN", "R1", "R2", "R3", "R4"]))
    at = T0 + timedelta(days=100)
    rows = [("WALK-IN", f"U{i:04d}", at, "50") for i in range(products)]
    rows += [(c, s, at, "50") for c in ("R1", "R2", "R3", "R4") for s in ("U0001", "U0002")]
    add_purchases(engine, rows, start=10_000)


def test_with_no_catalogue_nothing_is_paired_or_recommended(engine, cfg):
    _walk_in_account(engine)
    result = refresh_recommendations(engine, cfg, AS_OF)
    want_pairs, want_lists = reference(engine, cfg.recommendations, cfg.timezone, AS_OF, ["WALK-IN", "R1"])
    # Before, the walk-in basket alone was 120 * 119 pair rows and U0001/U0002 a stored pair of support 5.
    assert result.pairs == 0 and len(want_pairs) == 0
    assert want_lists == {} and recommendations_for(engine, ["WALK-IN", "R1", "R2"]) == {}
    assert result.customers == 0 and result.buyers == 5
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ProductPair)).scalar_one() == 0
        # Every buyer has a list of their own that came out empty (rank 0): nothing can be recommended.
        assert conn.execute(select(func.count()).select_from(CustomerRecommendation)
                            .where(CustomerRecommendation.rank == 0)).scalar_one() == 5


def test_a_catalogue_lagging_purchases_gives_the_pandas_results(engine, cfg):
    shop = generate(engine, AS_OF)
    _walk_in_account(engine)
    with engine.begin() as conn:  # half the themes not listed yet (P00*-P03*), and the walk-in products
        conn.execute(delete(Product).where(Product.sku < "P04"))
    rules = cfg.model_copy(update={"recommendations": cfg.recommendations.model_copy(
        update={"window_days": 365, "min_support": 2, "recent_days": 30})})
    result = refresh_recommendations(engine, rules, AS_OF)
    want_pairs, want_lists = reference(engine, rules.recommendations, rules.timezone, AS_OF,
                                       shop.customers + ["WALK-IN", "R1", "R2", "R3", "R4"])
    got_pairs, got_lists = stored(engine)
    assert len(want_pairs) > 20 and result.pairs == len(want_pairs)
    assert set(want_pairs["other_sku"]) <= {s for s in got_pairs["other_sku"] if s >= "P04"}
    assert (want_pairs["sku"] < "P04").any()  # an unlisted product is still a source: "bought with P00a"
    _same_pairs(got_pairs, want_pairs)
    assert got_lists == want_lists
    assert any(line[1] == "cross_sell" and line[2] < "P04" for lines in got_lists.values() for line in lines)
