"""The hourly crm_bounces DAG: its schedule, a run without a mailbox that fails naming what to set, and real
runs through dag.test() reading a Dovecot server through CRM_BOUNCE_IMAP_URL and through the Airflow
connection crm_bounces."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from crm_tasks.delivery.suppression import email_hash
from tests.conftest import REPO
from tests.delivery.feedback_support import arf_complaint, postfix_dsn, send_birthdays, suppressions
from tests.imap_servers import dovecot_or_skip


@pytest.fixture(scope="module")
def bounces_dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags" / "crm_bounces.py"))


@pytest.fixture(scope="module")
def dovecot():
    with dovecot_or_skip() as server:
        yield server


@pytest.fixture
def bounces_dag(bounces_dag_bag, airflow_db, use_settings, monkeypatch):
    from crm_tasks.settings import settings

    dag = bounces_dag_bag.dags["crm_bounces"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)  # dag.test() would wait out the retry delay
    monkeypatch.delenv("CRM_BOUNCE_IMAP_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_CRM_BOUNCES", raising=False)
    settings.cache_clear()
    yield dag
    settings.cache_clear()


def test_the_dag_reads_the_mailbox_every_hour(bounces_dag_bag):
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    dag = bounces_dag_bag.dags["crm_bounces"]
    assert bounces_dag_bag.import_errors == {} and "bounces" in dag.tags and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["read_mailbox"] and dag.tasks[0].retries >= 1
    timetable = decode_timetable(encode_timetable(dag.timetable))
    restriction = TimeRestriction(earliest=pendulum.datetime(2026, 3, 1, tz="UTC"), latest=None, catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    second = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=restriction)
    assert first.run_after == datetime(2026, 3, 1, 0, 45, tzinfo=UTC)  # 06:15 in Kolkata (UTC+05:30)
    assert (second.run_after - first.run_after).total_seconds() == 3600


@pytest.mark.airflow
def test_a_run_without_a_mailbox_fails_at_once_naming_what_to_set(bounces_dag, capsys):
    run = bounces_dag.test()
    assert run.state == "failed"
    task_log = capsys.readouterr().out  # Airflow's task log (structlog) goes to stdout under dag.test()
    assert "no bounce mailbox is configured: set CRM_BOUNCE_IMAP_URL" in task_log
    assert "action=fail" in task_log  # the retry policy fails it at once: a retry would not configure it


@pytest.mark.airflow
@pytest.mark.parametrize("how", ["environment", "airflow connection"])
def test_a_run_reads_the_mailbox_and_suppresses(bounces_dag, dovecot, engine, keys, monkeypatch, how):
    from crm_tasks.settings import settings

    user = f"bounces-{uuid.uuid4().hex[:8]}"
    sent = send_birthdays(engine, settings())
    dovecot.deliver(user, postfix_dsn(sent["C1"], "asha.rao@example.org"),
                    arf_complaint(sent["C2"], "ravi.kumar@example.net"))
    # STARTTLS with the certificate checked against the test server's own, as against a real CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
    if how == "environment":
        monkeypatch.setenv("CRM_BOUNCE_IMAP_URL", dovecot.url(user, "imap"))
    else:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_BOUNCES", json.dumps({
            "conn_type": "imap", "host": "127.0.0.1", "port": dovecot.port, "login": user,
            "password": dovecot.password, "extra": {"use_ssl": False}}))
    settings.cache_clear()
    run = bounces_dag.test()
    assert run.state == "success"
    assert suppressions(engine) == {email_hash("asha.rao@example.org", keys.hashing): ("C1", "hard_bounce"),
                                    email_hash("ravi.kumar@example.net", keys.hashing): ("C2", "complaint")}
    assert [dovecot.folder_count(user, f) for f in ("INBOX", "crm-processed")] == [0, 2]
