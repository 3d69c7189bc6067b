"""The send pool named in crm.yaml is created when a scheduler starts, never waited on; an existing
pool keeps the size its admin gave it. (The end to end run is in test_end_to_end.py.)"""

from __future__ import annotations

import pytest

from crm_tasks.settings import DeliverySettings


@pytest.fixture
def pools(airflow_db):
    from airflow.models.pool import Pool

    yield Pool
    for name in ("crm_test_new", "crm_test_sized"):
        Pool.delete_pool(name) if Pool.get_pool(name) else None


def test_a_named_missing_pool_is_created_with_parallel_sends_slots(pools):
    from crm_tasks.airflow.pools import ensure_pool

    assert ensure_pool(DeliverySettings(pool="crm_test_new", parallel_sends=3)) == "crm_test_new"
    assert pools.get_pool("crm_test_new").slots == 3
    assert ensure_pool(DeliverySettings(pool="crm_test_new", parallel_sends=9)) is None  # already there
    assert pools.get_pool("crm_test_new").slots == 3


def test_an_existing_pool_keeps_its_size_and_no_pool_means_nothing_to_create(pools):
    from crm_tasks.airflow.pools import ensure_pool

    pools.create_or_update_pool("crm_test_sized", slots=12, description="admin's", include_deferred=False)
    assert ensure_pool(DeliverySettings(pool="crm_test_sized")) is None
    assert pools.get_pool("crm_test_sized").slots == 12
    assert ensure_pool(DeliverySettings()) is None


def test_the_listener_runs_for_airflow_jobs_only(pools, monkeypatch):
    from airflow.jobs.job import Job

    from crm_tasks.airflow import pools as listener
    from crm_tasks.settings import settings

    monkeypatch.setenv("CRM_CONFIG", "")
    seen = []
    monkeypatch.setattr(listener, "ensure_pool", lambda delivery: seen.append(delivery.pool))
    settings.cache_clear()
    try:
        listener.on_starting(object())  # a task process's marker: it may not reach the metadata database
        assert seen == []
        listener.on_starting(Job.__new__(Job))
        assert seen == [settings().delivery.pool]
    finally:
        settings.cache_clear()


def test_a_task_process_loads_the_plugin_s_listener_without_the_api_server_s_imports(tmp_path):
    """Every task process loads the plugins for their listeners. The CRM plugin registers its listener
    there without importing FastAPI, Airflow's API security or the pages: those cost about 1.4 s of CPU per
    task, and only the api-server builds the app."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = """
import sys
from airflow.sdk.listener import get_listener_manager
names = [getattr(p, "__name__", "") for p in get_listener_manager().pm.get_plugins()]
heavy = [m for m in ("fastapi", "airflow.api_fastapi.core_api.security", "crm_tasks.pages.app") if m in sys.modules]
print(("crm_tasks.airflow.pools" in names), heavy)
"""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True []"
