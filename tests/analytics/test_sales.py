"""The sales cube equals a full recomputation from purchases — after new nights, late files, corrections,
replaced rows and moved first orders — and only changed days are recomputed; business days follow the
time zone across daylight saving; reports roll weeks and months up exactly. SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, insert, select, update

from crm_tasks.analytics.sales import EPOCH, day_number_sql, refresh_sales, sales_report
from crm_tasks.errors import ConfigError
from crm_tasks.ingest import metrics
from crm_tasks.store import sql
from crm_tasks.store.models import Purchase, SalesDaily, SalesDailySegment, Segment, SegmentMembership, SegmentRun
from crm_tasks.store.types import UtcDateTime
from tests.factories import add_membership

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


def _recomputed(engine, tz: str = TZ) -> dict:
    """The cube, recomputed here from every purchase (Python, zoneinfo): the reference."""
    with engine.connect() as conn:
        purchases = conn.execute(select(Purchase.customer_id, Purchase.purchased_at, Purchase.amount,
                                        Purchase.currency, Purchase.store_id, Purchase.category,
                                        Purchase.quantity)).all()
    zone = ZoneInfo(tz)
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
    refresh_sales(engine, cfg, as_of)
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


def test_a_new_time_zone_rebuilds_every_day_of_the_cube(engine, cfg):
    # Evening purchases in UTC: in Kolkata they fall on the next day, in New York on the same one.
    _buy(engine, [(f"C{i}", _t(i % 4, 19 + i % 3), "10", "INR", "S1", "toys", 1) for i in range(12)])
    as_of = date(2026, 3, 12)
    refresh_sales(engine, cfg, as_of)
    assert _cube(engine) == _recomputed(engine, TZ)
    again = refresh_sales(engine, cfg.model_copy(update={"timezone": "America/New_York"}), as_of)
    assert again.changed > 0
    assert _cube(engine) == _recomputed(engine, "America/New_York") != _recomputed(engine, TZ)


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


# --- by segment ------------------------------------------------------------------------------------------


def _segment_reference(engine) -> dict:
    """The cube by segment recomputed here: each purchase under the buyer's membership of the day before."""
    with engine.connect() as conn:
        purchases = conn.execute(select(Purchase.customer_id, Purchase.purchased_at, Purchase.amount,
                                        Purchase.currency, Purchase.quantity)).all()
        spans = conn.execute(select(Segment.name, Segment.family, SegmentMembership.customer_id,
                                    SegmentMembership.valid_from, SegmentMembership.valid_to)
                             .join(Segment, Segment.id == SegmentMembership.segment_id)).all()
    zone = ZoneInfo(TZ)
    first: dict[str, date] = {}
    for c, at, a, *_ in purchases:
        if a >= 0:
            first[c] = min(first.get(c, at.astimezone(zone).date()), at.astimezone(zone).date())
    cells: dict = defaultdict(lambda: [0, 0, 0, Decimal(0), Decimal(0), set(), set()])
    for c, at, a, cur, q in purchases:
        d = at.astimezone(zone).date()
        eve = d - timedelta(days=1)
        for family in ("rfm", "lifecycle"):
            names = [n for n, f, who, lo, hi in spans if f == family and who == c and lo <= eve and (hi is None or hi > eve)]
            cell = cells[(d, names[0] if names else f"{family}:(none)", cur)]
            cell[3] += a
            if a >= 0:
                cell[0] += 1
                cell[2] += q
                cell[5].add(c)
                if first[c] == d:
                    cell[6].add(c)
            else:
                cell[1] += 1
                cell[4] -= a
    return {k: (v[0], v[1], v[2], v[3], v[4], len(v[5]), len(v[6])) for k, v in cells.items()}


def _segment_cube(engine) -> dict:
    with engine.connect() as conn:
        return {(r.day, r.segment, r.currency): (r.orders, r.refunds, r.items, r.revenue, r.refunded, r.buyers,
                                                 r.new_buyers)
                for r in conn.execute(select(SalesDailySegment)).all()}


def _segment_run(engine, as_of: date, minute: int) -> None:
    """A segment recompute of ``as_of`` as it is recorded (only its date and time matter to the cube)."""
    with engine.begin() as conn:
        conn.execute(delete(SegmentRun).where(SegmentRun.as_of == as_of))
        conn.execute(insert(SegmentRun).values(
            as_of=as_of, cutoff=datetime(2026, 3, 1, tzinfo=UTC), computed_at=datetime(2026, 3, 1, 0, minute, tzinfo=UTC),
            source="metrics", customers=0, scored=0, buyers_without_profile=0, memberships=0, entered=0, exited=0,
            parameters={}, problems=[]))


def test_the_cube_by_segment_counts_each_purchase_under_the_segment_of_the_day_before(engine, cfg):
    add_membership(engine, "rfm:champions", "A", date(2026, 3, 1), date(2026, 3, 3))
    add_membership(engine, "rfm:at_risk", "A", date(2026, 3, 3))
    add_membership(engine, "lifecycle:active", "A", date(2026, 2, 1))
    add_membership(engine, "lifecycle:active", "B", date(2026, 3, 2))
    _buy(engine, [("A", _t(1, 4), "10", "INR", "S0", "toys", 2),  # 2 March: champions since the 1st
                  ("A", _t(3, 4), "20", "INR", "S0", "toys", 1),  # 4 March: at risk since the 3rd
                  ("A", _t(3, 6), "-5", "INR", "S0", "toys", 1),
                  ("B", _t(2, 4), "30", "PKR", "S1", "grocery", 1),  # 3 March: active since the 2nd
                  ("B", _t(1, 5), "7", "INR", "S1", "grocery", 1),  # 2 March: in no segment on the 1st
                  ("C", _t(2, 5), "1", "INR", "S1", "grocery", 1)])
    as_of = date(2026, 3, 10)
    refresh_sales(engine, cfg, as_of)
    cube = _segment_cube(engine)
    assert cube == _segment_reference(engine)
    assert cube[(date(2026, 3, 2), "rfm:champions", "INR")][:4] == (1, 0, 2, Decimal(10))
    assert cube[(date(2026, 3, 4), "rfm:at_risk", "INR")][:5] == (1, 1, 1, Decimal(15), Decimal(5))
    assert cube[(date(2026, 3, 2), "lifecycle:(none)", "INR")][5] == 1  # B, before the stage began
    # Each family adds up to the day's totals in the cube by store and category.
    for family in ("rfm", "lifecycle"):
        by_family: dict = defaultdict(lambda: [0, Decimal(0)])
        for (d, segment, cur), v in cube.items():
            if segment.startswith(family + ":"):
                by_family[(d, cur)][0] += v[0]
                by_family[(d, cur)][1] += v[3]
        totals: dict = defaultdict(lambda: [0, Decimal(0)])
        for (d, _store, _cat, cur), v in _cube(engine).items():
            totals[(d, cur)][0] += v[0]
            totals[(d, cur)][1] += v[3]
        assert by_family == totals

    # A segment recompute of 3 March re-run with a different result changes the segments of 4 March only.
    _segment_run(engine, date(2026, 3, 3), 1)
    refresh_sales(engine, cfg, as_of)
    with engine.begin() as conn:
        conn.execute(delete(SegmentMembership).where(SegmentMembership.customer_id == "A",
                                                     SegmentMembership.valid_from == date(2026, 3, 3)))
        conn.execute(update(SegmentMembership).where(SegmentMembership.customer_id == "A",
                                                     SegmentMembership.valid_to == date(2026, 3, 3))
                     .values(valid_to=None))
    _segment_run(engine, date(2026, 3, 3), 2)
    again = refresh_sales(engine, cfg, as_of)
    assert again.changed == 1
    assert _segment_cube(engine) == _segment_reference(engine)
    assert (date(2026, 3, 4), "rfm:champions", "INR") in _segment_cube(engine)

    # Reports by segment: the same figures, distinct buyers per period, and clear errors.
    [march] = sales_report(engine, cfg, "month", segment="lifecycle:active")
    rate = cfg.segments.exchange_rates["PKR"]
    assert march.revenue == Decimal(10) + Decimal(15) + (Decimal(30) * rate).quantize(Decimal("0.0001"))
    # Both first ordered in March (B outside the segment, on the 2nd): new in the month, whatever the day.
    assert (march.orders, march.refunds, march.buyers, march.new_buyers) == (3, 1, 2, 2)
    [none] = sales_report(engine, cfg, "month", segment="rfm:(none)")
    assert (none.orders, none.buyers, none.new_buyers) == (3, 2, 2)  # B twice, and C
    with pytest.raises(ConfigError, match="rfm:<segment>"):
        sales_report(engine, cfg, "month", segment="champions")
    with pytest.raises(ConfigError, match="cannot be combined"):
        sales_report(engine, cfg, "month", segment="rfm:champions", category="toys")


# --- distinct buyers from the purchase days ------------------------------------------------------------------


def _buyers_reference(engine, by: str, first: date, last: date) -> dict:
    """Distinct buyers and new buyers per period of the days first..last, from every purchase (Python)."""
    from crm_tasks.analytics.sales import period_of

    with engine.connect() as conn:
        purchases = conn.execute(select(Purchase.customer_id, Purchase.purchased_at, Purchase.amount)).all()
    zone = ZoneInfo(TZ)
    orders = [(c, at.astimezone(zone).date()) for c, at, a in purchases if a >= 0]
    first_order: dict[str, date] = {}
    for c, d in orders:
        first_order[c] = min(first_order.get(c, d), d)
    buyers: dict = defaultdict(set)
    for c, d in orders:
        if first <= d <= last:
            buyers[period_of(d, by)].add(c)
    return {p: (len(who), sum(first <= first_order[c] <= last and period_of(first_order[c], by) == p for c in who))
            for p, who in buyers.items()}


@pytest.mark.parametrize("by", ["day", "week", "month"])
def test_distinct_buyers_from_the_purchase_days_equal_a_count_of_the_purchases(engine, cfg, by):
    import random

    from crm_tasks.analytics.purchase_days import queue_everyone, refresh_purchase_days
    from crm_tasks.store.models import CustomerDaysDirty, DerivedZone

    rng = random.Random(7)
    rows = []
    for _ in range(900):
        c = f"C{rng.randrange(120)}"
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(150 * 24 * 60))
        amount = rng.choice(["-5", "12.5", "40", "99"]) if rng.random() < 0.15 else str(rng.randrange(1, 300))
        rows.append((c, at, amount, rng.choice(["INR", "INR", "PKR"]), "S0", rng.choice(["toys", "home"]), 1))
    _buy(engine, rows)
    refresh_sales(engine, cfg, date(2026, 6, 30))
    # Purchases written around ingest leave no purchase days and no queue: the days are not trusted then.
    with engine.begin() as conn:
        conn.execute(delete(CustomerDaysDirty))
        conn.execute(insert(DerivedZone).values(name="customer_days", timezone=cfg.timezone))
    untrusted = {r.period: (r.buyers, r.new_buyers) for r in sales_report(engine, cfg, by)}
    assert sum(b for b, _ in untrusted.values()) > 0
    with engine.begin() as conn:
        queue_everyone(conn)
    refresh_purchase_days(engine, cfg)
    assert {r.period: (r.buyers, r.new_buyers) for r in sales_report(engine, cfg, by)} == untrusted
    # Whole periods, and a range cut mid-period at both ends (as the CLI's --from and --to allow).
    for first, last in ((date(2026, 1, 1), date(2026, 5, 31)), (date(2026, 1, 14), date(2026, 4, 17))):
        fast = sales_report(engine, cfg, by, first, last)
        expected = _buyers_reference(engine, by, first, last)
        assert {r.period: (r.buyers, r.new_buyers) for r in fast} == \
            {p.isoformat(): v for p, v in expected.items()}, (first, last)
        # The count from the range's purchases (used while a customer's days wait to be recomputed) agrees.
        with engine.begin() as conn:
            conn.execute(insert(CustomerDaysDirty).values(customer_id="C0"))
        assert sales_report(engine, cfg, by, first, last) == fast
        with engine.begin() as conn:
            conn.execute(delete(CustomerDaysDirty))
    assert sum(r.new_buyers for r in sales_report(engine, cfg, "month")) == len({r[0] for r in rows if r[2][0] != "-"})
