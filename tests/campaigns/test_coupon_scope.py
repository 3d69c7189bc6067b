"""Targeted coupons (``coupon.scope``): the definition, the category or product each customer's coupon is valid on
(their own recommendations, else the shop-wide list, else no coupon and a planning reason), what the e-mail says
about it in every language, and redemptions counted only within the scope — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select

from crm_tasks.campaigns.coupons import CouponScope, in_scope_sql, redemptions
from crm_tasks.campaigns.definitions import COUPON_SCOPES, parse_campaign
from crm_tasks.cli import main
from crm_tasks.errors import ConfigError
from crm_tasks.messages.render import renderer_for
from crm_tasks.store.bulk import IN_CHUNK
from crm_tasks.store.models import (
    CampaignPlanRow,
    Coupon,
    CustomerRecommendation,
    Message,
    PopularRecommendation,
    Purchase,
)
from tests.campaigns.test_definitions import CFG, _birthday
from tests.factories import add_customers, campaign, plan
from tests.helpers import statements_naming
from tests.recommendations.data import add_products

AS_OF = date(2027, 3, 10)
RUN_AT = datetime(2027, 3, 10, 3, 0, tzinfo=UTC)  # 08:30 in Kolkata: messages go at 09:00
BDAY = date(1990, 3, 10)

CATALOGUE = [
    {"sku": "TV-1", "name": "Smart TV 43 inch", "name_hi": "स्मार्ट टीवी 43 इंच", "name_te": "స్మార్ట్ టీవీ 43 అంగుళాలు",
     "name_fa": "تلویزیون هوشمند ۴۳ اینچ", "name_ur": "سمارٹ ٹی وی 43 انچ", "category": "electronics"},
    {"sku": "LAMP-1", "name": "Desk Lamp", "name_hi": None, "name_te": None, "name_fa": None, "name_ur": None,
     "category": "home"},  # no localised names: English everywhere
]


def targeted(scope: str, **overrides):
    """The birthday campaign with a 15% coupon of ``scope``."""
    return campaign(coupon={"type": "percent", "value": 15, "scope": scope}, **overrides)


def lists(engine, *, popular: bool = True, **own: list[str]) -> None:
    """Stored lists: each customer's skus, best first ([] is a list that came out empty: one line of rank 0),
    and the shop-wide list (LAMP-1, then TV-1) unless ``popular`` is false."""
    rows = []
    for cid, skus in own.items():
        lines = [(0, "", "none")] if not skus else [(rank, sku, "cross_sell") for rank, sku in enumerate(skus, 1)]
        rows += [{"customer_id": cid, "rank": rank, "sku": sku, "kind": kind, "source_sku": None, "customers": 3,
                  "score": 1.0, "as_of": date(2027, 3, 9)} for rank, sku, kind in lines]
    with engine.begin() as conn:
        if rows:
            conn.execute(insert(CustomerRecommendation), rows)
        if popular:
            conn.execute(insert(PopularRecommendation), [
                {"rank": 1, "sku": "LAMP-1", "customers": 40, "as_of": date(2027, 3, 9)},
                {"rank": 2, "sku": "TV-1", "customers": 30, "as_of": date(2027, 3, 9)}])


def shop(engine, *, popular: bool = True) -> None:
    """OWN's list starts with TV-1; POP has no list of their own (the shop-wide one starts with LAMP-1); EMPTY's
    list came out empty; GONE's first product left the catalogue since the refresh."""
    add_products(engine, *CATALOGUE)
    add_customers(engine, *({"customer_id": cid, "birthday": BDAY} for cid in ("OWN", "POP", "EMPTY", "GONE")))
    lists(engine, popular=popular, OWN=["TV-1", "LAMP-1"], EMPTY=[], GONE=["OLD-9", "TV-1"])


def coupons(engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.customer_id: (r.scope, r.scope_value)
                for r in conn.execute(select(Coupon.customer_id, Coupon.scope, Coupon.scope_value))}


def reasons(engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(CampaignPlanRow.customer_id, CampaignPlanRow.reason)).all())


# --- the definition ---------------------------------------------------------------------------------------------


def test_scope_is_any_by_default_and_each_written_scope_loads(tmp_path):
    assert parse_campaign(_birthday(tmp_path), CFG).coupon.scope == "any"
    for scope in ("any", "recommended_category", "recommended_product"):
        path = _birthday(tmp_path, **{"valid_days: 14}": f"valid_days: 14, scope: {scope}}}"})
        assert parse_campaign(path, CFG).coupon.scope == scope
    assert set(COUPON_SCOPES.values()) == {s.value for s in CouponScope}


@pytest.mark.parametrize("scope,message", [
    ("category", ("coupon.scope: 'category' is not a coupon scope; write any (every purchase, the default), "
                  "recommended_category (the category of the customer's first recommended product) or "
                  "recommended_product (that product only)")),
    ("recomended_product", ("coupon.scope: 'recomended_product' is not a coupon scope; did you mean "
                            "'recommended_product'?")),
    ("[any]", "coupon.scope: '['any']' is not a coupon scope; did you mean 'any'?"),  # a list, not a word
])
def test_a_wrong_scope_names_the_file_the_field_and_what_to_write(tmp_path, scope, message):
    with pytest.raises(ConfigError) as err:
        parse_campaign(_birthday(tmp_path, **{"valid_days: 14}": f"valid_days: 14, scope: {scope}}}"}), CFG)
    assert str(err.value).startswith("birthday.yaml: ")
    assert message in str(err.value)


# --- planning ----------------------------------------------------------------------------------------------------


def test_a_category_coupon_is_valid_on_the_first_recommendations_category_own_list_first(engine, cfg):
    shop(engine)
    result = plan(engine, cfg, targeted("recommended_category"), AS_OF, RUN_AT, record=True)
    assert result.recipients == 2 and result.reasons == {"no_recommendation": 2}
    # OWN's own list starts with a TV; POP has none, and gets the shop-wide list's first, a lamp.
    assert coupons(engine) == {"OWN": ("category", "electronics"), "POP": ("category", "home")}
    # An empty list of one's own, or a first product gone from the catalogue: nothing to target, no coupon.
    assert {c: r for c, r in reasons(engine).items() if r} == {"EMPTY": "no_recommendation",
                                                               "GONE": "no_recommendation"}
    with engine.connect() as conn:
        ctx = dict(conn.execute(select(Message.customer_id, Message.context)).all())
    assert ctx["OWN"]["coupon"]["valid_on"] == {"kind": "category", "name": "Electronics"}
    assert ctx["POP"]["coupon"]["valid_on"] == {"kind": "category", "name": "Home"}


def test_a_product_coupon_is_valid_on_the_first_recommended_product(engine, cfg):
    shop(engine)
    result = plan(engine, cfg, targeted("recommended_product"), AS_OF, RUN_AT, record=True)
    assert result.reasons == {"no_recommendation": 2}
    assert coupons(engine) == {"OWN": ("product", "TV-1"), "POP": ("product", "LAMP-1")}


def test_without_a_shop_wide_list_a_customer_without_their_own_gets_no_coupon(engine, cfg):
    shop(engine, popular=False)
    result = plan(engine, cfg, targeted("recommended_category"), AS_OF, RUN_AT, record=True)
    assert result.recipients == 1 and result.excluded == 3 and result.reasons == {"no_recommendation": 3}
    assert coupons(engine) == {"OWN": ("category", "electronics")}
    # The exclusion comes after the others: a customer without consent is counted as such.
    add_customers(engine, {"customer_id": "NOCONSENT", "birthday": BDAY, "email_consent": False})
    again = plan(engine, cfg, targeted("recommended_category"), AS_OF, RUN_AT)
    assert again.reasons == {"no_consent": 1, "no_recommendation": 3}


def test_an_unscoped_coupon_needs_no_recommendation_and_is_valid_on_anything(engine, cfg):
    shop(engine, popular=False)
    result = plan(engine, cfg, targeted("any"), AS_OF, RUN_AT, record=True)
    assert result.recipients == 4 and result.reasons == {}
    assert set(coupons(engine).values()) == {("any", None)}
    with engine.connect() as conn:
        assert all("valid_on" not in c["coupon"] for c in conn.execute(select(Message.context)).scalars())


def test_targets_are_read_in_one_query_per_batch_of_customers_never_per_customer(engine, cfg):
    add_products(engine, *CATALOGUE)
    n = IN_CHUNK + 50
    add_customers(engine, *({"customer_id": f"C{i:04d}", "birthday": BDAY} for i in range(n)))
    lists(engine, **{f"C{i:04d}": ["TV-1"] for i in range(0, n, 7)})
    with statements_naming(engine, "customer_recommendations") as reads:
        result = plan(engine, cfg, targeted("recommended_category", max_audience=10_000), AS_OF, RUN_AT)
    assert result.recipients == n and not result.reasons
    assert len(reads) == 4  # 2 chunks for the targets, 2 for the products shown


# --- the e-mail ---------------------------------------------------------------------------------------------------

# What the coupon box says, per language: the category label and the product name in that language.
SAYS = {
    "en": ("Valid on Electronics purchases only", "Valid on Smart TV 43 inch only"),
    "hi": ("केवल इलेक्ट्रॉनिक्स की खरीदारी पर मान्य", "केवल स्मार्ट टीवी 43 इंच पर मान्य"),
    "te": ("ఎలక్ట్రానిక్స్ కొనుగోళ్లపై మాత్రమే చెల్లుతుంది", "స్మార్ట్ టీవీ 43 అంగుళాలు పై మాత్రమే చెల్లుతుంది"),
    "fa": ("فقط برای خرید لوازم الکترونیکی معتبر است", "فقط برای تلویزیون هوشمند ۴۳ اینچ معتبر است"),
    "ur": ("صرف الیکٹرانکس کی خریداری پر قابلِ استعمال", "صرف سمارٹ ٹی وی 43 انچ پر قابلِ استعمال"),
}
LOCALES = {"en": "en-IN", "hi": "hi-IN", "te": "te-IN", "fa": "fa-IR", "ur": "ur-PK"}


@pytest.mark.parametrize("scope,which", [("recommended_category", 0), ("recommended_product", 1)])
def test_the_email_says_what_the_coupon_is_valid_on_in_every_language(engine, cfg, scope, which):
    add_products(engine, *CATALOGUE)
    add_customers(engine, *({"customer_id": lang.upper(), "birthday": BDAY, "locale": loc}
                            for lang, loc in LOCALES.items()))
    lists(engine, **{lang.upper(): ["TV-1"] for lang in LOCALES})
    plan(engine, cfg, targeted(scope), AS_OF, RUN_AT, record=True)
    renderer = renderer_for(cfg)
    with engine.connect() as conn:
        messages = conn.execute(select(Message.customer_id, Message.template, Message.context)).all()
    assert len(messages) == 5
    for cid, template, ctx in messages:
        lang = cid.lower()
        says = SAYS[lang][which]
        scoped = renderer.render(template, ctx)
        # Under the coupon's value, on a line (a paragraph) of its own, in both parts.
        assert f"    {says}\n" in scoped.text and says + "</p>" in scoped.html, lang
        # The same message without the scope differs by that line alone.
        unscoped = renderer.render(template, ctx | {"coupon": {k: v for k, v in ctx["coupon"].items()
                                                                if k != "valid_on"}})
        assert scoped.text.replace(f"    {says}\n", "") == unscoped.text
        assert says not in unscoped.html and len(scoped.html.splitlines()) == len(unscoped.html.splitlines()) + 1


# --- redemption ---------------------------------------------------------------------------------------------------


def _issue(conn, code: str, owner: str, scope: str = "any", value: str | None = None) -> None:
    conn.execute(insert(Coupon).values(
        code=code, idempotency_key=f"k:{code}", campaign="loyal_win_back", customer_id=owner, value=25,
        value_type="percent", currency=None, issued_on=date(2027, 1, 1), expires_on=date(2027, 1, 31), run_id=1,
        scope=scope, scope_value=value))


def _purchases(conn, *rows: tuple) -> None:
    """(transaction, customer, sku, category, amount, code) on 5 January 2027."""
    conn.execute(insert(Purchase), [
        {"transaction_id": tid, "customer_id": cid, "purchased_at": datetime(2027, 1, 5, 12, tzinfo=UTC),
         "amount": Decimal(amount), "currency": "INR", "store_id": "S1", "sku": sku, "category": category,
         "quantity": 1, "coupon_code": code, "batch_id": 1, "line_no": i}
        for i, (tid, cid, sku, category, amount, code) in enumerate(rows, 1)])


def test_only_a_purchase_within_scope_redeems_a_coupon_and_the_rest_is_outside_scope(use_settings, engine):
    with engine.begin() as conn:
        _issue(conn, "CAT2222222", "C1", "category", "electronics")
        _issue(conn, "SKU3333333", "C2", "product", "TV-1")
        _issue(conn, "ANY4444444", "C3")
        _issue(conn, "OFF5555555", "C4", "category", "home")
        _purchases(conn,
                   ("T1", "C1", "TV-2", "electronics", "900", "CAT2222222"),  # in its category: redeemed
                   ("T2", "C1", "RICE-5", "grocery", "100", "CAT2222222"),  # same code, other category: outside
                   ("T3", "C2", "TV-2", "electronics", "800", "SKU3333333"),  # right category, wrong product
                   ("T4", "C3", "RICE-5", "grocery", "50", "ANY4444444"),  # unscoped: anything redeems it
                   ("T5", "C9", "RICE-5", "grocery", "70", "OFF5555555"))  # outside, by someone else
    [row] = redemptions(engine)
    assert (row.issued, row.redeemed, row.by_other_customer, row.outside_scope) == (4, 2, 0, 3)
    assert row.revenue == {"INR": "950.0000"}  # the redeeming purchases only
    out = CliRunner().invoke(main, ["coupons", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["campaigns"][0]["outside_scope"] == 3
    text = CliRunner().invoke(main, ["coupons"])
    assert "redeemed      2 (50.0%)" in text.output and "outside scope 3" in text.output


def test_the_scope_rule_is_one_sql_condition(engine):
    """The text attribution embeds is the expression redemptions use, and it runs on both dialects."""
    with engine.begin() as conn:
        _issue(conn, "CAT2222222", "C1", "category", "electronics")
        _purchases(conn, ("T1", "C1", "TV-2", "electronics", "900", "CAT2222222"),
                   ("T2", "C1", "RICE-5", "grocery", "100", "CAT2222222"))
        matched = conn.exec_driver_sql(
            f"SELECT p.transaction_id FROM purchases p JOIN coupons c ON c.code = p.coupon_code "
            f"WHERE {in_scope_sql('c', 'p')}").scalars().all()
    assert matched == ["T1"]


# --- the migration ------------------------------------------------------------------------------------------------


def test_the_migration_downgrades_and_upgrades_keeping_the_coupons(engine):
    """0017 adds the scope; its downgrade drops it and keeps the coupons; upgrading again reads them as unscoped
    (what they were before 0017), and the schema is the models' again."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from crm_tasks.store.engine import _alembic_config, current_revision, upgrade
    from crm_tasks.store.models import Base

    with engine.begin() as conn:
        _issue(conn, "CAT2222222", "C1", "category", "electronics")
    command.downgrade(_alembic_config(engine), "0016")
    assert current_revision(engine) == "0016"
    assert {"scope", "scope_value"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("coupons"))
    upgrade(engine)
    assert coupons(engine) == {"C1": ("any", None)}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
