"""Database factories shared by the tests: profiles, purchases, first purchases and segment history,
written directly (no landing files), on either dialect."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import insert, select

from crm_tasks.campaigns.definitions import Campaign
from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.ingest import metrics
from crm_tasks.store.models import Customer, CustomerMetrics, Purchase, Segment, SegmentMembership

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def add_customers(engine, *rows: dict) -> None:
    """Profiles with defaults: consent given, a valid address, en-IN in Asia/Kolkata."""
    full = []
    for r in rows:
        cid = r["customer_id"]
        full.append({
            "first_name": "Asha", "last_name": "Rao", "email": f"{cid.lower()}@example.com", "phone": None,
            "birthday": None, "locale": "en-IN", "timezone": "Asia/Kolkata", "country": "IN",
            "email_consent": True, "attributes": {}, "created_at": T0, "updated_at": T0, "batch_id": 1, **r,
        })
    with engine.begin() as conn:
        conn.execute(insert(Customer), full)


def add_first_purchase(engine, customer_id: str, at: datetime, category: str = "grocery", orders: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(insert(CustomerMetrics).values(
            customer_id=customer_id, currency="INR", first_purchase_at=at, last_purchase_at=at, orders=orders,
            refunds=0, items=orders, revenue=Decimal(100), avg_basket=Decimal(100), favourite_category=category))


def segment_id(engine, name: str) -> int:
    with engine.begin() as conn:
        sid = conn.execute(select(Segment.id).where(Segment.name == name)).scalar()
        if sid is None:
            sid = conn.execute(insert(Segment).values(
                name=name, family="rfm" if name.startswith("rfm:") else "lifecycle", description="",
                status="active", updated_at=T0).returning(Segment.id)).scalar_one()
    return sid


def add_membership(engine, name: str, customer_id: str, valid_from: date, valid_to: date | None = None) -> None:
    sid = segment_id(engine, name)
    with engine.begin() as conn:
        conn.execute(insert(SegmentMembership).values(segment_id=sid, customer_id=customer_id,
                                                      valid_from=valid_from, valid_to=valid_to))


def campaign(**overrides) -> Campaign:
    """A birthday campaign unless told otherwise; no holdout, generous limits."""
    base = {
        "name": "birthday", "kind": "date_trigger", "template": "birthday",
        "schedule": {"cron": "0 6 * * *"},
        "trigger": {"field": "birthday", "recurrence": "yearly"},
        "holdout_share": 0.0, "max_audience": 100_000,
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return Campaign(**base)


_TIDS = iter(range(1, 10**6))


def buy(engine, customer_id: str, at: datetime, amount: str = "100", coupon: str | None = None) -> None:
    """A purchase, and that customer's metrics rebuilt from their purchases (as ingest would leave them)."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase).values(
            transaction_id=f"T{next(_TIDS)}", customer_id=customer_id, purchased_at=at, amount=Decimal(amount),
            currency="INR", store_id="S1", sku="SKU-1", category="grocery", quantity=1, coupon_code=coupon,
            batch_id=1, line_no=1))
        metrics.mark_for_rebuild(conn, {customer_id})
        metrics.refresh(conn)


def recipients(result) -> set[str]:
    """The customer ids a plan listed as recipients."""
    return {m.customer_id for m in result.sample}


def plan(engine, cfg, c, as_of, run_at=None, **kw):
    """A campaign's plan for a date, recorded nowhere unless asked, with up to 1000 recipients listed."""
    kw.setdefault("record", False)
    kw.setdefault("sample", 1000)
    return plan_campaign(engine, cfg, c, as_of, run_at, **kw)
