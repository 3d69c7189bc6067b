"""The campaign DAG factory: one DAG per campaign file, broken files isolated, runs through Airflow."""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from sqlalchemy import select

from crm_tasks.campaigns import load_campaigns
from crm_tasks.config import load_settings, settings
from crm_tasks.models import CampaignRun, Message
from tests.campaign_factories import add_customers
from tests.conftest import REPO

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
    # Not a dry run, to a test recipient: the rendered messages are planned for that address only.
    run = dag.test(run_conf={"as_of": "2027-04-02", "dry_run": False, "audience_limit": 1,
                             "test_recipient": "qa@example.org"})
    assert run.state == "success"
    with engine.connect() as conn:
        assert conn.execute(select(Message.recipient)).scalars().all() == ["qa@example.org"]


def test_a_misspelt_frequency_cap_is_an_error_not_the_default(tmp_path):
    from crm_tasks.campaigns import parse_campaign
    from crm_tasks.errors import ConfigError

    path = tmp_path / "capped.yaml"
    path.write_text("name: capped\nkind: segment\ntemplate: offer\nschedule: {cron: '0 6 * * *'}\n"
                    "audience: {segment: lifecycle:at_risk}\nfrequency_cap: {messages: 2, dayz: 7}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="frequency_cap.dayz: unknown field; did you mean 'days'"):
        parse_campaign(path, load_settings())
