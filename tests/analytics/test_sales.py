"""The sales cube equals a full recomputation from purchases — after new nights, late files, corrections,
replaced rows and moved first orders — and only changed days are recomputed; business days follow the
time zone across daylight saving; reports roll weeks and months up exactly. SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, insert, select

from crm_tasks.analytics.sales import EPOCH, day_number_sql, refresh_sales, sales_report
from crm_tasks.ingest import metrics
from crm_tasks.store import sql
from crm_tasks.store.models import Purchase, SalesDaily
from crm_tasks.store.types import UtcDateTime

TZ = "Asia/Kolkata"
_IDS = iter(range(1, 10**7))


def _buy(engine, rows: list[tuple]) -> None:
    """(customer, instant, amount, currency, store, category, quantity) purchases, and their metrics rebuilt."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), [
            {"transaction_id": f"T{next(_IDS)}", "customer_id": c, "purchased_at": at, "amount": Decimal(a),
             "currency": cur, "store_id": st, "sku": "SKU-1", "category": cat, "quantity": q, "coupon_code": None,
             "batch_id": 1, "line_no": 1} for c, at, a, cur, st, cat, q in rows])
        metrics.mark_for_rebuild(conn, {r[0] for r in rows})
        metrics.refresh(conn)


def _recomputed(engine) -> dict:
    """The cube, recomputed here from every purchase (Python, zoneinfo): the reference."""
    with engine.connect() as conn:
        purchases = conn.execute(select(Purchase.customer_id, Purchase.purchased_at, Purchase.amount,
                                        Purchase.currency, Purchase.store_id, Purchase.category,
                                        Purchase.quantity)).all()
    zone = ZoneInfo(TZ)
    first: dict[str, date] = {}
    for c, at, a, *_ in purchases:
        if a >= 0:
            d = at.astimezone(zone).date()
            first[c] = min(first.get(c, d), d)
    cells: dict = defaultdict(lambda: {"orders": 0, "refunds": 0, "items": 0, "revenue": Decimal(0),
                                       "refunded": Decimal(0), "buyers": set(), "new": set()})
    for c, at, a, cur, st, cat, q in purchases:
        d = at.astimezone(zone).date()
        cell = cells[(d, st, cat, cur)]
        cell["revenue"] += a
        if a >= 0:
            cell["orders"] += 1
            cell["items"] += q
            cell["buyers"].add(c)
            if first[c] == d:
                cell["new"].add(c)
        else:
            cell["refunds"] += 1
            cell["refunded"] -= a
    return {k: (v["orders"], v["refunds"], v["items"], v["revenue"], v["refunded"], len(v["buyers"]), len(v["new"]))
            for k, v in cells.items()}


def _cube(engine) -> dict:
    with engine.connect() as conn:
        return {(r.day, r.store_id, r.category, r.currency): (r.orders, r.refunds, r.items, r.revenue, r.refunded,
                                                              r.buyers, r.new_buyers)
                for r in conn.execute(select(SalesDaily)).all()}


def _t(day: int, hour: float) -> datetime:
    return datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=day, hours=hour)


def test_the_cube_equals_a_recomputation_through_late_files_corrections_and_moved_first_orders(engine, cfg):
    rows = []
    for i in range(60):
        c = f"C{i % 17:02d}"
        rows.append((c, _t(i % 9, 18.4 + (i % 3) * 0.1), f"{10 + i}.25", "INR" if i % 4 else "PKR",
                     f"S{i % 3}", ("grocery", "toys")[i % 2], 1 + i % 3))
    rows += [("C01", _t(2, 5), "-7.50", "INR", "S1", "toys", 1), ("C99", _t(3, 6), "-3", "INR", "S0", "toys", 1)]
    _buy(engine, rows)
    as_of = date(2026, 3, 12)
    first = refresh_sales(engine, cfg, as_of)
    reference = _recomputed(engine)
    assert _cube(engine) == reference
    # 18:24 UTC is still the day in Kolkata, 18:30 the next one; every local day was computed.
    assert {d for d, *_ in reference} == {d for d, *_ in _cube(engine)} and len({d for d, *_ in reference}) == 7
    assert refresh_sales(engine, cfg, as_of).changed == 0  # nothing new: nothing recomputed

    # A late file with purchases of an old day, a customer's first order moved a week back (it changes
    # that customer's "new" day elsewhere), and a corrected file: rows of one day replaced.
    _buy(engine, [("C05", _t(1, 3), "99.99", "INR", "S2", "toys", 2), ("NEW", _t(0, 4), "5", "INR", "S0", "toys", 1),
                  ("C03", _t(-7, 4), "1", "INR", "S0", "grocery", 1)])
    with engine.begin() as conn:
        conn.execute(delete(Purchase).where(Purchase.purchased_at >= _t(5, 0), Purchase.purchased_at < _t(5, 12)))
    _buy(engine, [("C07", _t(5, 3), "42", "PKR", "S1", "grocery", 1)])
    again = refresh_sales(engine, cfg, as_of)
    assert _cube(engine) == _recomputed(engine)
    # Only the local days around the touched UTC days (old day 1, day 0, C03's new and former first days,
    # day 5), not the others.
    assert again.changed <= 15 and _cube(engine) == _recomputed(engine)


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tehran", "Asia/Kolkata"])
def test_business_days_follow_the_zone_across_daylight_saving(engine, tz):
    # Instants every 20 minutes around New York's 2026 transitions, and across a year elsewhere.
    start = datetime(2026, 3, 7, tzinfo=UTC)
    instants = [start + timedelta(minutes=20 * i) for i in range(3 * 72)]
    instants += [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=20 * i) for i in range(3 * 72)]
    with engine.begin() as conn:
        sql.scratch(conn, "instants", "id INTEGER PRIMARY KEY, at TIMESTAMP")
        for i, at in enumerate(instants):
            sql.execute(conn, "INSERT INTO instants VALUES (:i, :at)", {"i": i, "at": at}, at=UtcDateTime())
        params: dict = {}
        day = day_number_sql("at", tz, instants[0], instants[-1], conn.dialect.name, params)
        got = dict(sql.execute(conn, f"SELECT id, {day} FROM instants ORDER BY id", params).all())
    zone = ZoneInfo(tz)
    assert got == {i: (at.astimezone(zone).date() - EPOCH).days for i, at in enumerate(instants)}


def test_weeks_and_months_roll_up_exactly_with_distinct_buyers(engine, cfg):
    _buy(engine, [("A", _t(0, 4), "10", "INR", "S0", "toys", 1), ("A", _t(1, 4), "20", "INR", "S0", "toys", 1),
                  ("B", _t(1, 5), "30", "PKR", "S1", "grocery", 1), ("A", _t(40, 4), "5", "INR", "S0", "toys", 1)])
    refresh_sales(engine, cfg, date(2026, 5, 1))
    rate = cfg.segments.exchange_rates["PKR"]
    months = {r.period: r for r in sales_report(engine, cfg, "month")}
    march = months["2026-03-01"]
    assert march.revenue == Decimal(30) + (Decimal(30) * rate).quantize(Decimal("0.0001"))
    assert (march.orders, march.buyers, march.new_buyers, march.returning_buyers) == (3, 2, 2, 0)
    april = months["2026-04-01"]
    assert (april.buyers, april.new_buyers, april.returning_buyers) == (1, 0, 1)
    days = sales_report(engine, cfg, "day", date(2026, 3, 2), date(2026, 3, 2))
    assert [(d.period, d.buyers) for d in days] == [("2026-03-02", 2)]  # A and B on the same day
    # One customer in two categories of one day is one buyer, and new once.
    _buy(engine, [("D", _t(50, 4), "1", "INR", "S0", "toys", 1), ("D", _t(50, 5), "2", "INR", "S1", "grocery", 1)])
    refresh_sales(engine, cfg, date(2026, 5, 1))
    [d50] = sales_report(engine, cfg, "day", date(2026, 4, 20), date(2026, 4, 20))
    assert (d50.orders, d50.buyers, d50.new_buyers) == (2, 1, 1)
    weeks = sales_report(engine, cfg, "week", category="toys")
    assert sum(w.orders for w in weeks) == 4 and weeks[0].period == "2026-02-23" and weeks[0].buyers == 1  # Sunday
