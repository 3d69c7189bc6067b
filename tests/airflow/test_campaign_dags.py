"""The campaign DAG factory: one DAG per campaign file, broken files isolated, runs through Airflow."""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from sqlalchemy import select

from crm_tasks.campaigns.definitions import load_campaigns
from crm_tasks.settings import load_settings, settings
from crm_tasks.store.models import CampaignRun, Message
from tests.conftest import REPO
from tests.factories import add_customers
from tests.helpers import born_on, lenient_campaigns, recent_day

FACTORY = REPO / "dags" / "crm_campaigns.py"


def _bag(monkeypatch, folder=None):
    from airflow.dag_processing.dagbag import DagBag

    if folder is not None:
        monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(folder))
    settings.cache_clear()
    try:
        return DagBag(dag_folder=str(FACTORY))
    finally:
        settings.cache_clear()


def test_every_shipped_campaign_is_a_dag_with_a_trigger_form(monkeypatch):
    bag = _bag(monkeypatch)
    campaigns, problems = load_campaigns(load_settings())
    assert problems == [] and len(campaigns) == 6
    assert bag.import_errors == {}
    assert set(bag.dags) == {f"crm_campaign_{c.name}" for c in campaigns}
    dag = bag.dags["crm_campaign_birthday"]
    assert set(dag.params) == {"dry_run", "as_of", "audience_limit", "test_recipient"}
    assert dag.params["dry_run"] is True
    assert "campaign" in dag.tags and dag.timetable.summary == "0 6 * * *"
    # No pool to create first: Airflow's default_pool, which every installation has, with the
    # campaign's own sends bounded by delivery.parallel_sends.
    send = dag.get_task("send")
    assert send.pool is None and send.max_active_tis_per_dag == 4  # no pool named: default_pool


def test_a_broken_campaign_file_is_an_import_error_for_that_campaign_only(tmp_path, monkeypatch):
    shutil.copy(REPO / "campaigns" / "birthday.yaml", tmp_path / "birthday.yaml")
    (tmp_path / "typo.yaml").write_text(
        "name: typo\nkind: segment\ntemplate: offer\nschedule: {cron: '0 6 * * *'}\n"
        "audience: {segment: lifecycle:at_risk}\nholdout_shar: 0.1\n", encoding="utf-8")
    (tmp_path / "disabled.yaml").write_text(
        (REPO / "campaigns" / "thank_you.yaml").read_text().replace("name: thank_you", "name: disabled")
        + "enabled: false\n", encoding="utf-8")
    bag = _bag(monkeypatch, tmp_path)
    assert set(bag.dags) == {"crm_campaign_birthday"}
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("crm_campaigns.py")
    assert "typo.yaml: holdout_shar: unknown field; did you mean 'holdout_share'?" in message
    assert "birthday" not in message


@pytest.mark.airflow
def test_a_manual_run_is_a_dry_run_that_records_the_plan(airflow_db, use_settings, engine, monkeypatch):
    dag = _bag(monkeypatch).dags["crm_campaign_birthday"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 4, 2)},
                  {"customer_id": "C2", "birthday": date(1991, 4, 2)})
    run = dag.test(run_conf={"as_of": "2027-04-02", "dry_run": True, "audience_limit": None,
                             "test_recipient": None})
    assert run.state == "success"
    with engine.connect() as conn:
        runs = conn.execute(select(CampaignRun.as_of, CampaignRun.dry_run, CampaignRun.audience)).all()
        assert runs == [(date(2027, 4, 2), True, 2)]
        assert conn.execute(select(Message.idempotency_key)).all() == []
    # To a test recipient: sent to that address only, even with the form's dry run left on.
    from tests.smtp_servers import SmtpServer

    with SmtpServer() as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        settings.cache_clear()
        run = dag.test(run_conf={"as_of": "2027-04-02", "dry_run": True, "audience_limit": 1,
                                 "test_recipient": "qa@example.org"})
        received = srv.handler.parsed()
    assert run.state == "success"
    assert [m["to"].addresses[0].addr_spec for m in received] == ["qa@example.org"]
    with engine.connect() as conn:
        assert conn.execute(select(Message.recipient, Message.state, Message.test)).all() == \
            [("qa@example.org", "sent", True)]


def test_a_misspelt_frequency_cap_is_an_error_not_the_default(tmp_path):
    from crm_tasks.campaigns.definitions import parse_campaign
    from crm_tasks.errors import ConfigError

    path = tmp_path / "capped.yaml"
    path.write_text("name: capped\nkind: segment\ntemplate: offer\nschedule: {cron: '0 6 * * *'}\n"
                    "audience: {segment: lifecycle:at_risk}\nfrequency_cap: {messages: 2, dayz: 7}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="frequency_cap.dayz: unknown field; did you mean 'days'"):
        parse_campaign(path, load_settings())


@pytest.mark.airflow
def test_a_run_plans_and_delivers_every_batch_through_airflow(airflow_db, use_settings, engine, monkeypatch,
                                                             tmp_path):
    import yaml

    from tests.smtp_servers import SmtpServer

    config = yaml.safe_load((REPO / "crm.yaml").read_text(encoding="utf-8"))
    config.setdefault("delivery", {})["batch_size"] = 2
    (tmp_path / "crm.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.setenv("CRM_CONFIG", str(tmp_path / "crm.yaml"))
    monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(lenient_campaigns(tmp_path / "campaigns")))
    day = recent_day()
    add_customers(engine, *[{"customer_id": f"C{i}", "birthday": born_on(day)} for i in range(5)])
    with SmtpServer() as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        dag = _bag(monkeypatch).dags["crm_campaign_birthday"]
        for t in dag.tasks:
            monkeypatch.setattr(t, "retries", 0)
        run = dag.test(run_conf={"as_of": str(day), "dry_run": False, "audience_limit": None,
                                 "test_recipient": None})
        assert run.state == "success"
        received = srv.handler.parsed()
    assert sorted(m["to"].addresses[0].addr_spec for m in received) == [f"c{i}@example.com" for i in range(5)]
    with engine.connect() as conn:
        assert conn.execute(select(Message.state, Message.batch_no)).all() and \
            set(conn.execute(select(Message.state)).scalars()) == {"sent"}
        assert sorted(set(conn.execute(select(Message.batch_no)).scalars())) == [0, 1, 2]
    sends = [ti for ti in run.get_task_instances() if ti.task_id == "send"]
    assert len(sends) == 3 and {ti.state for ti in sends} == {"success"}


@pytest.mark.airflow
def test_a_dag_resumed_after_weeks_paused_sends_nothing_stale(airflow_db, use_settings, engine, cfg, monkeypatch):
    """Planned before a pause (three weeks ago), swept by the first run after it (the next day's): the
    birthday mails of both days are expired with their reason, the SMTP server gets nothing, the run
    reconciles, and the report and `crm campaign status` count them."""
    from crm_tasks.campaigns.definitions import get_campaign
    from crm_tasks.campaigns.planning import plan_campaign
    from crm_tasks.delivery.send import campaign_status
    from tests.smtp_servers import SmtpServer

    paused, resumed = recent_day(21), recent_day(20)
    add_customers(engine, *[{"customer_id": f"P{i}", "birthday": born_on(paused)} for i in range(3)],
                  *[{"customer_id": f"R{i}", "birthday": born_on(resumed)} for i in range(3)])
    before = plan_campaign(engine, cfg, get_campaign(cfg, "birthday"), paused, sample=0)
    with SmtpServer() as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        dag = _bag(monkeypatch).dags["crm_campaign_birthday"]
        for t in dag.tasks:
            monkeypatch.setattr(t, "retries", 0)
        run = dag.test(run_conf={"as_of": str(resumed), "dry_run": False, "audience_limit": None,
                                 "test_recipient": None})
        assert run.state == "success"
        assert srv.handler.messages == []
    with engine.connect() as conn:
        rows = conn.execute(select(Message.customer_id, Message.state, Message.last_error, Message.run_id)).all()
    assert {state for _, state, _, _ in rows} == {"expired"}
    assert {cid[0] for cid, *_ in rows} == {"P", "R"} and len(rows) >= before.recipients + 2
    assert {why for _, _, why, r in rows if r == before.run_id} == {
        f"stale: not sent on its day, {paused} (max_lateness_days: 0)"}
    report = next(ti for ti in run.get_task_instances() if ti.task_id == "report").xcom_pull(task_ids="report")
    assert report["reconciles"] and set(report["states"]) == {"expired"}
    assert sum(campaign_status(engine, cfg, "birthday", paused)["runs"][0]["states"].values()) == before.recipients
