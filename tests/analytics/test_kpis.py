"""Lifecycle KPIs from real segment recomputes and the sales cube: stage counts, acquisition, expansion,
churn entries and the basket — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import func, select

from crm_tasks.analytics.kpis import lifecycle_kpis
from crm_tasks.analytics.sales import refresh_sales
from crm_tasks.segments.compute import recompute
from crm_tasks.store.models import CustomerScore, Segment, SegmentSize
from tests.analytics.test_sales import _buy
from tests.factories import add_customers


def _at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 6, tzinfo=UTC)


def test_kpis_match_the_segment_history_the_first_orders_and_the_cube(engine, cfg):
    add_customers(engine, *({"customer_id": c} for c in ("A", "B", "C", "D", "E")))
    _buy(engine, [
        ("A", _at(1, 5), "100", "INR", "S0", "toys", 1), ("A", _at(3, 9), "50", "INR", "S0", "grocery", 1),  # expands
        ("B", _at(1, 20), "40", "INR", "S0", "toys", 1),
        ("C", _at(3, 2), "10", "INR", "S0", "toys", 1), ("C", _at(3, 3), "30", "INR", "S1", "grocery", 1),  # new
        ("D", _at(2, 14), "60", "PKR", "S1", "toys", 1), ("D", _at(3, 20), "-10", "PKR", "S1", "toys", 1),
    ])
    for month_end in (date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31)):
        recompute(engine, cfg, month_end)
    refresh_sales(engine, cfg, date(2026, 3, 31))
    months = {k.month: k for k in lifecycle_kpis(engine, cfg, date(2026, 3, 31), months=3)}
    assert list(months) == ["2026-01-01", "2026-02-01", "2026-03-01"] and months["2026-03-01"].complete

    with engine.connect() as conn:
        now = Counter(conn.execute(select(CustomerScore.lifecycle)).scalars())
        churned_ids = conn.execute(select(Segment.id).where(Segment.name == "lifecycle:churned")).scalar_one()
        churned_in_march = conn.execute(select(func.coalesce(func.sum(SegmentSize.entered), 0)).where(
            SegmentSize.segment_id == churned_ids, SegmentSize.as_of >= date(2026, 3, 1))).scalar_one()
    march = months["2026-03-01"]
    assert {s: n for s, n in march.stages.items() if n} == dict(now)
    assert [months[m].new_customers for m in months] == [2, 1, 1]  # A, B; D; C
    assert march.expansion == 1  # A's first grocery order; C's two categories in its first month are not
    assert march.churned == churned_in_march
    assert march.orders == 3 and months["2026-01-01"].orders == 2
    rate = cfg.segments.exchange_rates["PKR"]
    march_revenue = Decimal(50) + Decimal(40) + (Decimal(-10) * rate).quantize(Decimal("0.0001"))
    assert Decimal(march.avg_basket) == (march_revenue / 3).quantize(Decimal("0.01"))
    assert march.churn_rate_12m is None  # the segment history is younger than a year: no honest rate


def test_the_cohort_matrix_counts_each_cohort_in_every_later_month(engine, cfg):
    from crm_tasks.analytics.kpis import cohort_matrix

    add_customers(engine, *({"customer_id": c} for c in ("A", "B", "C", "D")))
    _buy(engine, [
        ("A", _at(1, 5), "10", "INR", "S0", "toys", 1), ("A", _at(1, 9), "10", "INR", "S0", "toys", 1),
        ("A", _at(3, 9), "10", "INR", "S0", "toys", 1),
        ("B", _at(1, 20), "10", "INR", "S0", "toys", 1), ("B", _at(2, 2), "-10", "INR", "S0", "toys", 1),  # a refund
        ("C", _at(2, 2), "10", "PKR", "S1", "toys", 1), ("C", _at(2, 3), "10", "PKR", "S1", "toys", 1),
        ("C", _at(3, 3), "10", "PKR", "S1", "toys", 1),
        ("D", datetime(2025, 12, 30, tzinfo=UTC), "10", "INR", "S0", "toys", 1),  # an older cohort
        ("D", _at(2, 10), "10", "INR", "S0", "toys", 1),
    ])
    cohorts = {c.month: c for c in cohort_matrix(engine, cfg, date(2026, 3, 31), months=3)}
    assert cohorts["2026-01-01"].customers == 2 and cohorts["2026-01-01"].active == [2, 0, 1]
    assert cohorts["2026-01-01"].retention == [1.0, 0.0, 0.5]
    assert cohorts["2026-02-01"].active == [1, 1] and cohorts["2026-03-01"].active == [0]
    assert "2025-12-01" not in cohorts  # D's cohort is older than the window
