"""crm_reports refreshes the recommendations: the task is wired, and a real run through dag.test() fills the
lists as of the date it names."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from crm_tasks.store.models import CustomerRecommendation, RecommendationRun
from tests.recommendations.data import generate
from tests.recommendations.test_recommendations import AS_OF, stored


@pytest.fixture(scope="module")
def reports_bag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags" / "crm_reports.py"))


def test_the_reports_dag_has_a_recommendations_task_of_its_own(reports_bag):
    dag = reports_bag.dags["crm_reports"]
    assert reports_bag.import_errors == {}
    task = dag.get_task("recommendations")
    # Independent of the campaign measures and the cube: a failure there does not hold the lists back.
    assert task.upstream_task_ids == set() and task.downstream_task_ids == set()
    assert "recommendations" in dag.doc_md


@pytest.mark.airflow
def test_a_run_refreshes_the_recommendations_as_of_its_date(reports_bag, airflow_db, use_settings, engine,
                                                            monkeypatch):
    from crm_tasks.analytics.recommendations import refresh_recommendations

    dag = reports_bag.dags["crm_reports"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)
    generate(engine, AS_OF)
    run = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert run.state == "success"
    with engine.connect() as conn:
        assert conn.execute(select(RecommendationRun.as_of)).scalars().all() == [AS_OF]
        assert set(conn.execute(select(CustomerRecommendation.as_of)).scalars()) == {AS_OF}
    through_airflow = stored(engine)[1]
    assert through_airflow
    refresh_recommendations(engine, use_settings, AS_OF)
    assert stored(engine)[1] == through_airflow  # the same lists as the library's own refresh of that date
