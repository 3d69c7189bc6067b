"""Nightly recommendations (crm_tasks/analytics/recommendations.py) on SQLite and PostgreSQL: the co-purchase
statistics and every customer's list equal an independent pandas computation on generated data; out-of-stock,
already bought and recently shown products are never recommended; customers without orders get the best
sellers; the minimum support holds; re-running a date replaces its results."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from crm_tasks.analytics.recommendations import reason, recommendations_for, refresh_recommendations
from crm_tasks.store.models import (
    CustomerRecommendation,
    PopularRecommendation,
    ProductPair,
    RecommendationRun,
)
from tests.factories import add_customers
from tests.recommendations.data import (
    T0,
    add_impressions,
    add_products,
    add_purchases,
    generate,
    reference,
    stored,
)

AS_OF = date(2026, 5, 1)


def _rules(cfg, **kw):
    return cfg.model_copy(update={"recommendations": cfg.recommendations.model_copy(update=kw)})


def _same_pairs(got, want) -> None:
    key = ["sku", "other_sku"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    assert got[key].values.tolist() == want[key].values.tolist()
    assert got["support"].tolist() == want["support"].tolist()
    assert got["confidence"].tolist() == pytest.approx(want["confidence"].tolist(), rel=1e-12)
    assert got["lift"].tolist() == pytest.approx(want["lift"].tolist(), rel=1e-12)


@pytest.mark.parametrize("settings", [
    {"window_days": 100, "min_support": 3, "per_customer": 10, "up_sell": 1, "pool": 20, "recent_days": 30},
    {"window_days": 365, "min_support": 2, "per_customer": 4, "up_sell": 2, "pool": 3, "recent_days": 0},
], ids=["defaults-short-window", "small-pool-two-upsells"])
def test_statistics_and_lists_equal_an_independent_pandas_computation(engine, cfg, settings):
    cfg = _rules(cfg, **settings)
    shop = generate(engine, AS_OF)
    result = refresh_recommendations(engine, cfg, AS_OF)
    want_pairs, want_lists = reference(engine, cfg.recommendations, cfg.timezone, AS_OF, shop.customers)
    got_pairs, got_lists = stored(engine)
    assert len(want_pairs) > 20  # the generated themes do co-occur
    _same_pairs(got_pairs, want_pairs)
    assert got_lists == want_lists
    kinds = {k for lines in want_lists.values() for _, k, _, _ in lines}
    assert kinds == {"cross_sell", "up_sell", "popular"}  # every branch of the spec was exercised
    assert result.pairs == len(want_pairs) and result.customers == len(want_lists)
    assert result.by_kind == {k: sum(1 for v in want_lists.values() for line in v if line[1] == k)
                              for k in ("cross_sell", "up_sell", "popular")}
    assert result.short_lists == sum(1 for v in want_lists.values() if len(v) < settings["per_customer"])


@pytest.mark.parametrize("settings", [
    {"per_customer": 6, "up_sell": 2, "pool": 6},
    {"per_customer": 2, "up_sell": 1, "pool": 20},
], ids=["two-upsells", "short-lists-long-pool"])
def test_the_candidates_read_are_bounded_without_changing_a_list(engine, cfg, settings):
    # The refresh reads each reference's first up_sell steps up, and the further ones only where one of those was
    # shown or a cross-sell (recent impressions make such steps here); and each basket line's first
    # per_customer + bought - 1 + shown complements (short lists from a long pool cut most lines).
    cfg = _rules(cfg, window_days=100, min_support=2, recent_days=30, **settings)
    shop = generate(engine, AS_OF)
    refresh_recommendations(engine, cfg, AS_OF)
    _, want_lists = reference(engine, cfg.recommendations, cfg.timezone, AS_OF, shop.customers)
    assert stored(engine)[1] == want_lists
    assert sum(1 for v in want_lists.values() for line in v if line[1] == "up_sell") > 20


def test_rerunning_a_date_replaces_its_results(engine, cfg):
    generate(engine, AS_OF)
    first = refresh_recommendations(engine, cfg, AS_OF)
    before = stored(engine)
    refresh_recommendations(engine, cfg, AS_OF - timedelta(days=40))  # another date in between
    again = refresh_recommendations(engine, cfg, AS_OF)
    after = stored(engine)
    assert after[1] == before[1]
    _same_pairs(after[0], before[0])
    assert (again.pairs, again.customers, again.by_kind) == (first.pairs, first.customers, first.by_kind)
    with engine.connect() as conn:
        assert set(conn.execute(select(ProductPair.as_of)).scalars()) == {AS_OF}
        assert set(conn.execute(select(CustomerRecommendation.as_of)).scalars()) == {AS_OF}
        runs = conn.execute(select(RecommendationRun.as_of, RecommendationRun.pairs)).all()
    assert sorted(runs) == [(AS_OF - timedelta(days=40), runs[0][1] if runs[0][0] != AS_OF else runs[1][1]),
                            (AS_OF, first.pairs)]


def test_the_lists_keep_their_primary_key(engine, cfg):
    # PostgreSQL writes the lists without their key and builds it once at the end (sql.key_built_after): it must be
    # there again, as the migration made it, and hold.
    generate(engine, AS_OF)
    with engine.connect() as conn:
        key = inspect(conn).get_pk_constraint("customer_recommendations")
    refresh_recommendations(engine, cfg, AS_OF)
    with engine.connect() as conn:
        assert inspect(conn).get_pk_constraint("customer_recommendations") == key
        assert key["constrained_columns"] == ["customer_id", "rank"]
        line = conn.execute(select(CustomerRecommendation).limit(1)).one()._mapping
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(CustomerRecommendation).values(**dict(line)))


def _small_shop(engine) -> None:
    """Rice is bought with dal by 3 customers and with ghee (out of stock) by 3; tea with rice by only 2."""
    add_products(engine,
                 {"sku": "RICE", "name": "Basmati rice", "price": Decimal(400)},
                 {"sku": "DAL", "name": "Toor dal", "price": Decimal(150)},
                 {"sku": "GHEE", "name": "Ghee", "price": Decimal(600), "in_stock": False},
                 {"sku": "TEA", "name": "Assam tea", "price": Decimal(250)},
                 {"sku": "RICE-XL", "name": "Basmati rice 10 kg", "price": Decimal(750)},
                 {"sku": "SOAP", "name": "Soap", "category": "beauty", "price": Decimal(40)})
    add_customers(engine, *({"customer_id": c} for c in ("A", "B", "C", "D", "E", "NEW")))
    at = T0 + timedelta(days=100)
    add_purchases(engine, [
        ("A", "RICE", at, "400"), ("A", "DAL", at, "150"), ("A", "GHEE", at, "600"), ("A", "TEA", at, "250"),
        ("B", "RICE", at, "400"), ("B", "DAL", at, "150"), ("B", "GHEE", at, "600"), ("B", "TEA", at, "250"),
        ("C", "RICE", at, "400"), ("C", "DAL", at, "150"), ("C", "GHEE", at, "600"),
        ("D", "RICE", at, "400"), ("D", "SOAP", at, "40"), ("D", "RICE-XL", at, "750"),
        ("E", "RICE", at, "400"),
    ])


def _lists(engine) -> dict:
    """Every profiled customer's list as (sku, kind, source_sku, customers), as ``recommendations_for`` reads it."""
    return stored(engine)[1]


def _rows(engine) -> dict:
    """The lines stored per customer in customer_recommendations, as (rank, sku, kind)."""
    with engine.connect() as conn:
        rows = conn.execute(select(CustomerRecommendation.customer_id, CustomerRecommendation.rank,
                                   CustomerRecommendation.sku, CustomerRecommendation.kind)
                            .order_by(CustomerRecommendation.customer_id, CustomerRecommendation.rank)).all()
    out: dict = {}
    for cid, *line in rows:
        out.setdefault(cid, []).append(tuple(line))
    return out


def test_edge_cases_out_of_stock_bought_no_history_and_minimum_support(engine, cfg):
    _small_shop(engine)
    refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3, up_sell=1), AS_OF)
    got = _lists(engine)
    with engine.connect() as conn:
        pairs = {(a, b): n for a, b, n in conn.execute(select(ProductPair.sku, ProductPair.other_sku,
                                                              ProductPair.support))}
    assert ("RICE", "TEA") not in pairs and pairs[("RICE", "DAL")] == 3  # support 2 < 3: noise, not a pair
    assert pairs[("RICE", "GHEE")] == 3  # the statistics keep it; the lists never offer it (out of stock)
    assert all(sku != "GHEE" for lines in got.values() for sku, *_ in lines)
    # E bought rice: dal is its complement (3 of the 5 rice buyers); the dearer rice is an up-sell.
    assert got["E"] == [("DAL", "cross_sell", "RICE", 3), ("RICE-XL", "up_sell", "RICE", 1),
                        ("TEA", "popular", None, 2)]
    # A bought everything in stock but the big bag and soap: nothing it bought comes back.
    assert {s for s, *_ in got["A"]} == {"RICE-XL", "SOAP"}
    # A customer without orders gets the best sellers in stock, most bought first.
    assert got["NEW"] == [("RICE", "popular", None, 5), ("DAL", "popular", None, 3), ("TEA", "popular", None, 2)]
    refresh_recommendations(engine, _rules(cfg, min_support=2, per_customer=3, up_sell=1), AS_OF)
    assert _lists(engine)["E"][:2] == [("DAL", "cross_sell", "RICE", 3), ("TEA", "cross_sell", "RICE", 2)]


def test_recently_shown_products_wait_recent_days(engine, cfg):
    _small_shop(engine)
    add_impressions(engine, [("E", "DAL", AS_OF - timedelta(days=2)), ("NEW", "RICE", AS_OF - timedelta(days=30))])
    refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3, recent_days=30), AS_OF)
    got = _lists(engine)
    assert "DAL" not in {s for s, *_ in got["E"]}
    assert got["NEW"][0][0] == "RICE"  # shown 30 days ago: due again
    refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3, recent_days=31), AS_OF)
    assert "RICE" not in {s for s, *_ in _lists(engine)["NEW"]}


def test_each_recommendation_says_why_in_a_sentence(engine, cfg):
    _small_shop(engine)
    refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3), AS_OF)
    lines = recommendations_for(engine, ["E", "NEW", "NOBODY"])
    assert set(lines) == {"E", "NEW"}
    e = lines["E"]
    assert [r.sku for r in e] == ["DAL", "RICE-XL", "TEA"]
    assert e[0].name == "Toor dal" and e[0].price == Decimal(150) and e[0].url.startswith("https://")
    assert [r.reason for r in e] == ["bought with Basmati rice by 3 customers",
                                     "a step up from Basmati rice, bought by 1 customer",
                                     "a best seller, bought by 2 customers"]
    assert reason("cross_sell", "X", 1) == "bought with X by 1 customer"
    assert [r.reason for r in lines["NEW"]] == ["a best seller, bought by 5 customers",
                                                "a best seller, bought by 3 customers",
                                                "a best seller, bought by 2 customers"]
    assert lines["NEW"][0].customer_id == "NEW" and lines["NEW"][0].name == "Basmati rice"
    with engine.connect() as conn:  # the buyers' lists are written out, the shop-wide one once
        assert conn.execute(select(func.count()).select_from(CustomerRecommendation)).scalar_one() == sum(
            len(v) for v in recommendations_for(engine, ["A", "B", "C", "D", "E"]).values())


def test_the_best_sellers_list_is_stored_once_and_stands_in_for_every_customer_without_a_list(engine, cfg):
    _small_shop(engine)
    add_customers(engine, *({"customer_id": f"Z{i}"} for i in range(5)))
    add_impressions(engine, [("Z0", "DAL", AS_OF - timedelta(days=2))])
    result = refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3, recent_days=30), AS_OF)
    rows = _rows(engine)
    # Buyers, and Z0 (shown dal recently: its best sellers skip it), have lines; NEW and Z1-Z4 none.
    assert set(rows) == {"A", "B", "C", "D", "E", "Z0"}
    assert [s for _, s, _ in rows["Z0"]] == ["RICE", "TEA", "RICE-XL"]
    with engine.connect() as conn:
        shop = conn.execute(select(PopularRecommendation.rank, PopularRecommendation.sku,
                                   PopularRecommendation.customers, PopularRecommendation.as_of)
                            .order_by(PopularRecommendation.rank)).all()
    assert shop == [(1, "RICE", 5, AS_OF), (2, "DAL", 3, AS_OF), (3, "TEA", 2, AS_OF)]
    lists = _lists(engine)
    for cid in ("NEW", "Z1", "Z4"):
        assert lists[cid] == [("RICE", "popular", None, 5), ("DAL", "popular", None, 3), ("TEA", "popular", None, 2)]
    # The run's sizes count the shop-wide list once per customer it stands in for, as if written out.
    assert result.customers == len(lists) == 11
    assert result.by_kind["popular"] == sum(1 for v in lists.values() for line in v if line[1] == "popular")
    # A profile loaded after the refresh has the best sellers too; an unknown id has nothing.
    add_customers(engine, {"customer_id": "LATE"})
    got = recommendations_for(engine, ["LATE", "NOBODY"])
    assert set(got) == {"LATE"} and [r.sku for r in got["LATE"]] == ["RICE", "DAL", "TEA"]
    assert [r.rank for r in got["LATE"]] == [1, 2, 3] and got["LATE"][0].kind == "popular"


def test_a_customer_whose_every_candidate_is_excluded_has_no_list_not_the_best_sellers(engine, cfg):
    _small_shop(engine)
    # E bought rice and was shown everything else in stock: nothing is left for it, and the best sellers (which it
    # bought or was shown) must not stand in for its empty list.
    add_impressions(engine, [("E", s, AS_OF - timedelta(days=1)) for s in ("DAL", "TEA", "RICE-XL", "SOAP")])
    result = refresh_recommendations(engine, _rules(cfg, min_support=3, per_customer=3, recent_days=30), AS_OF)
    assert _rows(engine)["E"] == [(0, "", "none")]
    lists = _lists(engine)
    assert "E" not in lists and "NEW" in lists
    assert recommendations_for(engine, ["E"]) == {}
    assert result.customers == len(lists) and result.by_kind["popular"] == sum(
        1 for v in lists.values() for line in v if line[1] == "popular")
