"""Each customer's purchase days (crm_tasks/analytics/purchase_days.py): queued by every metrics refresh,
recomputed per customer, equal to a rebuild from scratch after late, corrected and removed purchases, and
on the local calendar days of a zone with daylight saving; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select, update

from crm_tasks.analytics.purchase_days import day_number, queue_everyone, refresh_purchase_days
from crm_tasks.ingest import metrics
from crm_tasks.store.models import CustomerDay, CustomerDaysDirty, Purchase

BERLIN = ZoneInfo("Europe/Berlin")


def _add(engine, rows: list[tuple], start: int = 1) -> None:
    """(customer, UTC instant, amount, currency) purchases, and the metrics refresh ingest would run."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), [
            {"transaction_id": f"T{i}", "customer_id": cid, "purchased_at": at, "amount": Decimal(amount),
             "currency": cur, "store_id": "S1", "sku": "SKU-1", "category": "grocery", "quantity": 1,
             "coupon_code": None, "batch_id": 1, "line_no": i}
            for i, (cid, at, amount, cur) in enumerate(rows, start=start)])
        metrics.mark_for_rebuild(conn, {r[0] for r in rows})
        metrics.refresh(conn)


def _table(engine) -> dict:
    with engine.connect() as conn:
        return {(c, d, cur): (bool(first), orders, value) for c, d, cur, first, orders, value in conn.execute(
            select(CustomerDay.customer_id, CustomerDay.day, CustomerDay.currency, CustomerDay.first_day,
                   CustomerDay.orders, CustomerDay.value))}


def _expected(engine, tz: ZoneInfo) -> dict:
    """The same table from every purchase, in Python: local dates by zoneinfo, orders only."""
    days: dict = defaultdict(lambda: [0, Decimal(0)])
    with engine.connect() as conn:
        for cid, at, amount, cur in conn.execute(select(Purchase.customer_id, Purchase.purchased_at, Purchase.amount,
                                                        Purchase.currency)):
            if amount >= 0:
                cell = days[(cid, day_number(at.astimezone(tz).date()), cur)]
                cell[0] += 1
                cell[1] += amount
    first = {}
    for cid, day, _cur in days:
        first[cid] = min(first.get(cid, day), day)
    return {k: (k[1] == first[k[0]], n, v) for k, (n, v) in days.items()}


def test_a_metrics_refresh_queues_its_customers_and_the_refresh_drains_the_queue(engine, cfg):
    _add(engine, [("a", datetime(2026, 3, 1, 10, tzinfo=UTC), "10.00", "INR"),
                  ("b", datetime(2026, 3, 2, 10, tzinfo=UTC), "20.00", "INR")])
    with engine.connect() as conn:
        assert set(conn.execute(select(CustomerDaysDirty.customer_id)).scalars()) == {"a", "b"}
    assert refresh_purchase_days(engine, cfg) == 2
    assert _table(engine) == _expected(engine, ZoneInfo(cfg.timezone))
    with engine.connect() as conn:
        assert conn.execute(select(CustomerDaysDirty)).first() is None
    assert refresh_purchase_days(engine, cfg) == 0  # nothing queued: nothing read


def test_late_corrected_and_removed_purchases_equal_a_rebuild_from_scratch(engine, cfg):
    tz = ZoneInfo(cfg.timezone)
    _add(engine, [
        ("a", datetime(2026, 3, 1, 10, tzinfo=UTC), "10.00", "INR"),
        ("a", datetime(2026, 3, 1, 12, tzinfo=UTC), "5.00", "USD"),  # the same day in another currency
        ("a", datetime(2026, 3, 5, 19, tzinfo=UTC), "7.00", "INR"),  # 00:30 on 6 March in Kolkata
        ("a", datetime(2026, 3, 7, 10, tzinfo=UTC), "-3.00", "INR"),  # a refund is no purchase day
        ("b", datetime(2026, 3, 2, 10, tzinfo=UTC), "0.00", "INR"),  # a free order is one
        ("c", datetime(2026, 3, 3, 10, tzinfo=UTC), "9.00", "INR"),
    ])
    refresh_purchase_days(engine, cfg)
    first = _table(engine)
    assert first == _expected(engine, tz)
    assert first[("a", day_number(date(2026, 3, 6)), "INR")] == (False, 1, Decimal("7.00"))
    with engine.connect() as conn:  # a day bought in two currencies is counted once, on its first currency
        counted = dict(conn.execute(select(CustomerDay.currency, CustomerDay.counts_day).where(
            CustomerDay.customer_id == "a", CustomerDay.day == day_number(date(2026, 3, 1)))).all())
    assert {k: bool(v) for k, v in counted.items()} == {"INR": True, "USD": False}
    assert sorted(k for k, v in first.items() if k[0] == "a" and v[0]) == [("a", day_number(date(2026, 3, 1)), "INR"),
                                                                  ("a", day_number(date(2026, 3, 1)), "USD")]
    # A late file moves a's first day earlier; b's order is corrected; c's only order is removed.
    _add(engine, [("a", datetime(2026, 2, 1, 10, tzinfo=UTC), "1.00", "INR")], start=100)
    with engine.begin() as conn:
        conn.execute(update(Purchase).where(Purchase.customer_id == "b").values(amount=Decimal("4.25")))
        conn.execute(delete(Purchase).where(Purchase.customer_id == "c"))
        metrics.mark_for_rebuild(conn, {"b", "c"})
        metrics.refresh(conn)
    assert refresh_purchase_days(engine, cfg) == 3
    incremental = _table(engine)
    assert incremental == _expected(engine, tz)
    assert not any(k[0] == "c" for k in incremental)
    assert incremental[("a", day_number(date(2026, 3, 1)), "INR")][0] is False
    with engine.begin() as conn:
        queue_everyone(conn)
    refresh_purchase_days(engine, cfg)
    assert _table(engine) == incremental


def test_days_are_local_calendar_days_across_daylight_saving(engine, cfg):
    berlin = cfg.model_copy(update={"timezone": "Europe/Berlin"})
    instants = [
        datetime(2026, 3, 28, 23, 30, tzinfo=UTC),  # 00:30 on 29 March, before the clocks go forward (UTC+1)
        datetime(2026, 3, 29, 22, 30, tzinfo=UTC),  # 00:30 on 30 March, after (UTC+2)
        datetime(2026, 10, 24, 22, 30, tzinfo=UTC),  # 00:30 on 25 October, summer time
        datetime(2026, 10, 25, 23, 30, tzinfo=UTC),  # 00:30 on 26 October, winter time again
        datetime(2026, 10, 25, 22, 30, tzinfo=UTC),  # 23:30 on 25 October
    ]
    _add(engine, [("z", at, "1.00", "EUR") for at in instants])
    refresh_purchase_days(engine, berlin)
    got = _table(engine)
    assert got == _expected(engine, BERLIN)
    assert sorted(d for (_c, d, _cur) in got) == [day_number(date(2026, 3, 29)), day_number(date(2026, 3, 30)),
                                                  day_number(date(2026, 10, 25)), day_number(date(2026, 10, 26))]
    assert got[("z", day_number(date(2026, 10, 25)), "EUR")][1] == 2


def test_a_new_time_zone_rebuilds_every_customers_days(engine, cfg):
    # 23:30 UTC is the next day in Berlin and in Kolkata, the same day in New York.
    _add(engine, [("a", datetime(2026, 5, 4, 23, 30, tzinfo=UTC), "3.00", "EUR"),
                  ("b", datetime(2026, 5, 5, 12, 0, tzinfo=UTC), "4.00", "EUR")])
    refresh_purchase_days(engine, cfg.model_copy(update={"timezone": "Europe/Berlin"}))
    assert _table(engine) == _expected(engine, BERLIN)
    new_york = ZoneInfo("America/New_York")
    assert refresh_purchase_days(engine, cfg.model_copy(update={"timezone": "America/New_York"})) == 2
    assert _table(engine) == _expected(engine, new_york) != _expected(engine, BERLIN)
