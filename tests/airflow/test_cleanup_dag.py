"""The weekly crm_cleanup DAG: its schedule, and real and blocked runs through dag.test()."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from crm_tasks.clock import cleanup_as_of
from crm_tasks.store.models import (
    ArchivedCustomer,
    CleanupRun,
)
from tests.cleanup.support import config_with_share, ids, stale_base


@pytest.fixture
def base(engine, cfg):
    """Ten profiles; five of them stale, one for each rule (and one stale by two)."""
    return stale_base(engine, cfg)


@pytest.fixture(scope="module")
def cleanup_dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags" / "crm_cleanup.py"))


@pytest.fixture
def cleanup_dag(cleanup_dag_bag, airflow_db, use_settings, monkeypatch):
    dag = cleanup_dag_bag.dags["crm_cleanup"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)  # dag.test() would wait out the retry delay
    return dag


def test_the_dag_runs_weekly_as_of_the_last_day_of_its_interval(cleanup_dag_bag):
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    dag = cleanup_dag_bag.dags["crm_cleanup"]
    assert cleanup_dag_bag.import_errors == {} and dag.catchup is False and "cleanup" in dag.tags
    assert dag.params["dry_run"] is True and dag.params.get_param("dry_run").schema["type"] == "boolean"
    timetable = decode_timetable(encode_timetable(dag.timetable))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.datetime(2026, 3, 25, tz="UTC"), latest=None, catchup=True))
    assert info.run_after == datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # Monday 30 March, 04:00 in Kolkata
    assert info.data_interval.end - info.data_interval.start == timedelta(days=7)
    assert cleanup_as_of(info.data_interval.end, info.run_after, "Asia/Kolkata") == date(2026, 3, 29)


@pytest.mark.airflow
def test_the_dag_cleans_for_real_and_a_blocked_run_fails(cleanup_dag, base, monkeypatch, tmp_path):
    from crm_tasks.settings import settings

    # The default guardrail (10%) blocks this small base: the run fails and nothing changes.
    run = cleanup_dag.test(run_conf={"dry_run": False})
    assert run.state == "failed"
    assert len(ids(base)) == 10 and ids(base, ArchivedCustomer) == set()
    # A manual dry run succeeds and stores nothing.
    assert cleanup_dag.test(run_conf={"dry_run": True}).state == "success"
    with base.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CleanupRun)).scalar_one() == 0
    monkeypatch.setenv("CRM_CONFIG", config_with_share(tmp_path / "crm.yaml"))
    settings.cache_clear()
    run = cleanup_dag.test(run_conf={"dry_run": False})
    assert run.state == "success"
    with base.connect() as conn:
        (as_of,) = conn.execute(select(CleanupRun.as_of)).one()
    assert as_of == cleanup_as_of(None, run.run_after, "Asia/Kolkata")
    assert {"SILENT", "GONE", "BOUNCED", "NOBODY"} <= ids(base, ArchivedCustomer)
