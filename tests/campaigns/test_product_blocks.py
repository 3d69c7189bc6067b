"""Product blocks in planned messages: each customer's stored recommendations (read in one query per batch of
customers), the best sellers of their favourite category for a customer without a list, links with the
campaign's UTM parameters that survive click tracking, and the products shown recorded as impressions. On
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import insert, select

from crm_tasks.store.bulk import IN_CHUNK
from crm_tasks.store.models import CustomerRecommendation, Message, Purchase, RecommendationImpression
from tests.delivery.test_clicks import AS_OF, BASE, RUN_AT, app_client, hrefs, send, tracked
from tests.factories import add_customers, add_first_purchase, campaign, plan
from tests.helpers import statements_naming
from tests.recommendations.data import add_products

CATALOGUE = [
    {"sku": "RICE-5", "name": "Basmati Rice 5 kg", "name_hi": "बासमती चावल 5 किलो", "price": Decimal("649.00"),
     "url": "https://shop.example.in/p/RICE-5"},
    {"sku": "DAL-1", "name": "Toor Dal 1 kg", "name_hi": "तूर दाल 1 किलो", "price": Decimal("189.00"),
     "url": "https://shop.example.in/p/DAL-1?pack=1"},
    {"sku": "GHEE-1", "name": "Cow Ghee 1 l", "name_hi": None, "price": Decimal("1299.50")},
    {"sku": "TEA-1", "name": "Assam Tea 500 g", "name_hi": None, "price": Decimal("149999.00")},
    {"sku": "OIL-1", "name": "Groundnut Oil 1 l", "name_hi": None, "price": Decimal("210.00"), "in_stock": False},
]


def stored(engine, customer_id: str, *lines: tuple) -> None:
    """A customer's stored list: (sku, kind, source_sku, customers), best first."""
    with engine.begin() as conn:
        conn.execute(insert(CustomerRecommendation), [
            {"customer_id": customer_id, "rank": rank, "sku": sku, "kind": kind, "source_sku": source,
             "customers": n, "score": 1.0, "as_of": date(2026, 5, 9)}
            for rank, (sku, kind, source, n) in enumerate(lines, 1)])


def bought(engine, rows: list[tuple]) -> None:
    """(customer, sku) grocery purchases in the month before AS_OF."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), [
            {"transaction_id": f"T{i}", "customer_id": cid, "purchased_at": datetime(2026, 4, 20, 10, tzinfo=UTC),
             "amount": Decimal(100), "currency": "INR", "store_id": "S1", "sku": sku, "category": "grocery",
             "quantity": 1, "coupon_code": None, "batch_id": 1, "line_no": i}
            for i, (cid, sku) in enumerate(rows, 1)])


def shop(engine) -> None:
    """LIST (Hindi) has a stored list; NEW (no list yet) buys grocery, whose best sellers by buyers are
    TEA-1 (3), GHEE-1 (2), then OIL-1 (out of stock) and MISSING-1 (not in the catalogue), both left out."""
    add_products(engine, *CATALOGUE)
    add_customers(engine, {"customer_id": "LIST", "locale": "hi-IN", "birthday": date(1990, 5, 10)},
                  {"customer_id": "NEW", "birthday": date(1991, 5, 10)})
    add_first_purchase(engine, "NEW", datetime(2026, 4, 1, tzinfo=UTC), category="grocery")
    stored(engine, "LIST", ("DAL-1", "cross_sell", "RICE-5", 42), ("GHEE-1", "up_sell", "RICE-5", 7),
           ("TEA-1", "popular", None, 1), ("RICE-5", "popular", None, 9))
    bought(engine, [("X1", "TEA-1"), ("X2", "TEA-1"), ("X3", "TEA-1"), ("X1", "GHEE-1"), ("X2", "GHEE-1"),
                    ("X1", "OIL-1"), ("X2", "OIL-1"), ("X3", "OIL-1"), ("X4", "OIL-1"), ("X1", "MISSING-1"),
                    ("X2", "MISSING-1"), ("X3", "MISSING-1"), ("X4", "MISSING-1"), ("X5", "MISSING-1")])


def contexts(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Message.customer_id, Message.context)).all())


def utm(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items() if k.startswith("utm_")}


def test_a_stored_list_is_shown_in_the_customers_language_and_the_rest_get_their_categorys_best_sellers(engine, cfg):
    shop(engine)
    result = plan(engine, cfg, campaign(), AS_OF, RUN_AT, record=True)
    assert result.recipients == 2
    ctx = contexts(engine)
    listed = ctx["LIST"]["customer"]["recommendations"]
    assert [p["sku"] for p in listed] == ["DAL-1", "GHEE-1", "TEA-1"]  # the first 3 of the stored list, in order
    assert [p["name"] for p in listed] == ["तूर दाल 1 किलो", "Cow Ghee 1 l", "Assam Tea 500 g"]  # Hindi, else default
    assert [p["price"] for p in listed] == ["₹189.00", "₹1,299.50", "₹1,49,999.00"]  # hi-IN groups lakhs
    assert listed[0]["reason"] == "42 ग्राहकों ने इसे बासमती चावल 5 किलो के साथ खरीदा"  # the source in Hindi too
    assert listed[2]["reason"] == "सबसे ज़्यादा बिकने वाला, 1 ग्राहक ने खरीदा" and listed[0]["category"] == "किराना"
    assert listed[0]["url"].startswith("https://shop.example.in/p/DAL-1?pack=1&utm_source=crm&")
    assert listed[0]["image_url"] == "https://cdn.example.in/DAL-1.jpg"
    new = ctx["NEW"]["customer"]["recommendations"]
    assert [(p["sku"], p["reason"]) for p in new] == [("TEA-1", "A best seller, bought by 3 customers"),
                                                      ("GHEE-1", "A best seller, bought by 2 customers")]
    for c in ctx.values():
        assert utm(c["shop_url"]) == {"utm_source": "crm", "utm_medium": "email", "utm_campaign": "birthday",
                                      "utm_content": "birthday"}
        assert all(utm(p["url"]) == utm(c["shop_url"]) for p in c["customer"]["recommendations"])


def test_the_products_shown_are_recorded_so_that_the_next_refresh_leaves_them_out(engine, cfg):
    shop(engine)
    plan(engine, cfg, campaign(), AS_OF, RUN_AT, record=True, dry_run=True)
    plan(engine, cfg, campaign(), AS_OF, RUN_AT, record=True, test_recipient="qa@example.org")

    def impressions():
        with engine.connect() as conn:
            return set(conn.execute(select(RecommendationImpression.customer_id, RecommendationImpression.sku,
                                           RecommendationImpression.shown_on)).all())

    assert impressions() == set()  # neither a dry run nor a test shows anything to a customer
    plan(engine, cfg, campaign(), AS_OF, RUN_AT, record=True)
    expected = {("LIST", "DAL-1", AS_OF), ("LIST", "GHEE-1", AS_OF), ("LIST", "TEA-1", AS_OF),
                ("NEW", "TEA-1", AS_OF), ("NEW", "GHEE-1", AS_OF)}
    assert impressions() == expected
    plan(engine, cfg, campaign(), AS_OF, RUN_AT, record=True)  # the same date planned again
    assert impressions() == expected


def test_stored_lists_are_read_in_one_query_per_batch_of_customers_never_per_customer(engine, cfg):
    add_products(engine, *CATALOGUE)
    n = IN_CHUNK + 50
    add_customers(engine, *({"customer_id": f"C{i:04d}", "birthday": date(1990, 5, 10)} for i in range(n)))
    for i in range(0, n, 7):
        stored(engine, f"C{i:04d}", ("DAL-1", "popular", None, 5))
    with statements_naming(engine, "customer_recommendations") as reads:
        result = plan(engine, cfg, campaign(), AS_OF, RUN_AT)
    assert result.recipients == n
    assert len(reads) == 2  # IN_CHUNK customers a query


def test_an_ab_variant_is_the_utm_content_of_its_messages(engine, cfg):
    shop(engine)
    c = campaign(variants=[{"name": "warm", "weight": 1}, {"name": "short", "weight": 1}])
    plan(engine, cfg, c, AS_OF, RUN_AT, record=True)
    with engine.connect() as conn:
        rows = conn.execute(select(Message.variant, Message.context)).all()
    assert {v for v, _ in rows} <= {"warm", "short"} and len(rows) == 2
    for variant, ctx in rows:
        assert utm(ctx["shop_url"])["utm_content"] == variant
        assert {utm(p["url"])["utm_content"] for p in ctx["customer"]["recommendations"]} == {variant}


def test_product_and_shop_links_are_tracked_and_redirect_to_their_urls_with_the_utm_parameters(engine, cfg):
    """End to end: planned, sent through a real SMTP server with click tracking on, each tracked link followed
    through the public app."""
    assert cfg.campaigns.tracking.clicks
    shop(engine)
    received = send(engine, cfg)
    assert len(received) == 2
    ctx = contexts(engine)
    client = app_client(engine, cfg)
    for msg in received:
        customer = "LIST" if "LIST" in msg["to"].addresses[0].addr_spec.upper() else "NEW"
        c = ctx[customer]
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        # The shop's call to action, then each product's image and its "View product" link, in order.
        expected = [c["shop_url"]] + [p["url"] for p in c["customer"]["recommendations"] for _ in range(2)]
        paths = tracked(html)
        assert len(paths) == len(expected) >= 5
        for path, url in zip(paths, expected, strict=True):
            done = client.get(path)
            assert done.status_code == 302 and done.headers["location"] == url
            assert utm(done.headers["location"]) == utm(c["shop_url"]) and utm(url)["utm_medium"] == "email"
        assert c["unsubscribe_url"] in hrefs(html)  # direct, never tracked
        assert all(p["url"] in text for p in c["customer"]["recommendations"])  # the text part: plain links
        assert BASE + "/r/" not in text
