"""One-click unsubscribe: POST unsubscribes with no login, GET changes nothing, tokens cannot be forged
or turned on another customer, and the next plan never mails that customer."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.delivery.suppression import unsubscribe_token
from crm_tasks.store.models import Suppression
from tests.factories import add_customers, campaign

ONE_CLICK = {"content": "List-Unsubscribe=One-Click",
             "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


@pytest.fixture
def client(engine, cfg):
    from fastapi.testclient import TestClient

    from crm_tasks.delivery.unsubscribe import create_app

    return TestClient(create_app(lambda: cfg, lambda: engine))


def suppressions(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Suppression)).scalar()


def test_one_click_post_unsubscribes_and_the_next_plan_excludes_the_customer(engine, cfg, client):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "birthday": date(1990, 5, 10)})
    token = unsubscribe_token("C1", cfg.secret_key)
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert suppressions(engine) == 0  # a link scanner's GET changes nothing
    done = client.post(f"/unsubscribe/{token}", **ONE_CLICK)
    assert done.status_code == 200 and "unsubscribed" in done.text
    assert "set-cookie" not in done.headers and done.headers["cache-control"] == "no-store"
    assert client.post(f"/unsubscribe/{token}", **ONE_CLICK).status_code == 200  # twice: still one row
    assert suppressions(engine) == 1
    result = plan_campaign(engine, cfg, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC),
                           record=False)
    assert result.reasons == {"suppressed": 1} and [m.customer_id for m in result.sample] == ["C2"]


def test_forged_and_re_pointed_tokens_are_refused(engine, cfg, client):
    add_customers(engine, {"customer_id": "C1"}, {"customer_id": "C2"})
    good = unsubscribe_token("C1", cfg.secret_key)
    other = unsubscribe_token("C2", cfg.secret_key)
    re_pointed = other.split(".")[0] + "." + good.split(".")[1]  # C2's id with C1's signature
    forged = unsubscribe_token("C1", "another-deployments-secret-key-xxxxxxxx")
    for token in (re_pointed, forged, "garbage", good[:-2]):
        assert client.post(f"/unsubscribe/{token}", **ONE_CLICK).status_code == 400, token
        assert client.get(f"/unsubscribe/{token}").status_code == 400
    assert suppressions(engine) == 0


def test_a_post_without_the_one_click_field_changes_nothing(engine, cfg, client):
    add_customers(engine, {"customer_id": "C1"})
    token = unsubscribe_token("C1", cfg.secret_key)
    assert client.post(f"/unsubscribe/{token}").status_code == 400
    assert suppressions(engine) == 0


def test_the_airflow_plugin_mounts_the_app_under_crm():
    import importlib.util

    from airflow.plugins_manager import AirflowPlugin

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("crm_plugin", REPO / "plugins" / "crm_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.CrmPlugin
    assert issubclass(plugin, AirflowPlugin)
    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/crm"
    paths = {route.path for route in app["app"].routes}
    assert "/unsubscribe/{token}" in paths
