"""The global control group: stable, left out of marketing (unless a campaign opts out), and measured
month by month against everyone else, exactly and with scipy's interval — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sqlalchemy import select

from crm_tasks.campaigns.planning import global_control
from crm_tasks.results.campaigns import refresh_results
from crm_tasks.results.reports import control_report
from crm_tasks.store.models import ControlResult
from tests.factories import add_customers, buy, campaign, plan

DAY = date(2027, 3, 10)
RUN_AT = datetime(2027, 3, 10, 3, 0, tzinfo=UTC)


@pytest.fixture
def with_control(cfg):
    return cfg.model_copy(update={"results": cfg.results.model_copy(update={"global_control_share": 0.2,
                                                                            "control_months": 3,
                                                                            "min_group": 20})})


def test_membership_is_a_stable_hash_of_the_customer_alone():
    ids = pd.Series([f"C{i:05d}" for i in range(20_000)])
    first = global_control(ids, 0.05)
    assert first.equals(global_control(ids[::-1].reset_index(drop=True)[::-1].reset_index(drop=True), 0.05))
    assert 0.045 < first.mean() < 0.055
    assert (global_control(ids, 0.10) | ~first).all()  # a larger share keeps every earlier member


def test_planning_leaves_the_control_group_out_unless_the_campaign_opts_out(engine, with_control):
    add_customers(engine, *({"customer_id": f"C{i:03d}", "birthday": date(1990, 3, 10)} for i in range(300)))
    ids = pd.Series([f"C{i:03d}" for i in range(300)])
    members = set(ids[global_control(ids, 0.2)])
    marketing = plan(engine, with_control, campaign(), DAY, RUN_AT)
    assert marketing.reasons.get("global_control") == len(members) > 30
    assert {m.customer_id for m in marketing.sample}.isdisjoint(members)
    transactional = plan(engine, with_control, campaign(global_control=False), DAY, RUN_AT)
    assert "global_control" not in transactional.reasons and members <= {m.customer_id for m in transactional.sample}


def test_each_month_compares_control_and_marketed_exactly_and_with_welch(engine, with_control):
    early = datetime(2026, 1, 1, tzinfo=UTC)
    add_customers(engine, *({"customer_id": f"C{i:03d}", "created_at": early} for i in range(300)))
    # Joined during February: not in January's or February's groups, in March's.
    add_customers(engine, *({"customer_id": f"N{i:03d}", "created_at": datetime(2027, 2, 10, tzinfo=UTC)}
                            for i in range(20)))
    ids = pd.Series([f"C{i:03d}" for i in range(300)] + [f"N{i:03d}" for i in range(20)])
    control = dict(zip(ids, global_control(ids, 0.2), strict=True))
    spend: dict[str, Decimal] = {}
    for i, cid in enumerate(ids):
        if i % 3 == 0:
            amount = Decimal(f"{10 + i % 17}.25")
            buy(engine, cid, datetime(2027, 3, 2, 8, tzinfo=UTC) + timedelta(minutes=i), str(amount))
            spend[cid] = amount
    buy(engine, "C003", datetime(2027, 3, 5, tzinfo=UTC), "-4.25")  # a refund in the month
    spend["C003"] -= Decimal("4.25")
    buy(engine, "C006", datetime(2027, 3, 31, 19, tzinfo=UTC), "99")  # 1 April in Kolkata: next month

    refresh_results(engine, with_control, date(2027, 4, 5))
    with engine.connect() as conn:
        rows = {(r.month, r.grp): r for r in conn.execute(select(ControlResult)).all()}
    assert {m for m, _ in rows} == {date(2027, 2, 1), date(2027, 3, 1), date(2027, 4, 1)}
    march_c, march_m = rows[(date(2027, 3, 1), "control")], rows[(date(2027, 3, 1), "marketed")]
    in_control = {c for c, v in control.items() if v}
    assert march_c.customers + march_m.customers == 320 and march_c.customers == len(in_control)
    assert rows[(date(2027, 2, 1), "control")].customers + rows[(date(2027, 2, 1), "marketed")].customers == 300
    assert march_c.revenue == sum(v for c, v in spend.items() if c in in_control)
    assert march_m.revenue == sum(v for c, v in spend.items() if c not in in_control)
    assert march_m.month_complete and not rows[(date(2027, 4, 1), "marketed")].month_complete
    assert rows[(date(2027, 4, 1), "marketed")].revenue == Decimal(99)

    values = {c: float(spend.get(c, 0)) for c in ids}
    m_vals = np.array([v for c, v in values.items() if not control[c]])
    c_vals = np.array([v for c, v in values.items() if control[c]])
    ci = sps.ttest_ind(m_vals, c_vals, equal_var=False).confidence_interval(0.95)
    diff = march_m.lift["revenue"]["difference"]
    assert diff["ci_low"] == pytest.approx(ci.low) and diff["ci_high"] == pytest.approx(ci.high)
    assert march_m.lift["revenue"]["relative_method"] == "delta"
    report = control_report(engine)
    assert report[1]["month"] == "2027-03-01" and report[1]["lift"]["verdict"] == march_m.lift["verdict"]
