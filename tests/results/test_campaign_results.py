"""Campaign results from the store: attribution's rules, intention-to-treat groups, exact money, the lift
against statsmodels, refreshes that replace rather than append — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert, select, update
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from crm_tasks.messages.render import renderer_for
from crm_tasks.results.campaigns import refresh_results
from crm_tasks.results.reports import campaign_csv, campaign_report, safe_cell
from crm_tasks.store.models import Attribution, CampaignPlanRow, CampaignResult, Message
from tests.factories import add_customers, buy, campaign, plan

DAY = date(2027, 6, 1)
RUN_AT = datetime(2027, 6, 1, 3, 0, tzinfo=UTC)  # 08:30 in Kolkata: messages go at 09:00
AS_OF = date(2027, 7, 15)  # every window has closed


def _planned(engine, cfg, **overrides):
    add_customers(engine, *({"customer_id": f"C{i:03d}", "birthday": date(1990, 6, 1)} for i in range(400)))
    c = campaign(holdout_share=0.5, coupon={"type": "percent", "value": 10}, **overrides)
    result = plan(engine, cfg, c, DAY, RUN_AT, record=True, dry_run=False)
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=Message.send_at))
        plan_rows = conn.execute(select(CampaignPlanRow.customer_id, CampaignPlanRow.outcome,
                                        CampaignPlanRow.variant)).all()
        sent = {m.customer_id: m for m in conn.execute(select(Message)).all()}
    treated = sorted(c for c, o, _ in plan_rows if o == "send")
    held = sorted(c for c, o, _ in plan_rows if o == "holdout")
    return result, treated, held, sent, plan_rows


def test_attribution_rules_groups_and_money(engine, cfg):
    result, treated, held, sent, _ = _planned(engine, cfg)
    assert len(treated) > 150 and len(held) > 150
    send_at = sent[treated[0]].sent_at
    buyers_t = treated[::4]
    buyers_h = held[::8]
    for cid in buyers_t + buyers_h:
        buy(engine, cid, send_at + timedelta(days=2), "100.25")
    coupon_late, outside, refunder, early, twice = treated[1], treated[2], buyers_t[1], treated[3], treated[5]
    buy(engine, coupon_late, send_at + timedelta(days=20), "80", coupon=sent[coupon_late].coupon_code)
    buy(engine, outside, send_at + timedelta(days=7, seconds=1), "55")  # just past the 7-day window
    buy(engine, refunder, send_at + timedelta(days=3), "-30")  # a refund inside the window
    buy(engine, early, send_at - timedelta(hours=1), "40")  # before the message: nobody's
    # A later message of another campaign to the same customer takes the last touch.
    with engine.begin() as conn:
        later = send_at + timedelta(days=1)
        conn.execute(insert(Message).values(
            idempotency_key=f"other:{twice}:1", campaign="other", customer_id=twice, run_id=999_999,
            occurrence="1", state="sent", test=False, recipient="x@example.com", locale="en", template="offer",
            send_at=later, sent_at=later, context={}, created_at=later, updated_at=later))
    buy(engine, twice, send_at + timedelta(days=3), "10")

    refresh_results(engine, cfg, AS_OF)
    with engine.connect() as conn:
        attributed = {r.customer_id: r for r in conn.execute(select(Attribution)).all()}
        rows = {(r.grp, r.variant): r for r in conn.execute(select(CampaignResult)).all()}

    # The coupon wins outside any window; the last touch takes a purchase; nothing before a send or after
    # its window is attributed; the refund counts against the message.
    assert attributed[coupon_late].rule == "coupon" and attributed[coupon_late].campaign == "birthday"
    assert attributed[twice].campaign == "other" and attributed[twice].rule == "window"
    assert outside not in attributed and early not in attributed
    with engine.connect() as conn:
        refunds = conn.execute(select(Attribution.amount).where(Attribution.customer_id == refunder)).scalars().all()
    assert sorted(refunds) == [Decimal("-30"), Decimal("100.25")]

    t, h = rows[("treatment", "")], rows[("holdout", "")]
    assert (t.customers, h.customers) == (len(treated), len(held))
    assert t.messages_sent == len(treated) and h.messages_sent == 0
    # Intention to treat: every purchase in the window counts, whichever message earned it (twice's 10
    # included); the refund is no conversion, and purchases outside the window are not counted.
    assert twice not in buyers_t
    assert t.converters == len(buyers_t) + 1 and h.converters == len(buyers_h)
    assert t.revenue == Decimal("100.25") * len(buyers_t) - 30 + 10
    assert h.revenue == Decimal("100.25") * len(buyers_h)
    assert t.attributed_orders == len(buyers_t) + 1  # + the late coupon
    assert t.attributed_revenue == Decimal("100.25") * len(buyers_t) - 30 + 80
    assert t.coupons_redeemed == 1
    assert t.window_complete and t.window_end == RUN_AT + timedelta(days=7)

    # The lift's conversion figures are statsmodels' on the same counts.
    conv = t.lift["conversion"]
    _, p = proportions_ztest([t.converters, h.converters], [t.customers, h.customers])
    low, high = confint_proportions_2indep(t.converters, t.customers, h.converters, h.customers, method="wald")
    assert conv["p_value"] == pytest.approx(p, rel=1e-9)
    assert (conv["difference"]["ci_low"], conv["difference"]["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert t.lift["verdict"] in {"lift", "no_detectable_effect"}

    # The report reads the same rows; a CSV cell can never start a formula.
    report = campaign_report(engine, "birthday").to_dict()
    [run] = report["runs"]
    assert run["holdout"]["customers"] == len(held)
    assert run["treatment"][0]["lift"]["conversion"]["difference"]["ci_low"] == pytest.approx(low)
    assert "=cmd" not in campaign_csv(campaign_report(engine, "birthday"))
    assert safe_cell("=HYPERLINK(\"x\")").startswith("'=") and safe_cell("-5") == "'-5" and safe_cell("ok") == "ok"


def test_refreshing_twice_gives_identical_rows_and_a_purchase_counts_once(engine, cfg):
    _, treated, held, sent, _ = _planned(engine, cfg)
    send_at = sent[treated[0]].sent_at
    for cid in treated[:40] + held[:30]:
        buy(engine, cid, send_at + timedelta(days=1), "12.5")

    def snapshot():
        with engine.connect() as conn:
            return (sorted(tuple(r) for r in conn.execute(select(CampaignResult)).all()),
                    sorted(tuple(r) for r in conn.execute(select(Attribution)).all()))

    refresh_results(engine, cfg, AS_OF)
    first = snapshot()
    refresh_results(engine, cfg, AS_OF)
    assert snapshot() == first
    assert len({a[0] for a in first[1]}) == len(first[1]) == 40  # purchase ids: each attributed once


def test_an_open_window_counts_only_what_happened_and_says_so(engine, cfg):
    _, treated, _, sent, _ = _planned(engine, cfg)
    send_at = sent[treated[0]].sent_at
    buy(engine, treated[0], send_at + timedelta(days=1), "50")
    buy(engine, treated[1], send_at + timedelta(days=4), "70")  # after the as-of day below: not yet
    refresh_results(engine, cfg, DAY + timedelta(days=2))
    with engine.connect() as conn:
        t = conn.execute(select(CampaignResult).where(CampaignResult.grp == "treatment")).one()
    assert not t.window_complete and t.converters == 1 and t.revenue == Decimal(50)
    assert t.lift["verdict"] == "not_enough_data" and "not enough data yet" in t.lift["text"]
    assert t.lift["mde"]["conversion"] > 0


def test_variants_are_stable_weighted_and_measured_apart(engine, cfg):
    variants = [{"name": "plain", "weight": 1}, {"name": "bold", "weight": 3, "subject": {"en": "Big news, {{ customer.first_name }}"}}]
    result, treated, held, sent, plan_rows = _planned(engine, cfg, variants=variants)
    by_variant = {}
    for cid, outcome, variant in plan_rows:
        if outcome == "send":
            by_variant.setdefault(variant, []).append(cid)
        else:
            assert variant is None  # the holdout gets no variant
    assert set(by_variant) == {"plain", "bold"}
    assert 0.6 < len(by_variant["bold"]) / len(treated) < 0.9  # weight 3 of 4
    assert all(sent[c].variant == v for v, cs in by_variant.items() for c in cs)
    # Delivery renders the variant's own subject from the ledger's context; the other keeps the template's.
    renderer = renderer_for(cfg)
    bold, plain = sent[by_variant["bold"][0]], sent[by_variant["plain"][0]]
    assert renderer.render(bold.template, bold.context).subject == "Big news, Asha"
    assert "Big news" not in renderer.render(plain.template, plain.context).subject
    # A re-plan of the same date keeps each customer's variant.
    again = plan(engine, cfg, campaign(holdout_share=0.5, coupon={"type": "percent", "value": 10},
                                       variants=variants), DAY, RUN_AT, sample=1000)
    assert again.recipients == 0  # already planned: nothing new, and nobody moved
    for cid in by_variant["bold"][:60]:
        buy(engine, cid, sent[cid].sent_at + timedelta(days=1), "20")
    refresh_results(engine, cfg, AS_OF)
    with engine.connect() as conn:
        rows = {r.variant: r for r in conn.execute(select(CampaignResult).where(CampaignResult.grp == "treatment"))}
    assert rows["bold"].converters == 60 and rows["plain"].converters == 0
    assert rows["bold"].lift["win_probability"] > 0.99
    assert rows["bold"].lift["win_probability"] + rows["plain"].lift["win_probability"] == pytest.approx(1)


def test_a_targeted_coupon_earns_only_purchases_within_its_scope(engine, cfg):
    """A purchase carrying a category coupon's code on something else is not the coupon's: the recipient's falls to
    the last-touch rule, a stranger's is nobody's, and results count only the in-scope redemption."""
    from crm_tasks.ingest import metrics
    from crm_tasks.store.models import PopularRecommendation, Purchase
    from tests.recommendations.data import add_products

    add_products(engine, {"sku": "LAMP-1", "name": "Desk Lamp", "category": "home"})
    with engine.begin() as conn:
        conn.execute(insert(PopularRecommendation).values(rank=1, sku="LAMP-1", customers=9, as_of=DAY))
    add_customers(engine, *({"customer_id": cid, "birthday": date(1990, 6, 1)} for cid in ("A", "B", "C")))
    c = campaign(coupon={"type": "percent", "value": 10, "scope": "recommended_category"})
    plan(engine, cfg, c, DAY, RUN_AT, record=True)
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=Message.send_at))
        sent = {m.customer_id: m for m in conn.execute(select(Message)).all()}
    assert len(sent) == 3
    at = sent["A"].sent_at

    def buy_line(tid: str, cid: str, days: int, category: str, code: str) -> None:
        with engine.begin() as conn:
            conn.execute(insert(Purchase).values(
                transaction_id=tid, customer_id=cid, purchased_at=at + timedelta(days=days), amount=Decimal(60),
                currency="INR", store_id="S1", sku=f"{category.upper()}-1", category=category, quantity=1,
                coupon_code=code, batch_id=1, line_no=1))
            metrics.mark_for_rebuild(conn, {cid})
            metrics.refresh(conn)

    buy_line("IN", "A", 20, "home", sent["A"].coupon_code)  # in scope, after the window: the coupon's
    buy_line("OUT", "B", 2, "grocery", sent["B"].coupon_code)  # outside scope, in the window: the last touch's
    buy_line("STRANGER", "X", 3, "grocery", sent["C"].coupon_code)  # outside scope, not a recipient: nobody's
    refresh_results(engine, cfg, AS_OF)
    with engine.connect() as conn:
        attributed = {r.customer_id: r.rule for r in conn.execute(select(Attribution)).all()}
        t = conn.execute(select(CampaignResult).where(CampaignResult.grp == "treatment")).one()
    assert attributed == {"A": "coupon", "B": "window"}
    assert t.coupons_redeemed == 1 and t.attributed_orders == 2
