"""The crm_reports DAG: scheduled on the segments asset and daily, and a real refresh through dag.test()."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, update

from crm_tasks.analytics.figures import Figures
from crm_tasks.clock import report_as_of
from crm_tasks.store.models import CampaignResult, ControlResult, Message, SalesDaily
from tests.factories import add_customers, buy, campaign, plan


@pytest.fixture(scope="module")
def reports_bag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags" / "crm_reports.py"))


def test_the_dag_follows_segments_and_runs_daily_as_well(reports_bag):
    dag = reports_bag.dags["crm_reports"]
    assert reports_bag.import_errors == {} and "reports" in dag.tags
    assert dag.timetable.asset_condition.uri == "crm://segments/"
    # The cron part: it runs every morning even on a night without a recompute.
    assert dag.timetable.timetable.expression == "30 6 * * *"
    # The as-of date: the form's, else the newest announced by the triggering recomputes, else yesterday.
    after = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    assert report_as_of("2026-01-31", ["2026-03-09"], None, after, "Asia/Kolkata") == date(2026, 1, 31)
    assert report_as_of(None, ["2026-03-08", "2026-03-09"], None, after, "Asia/Kolkata") == date(2026, 3, 9)
    assert report_as_of(None, [], None, after, "Asia/Kolkata") == date(2026, 3, 9)


@pytest.mark.airflow
def test_a_run_measures_every_campaign_run_and_the_control_group(reports_bag, airflow_db, use_settings, engine,
                                                                  monkeypatch):
    dag = reports_bag.dags["crm_reports"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)
    day = date(2026, 2, 1)
    add_customers(engine, *({"customer_id": f"C{i:03d}", "birthday": date(1990, 2, 1)} for i in range(300)))
    plan(engine, use_settings, campaign(holdout_share=0.3), day, datetime(2026, 2, 1, 3, 0, tzinfo=UTC),
         record=True, dry_run=False)
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=Message.send_at))
    for i in range(0, 300, 3):
        buy(engine, f"C{i:03d}", datetime(2026, 2, 3, 8, 0, tzinfo=UTC), "99.5")

    run = dag.test(run_conf={"as_of": "2026-02-20"})
    assert run.state == "success"
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignResult.grp, CampaignResult.customers, CampaignResult.converters,
                                   CampaignResult.window_complete)).all()
        months = conn.execute(select(ControlResult.month)).scalars().all()
        cube = conn.execute(select(SalesDaily.day, SalesDaily.orders, SalesDaily.buyers)).all()
    assert sorted(g for g, *_ in rows) == ["holdout", "treatment"]
    assert sum(n for _, n, _, _ in rows) == 300 and sum(c for _, _, c, _ in rows) == 100
    assert all(complete for *_, complete in rows)
    assert date(2026, 2, 1) in months and len(set(months)) == use_settings.results.control_months
    assert max(months) - min(months) < timedelta(days=366)
    assert cube == [(date(2026, 2, 3), 100, 100)]  # the sales cube task ran too
    # ... and after it the figures the pages open with, for the run's date, current for the data as it is.
    figures = Figures(engine, use_settings)
    february = figures.sales("month", date(2026, 1, 1), date(2026, 2, 20))
    assert not figures.live and [(r.period, r.orders, r.buyers) for r in february] == [("2026-02-01", 100, 100)]
