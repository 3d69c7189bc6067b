"""DAG integrity, and a real run of crm_ingest through Airflow's dag.test()."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from crm_tasks.store.models import Customer, CustomerMetrics, Purchase, QuarantinedRow
from tests.conftest import REPO
from tests.helpers import customer, purchase, write_csv

DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    files = {Path(p).name for p in DAGS.glob("*.py")}
    assert {Path(d.fileloc).name for d in dagbag.dags.values()} == files  # one DAG per file


def test_dags_are_documented_tagged_and_retried(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.catchup is False, dag_id
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id}"


def test_parsing_dags_touches_no_database(tmp_path, monkeypatch):
    # A database URL that cannot work: parsing must not notice it.
    monkeypatch.setenv("CRM_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    from airflow.dag_processing.dagbag import DagBag

    from crm_tasks.settings import settings

    settings.cache_clear()
    try:
        assert DagBag(dag_folder=str(DAGS)).import_errors == {}
    finally:
        settings.cache_clear()


def test_ingest_schedule_is_nightly_over_the_previous_local_day(dagbag):
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    from crm_tasks.clock import business_dates

    # Ask the scheduler's own timetable which run comes first after 2026-03-01 00:00 UTC.
    timetable = decode_timetable(encode_timetable(dagbag.dags["crm_ingest"].timetable))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.datetime(2026, 3, 1, tz="UTC"), latest=None, catchup=True),
    )
    start, end = info.data_interval.start, info.data_interval.end
    assert info.run_after == datetime(2026, 3, 1, 20, 30, tzinfo=UTC)  # 02:00 on 2 March in Asia/Kolkata
    assert end - start == timedelta(days=1)
    assert business_dates(None, None, start, end, info.run_after, "Asia/Kolkata") == [date(2026, 3, 1)]
    # A manual run without an interval loads the local day before it was triggered.
    assert business_dates(None, None, None, None, end, "Asia/Kolkata") == [date(2026, 3, 1)]
    assert len(business_dates("2026-01-01", "2026-01-31", start, end, end, "Asia/Kolkata")) == 31


@pytest.fixture
def ingest_dag(dagbag, airflow_db, use_settings, monkeypatch):
    """crm_ingest without retries: dag.test() waits out retry delays, and a test must fail, not stall.
    Each test names both dates: a run_conf given to dag.test() stays in the DAG object's params
    for later calls in the same process."""
    dag = dagbag.dags["crm_ingest"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)
    return dag


@pytest.mark.airflow
def test_crm_ingest_runs_through_airflow(ingest_dag, engine, landing):
    write_csv(landing, "customers", "2026-03-01", [customer("C1"), customer("C2", email="broken@")])
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1", amount="10"), purchase("T2", amount="x")])
    write_csv(landing, "purchases", "2026-03-02", [purchase("T3", amount="5", at="2026-03-02T09:00:00Z")])
    run = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-02"})
    assert run.state == "success"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Customer)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(Purchase)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(QuarantinedRow)).scalar_one() == 2
        (orders,) = conn.execute(select(CustomerMetrics.orders)).one()
    assert orders == 2
    # The same range again: still success, nothing changes.
    again = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-02"})
    assert again.state == "success"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Purchase)).scalar_one() == 2


@pytest.mark.airflow
def test_crm_ingest_fails_on_a_rejected_file(ingest_dag, engine, landing):
    write_csv(landing, "purchases", "2026-03-01", [purchase(f"B{i}", amount="?") for i in range(20)])
    run = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"})
    assert run.state == "failed"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Purchase)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(QuarantinedRow)).scalar_one() == 20


@pytest.mark.airflow
def test_crm_ingest_uses_the_airflow_connection_crm_db(ingest_dag, engine, landing, db_url, monkeypatch):
    """Without CRM_DATABASE_URL, tasks reach the CRM database through the connection crm_db."""
    import json

    from sqlalchemy.engine import make_url

    from crm_tasks.settings import settings

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = {"conn_type": "sqlite", "host": url.database}
    else:
        conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
                "schema": url.database, "extra": {"options": url.query["options"]}}
    monkeypatch.delenv("CRM_DATABASE_URL")
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps(conn))
    settings.cache_clear()
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1")])
    run = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"})
    assert run.state == "success"
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Purchase)).scalar_one() == 1


@pytest.mark.airflow
def test_crm_ingest_loads_the_catalogue_and_announces_it_only_when_it_changed(ingest_dag, engine, landing):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from crm_tasks.store.models import Product

    def product_events() -> int:
        with create_session() as session:
            return session.scalar(select(func.count()).select_from(AssetEvent).join(
                AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.uri.like("crm://products%")))

    write_csv(landing, "purchases", "2026-03-01", [purchase("T1")])
    write_csv(landing, "products", "2026-03-01", [
        {"sku": "SKU-1", "name": "Rice", "category": "grocery", "price": "499.00", "currency": "INR",
         "url": "https://shop.example.in/p/SKU-1", "image_url": "https://cdn.example.in/SKU-1.jpg",
         "in_stock": "true", "updated_at": "2026-03-01T08:00:00Z"}])
    before = product_events()
    run = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"})
    assert run.state == "success"
    assert product_events() == before + 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Product)).scalar_one() == 1
    # The same night again: nothing new in the catalogue, so no event, and no failure.
    again = ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"})
    assert again.state == "success"
    assert product_events() == before + 1


def test_segments_run_after_ingest_and_announce_their_own_asset(dagbag):
    ingest = dagbag.dags["crm_ingest"]
    seg = dagbag.dags["crm_segments"]
    produced = {o.uri for t in ingest.tasks for o in t.outlets if hasattr(o, "uri")}
    # Either asset triggers a recompute (fresh profiles alone change prospects and custom rules).
    consumed = {a.uri for a in seg.timetable.asset_condition.objects}
    assert consumed == {"crm://customers/", "crm://purchases/"}
    assert produced == consumed
    # The catalogue is announced through an alias (only on nights that loaded it), and does not
    # recompute segments.
    assert {o.name for t in ingest.tasks for o in t.outlets if not hasattr(o, "uri")} == {"crm-products-loaded"}
    assert {o.uri for t in seg.tasks for o in t.outlets} == {"crm://segments/"}


@pytest.mark.airflow
def test_ingest_then_segments_through_airflow(dagbag, airflow_db, use_settings, monkeypatch, engine, landing):
    from crm_tasks.store.models import SegmentRun

    for dag_id in ("crm_ingest", "crm_segments"):
        for t in dagbag.dags[dag_id].tasks:
            monkeypatch.setattr(t, "retries", 0)
    write_csv(landing, "customers", "2026-03-01", [customer("C1"), customer("C2")])
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1", amount="10")])
    ingest = dagbag.dags["crm_ingest"].test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"})
    assert ingest.state == "success"
    # A manual run without dates computes as of the latest loaded partition.
    run = dagbag.dags["crm_segments"].test(run_conf={"as_of": None, "through": None})
    assert run.state == "success"
    with engine.connect() as conn:
        runs = conn.execute(select(SegmentRun.as_of, SegmentRun.customers, SegmentRun.scored)).all()
    assert runs == [(date(2026, 3, 1), 2, 1)]
    # A backfill from the trigger form: one history step per day.
    run = dagbag.dags["crm_segments"].test(run_conf={"as_of": "2026-03-02", "through": "2026-03-04"})
    assert run.state == "success"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SegmentRun)).scalar_one() == 4


@pytest.mark.airflow
def test_a_missing_landing_folder_or_an_empty_night_fails_the_dag(ingest_dag, engine, landing, monkeypatch, tmp_path):
    from crm_tasks.settings import settings

    # Nothing landed for the night: the run fails (missing_partition_grace is 0 by default).
    assert ingest_dag.test(run_conf={"start_date": "2026-03-05", "end_date": "2026-03-05"}).state == "failed"
    monkeypatch.setenv("CRM_LANDING_DIR", str(tmp_path / "wrong-path"))
    settings.cache_clear()
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1")])
    assert ingest_dag.test(run_conf={"start_date": "2026-03-01", "end_date": "2026-03-01"}).state == "failed"
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Purchase)).scalar_one() == 0
