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


def test_one_click_post_unsubscribes_and_the_next_plan_excludes_the_customer(engine, cfg, client, keys):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "birthday": date(1990, 5, 10)})
    token = unsubscribe_token("C1", keys.signing)
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


def test_forged_and_re_pointed_tokens_are_refused(engine, cfg, client, keys):
    add_customers(engine, {"customer_id": "C1"}, {"customer_id": "C2"})
    good = unsubscribe_token("C1", keys.signing)
    other = unsubscribe_token("C2", keys.signing)
    re_pointed = other.split(".")[0] + "." + good.split(".")[1]  # C2's id with C1's signature
    forged = unsubscribe_token("C1", "another-deployments-secret-key-xxxxxxxx")
    for token in (re_pointed, forged, "garbage", good[:-2]):
        assert client.post(f"/unsubscribe/{token}", **ONE_CLICK).status_code == 400, token
        assert client.get(f"/unsubscribe/{token}").status_code == 400
    assert suppressions(engine) == 0


def test_a_post_without_the_one_click_field_changes_nothing(engine, cfg, client, keys):
    add_customers(engine, {"customer_id": "C1"})
    token = unsubscribe_token("C1", keys.signing)
    assert client.post(f"/unsubscribe/{token}").status_code == 400
    assert suppressions(engine) == 0


def test_the_airflow_plugin_mounts_the_app_under_crm():
    import importlib.util

    from airflow.plugins_manager import AirflowPlugin

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("crm_plugin", REPO / "plugins" / "crm_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.CrmPlugin()  # Airflow instantiates it, then reads its apps
    assert isinstance(plugin, AirflowPlugin)
    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/crm"
    paths = {route.path for route in app["app"].routes}
    assert "/unsubscribe/{token}" in paths


def _plan_birthday(engine, cfg) -> set[str]:
    result = plan_campaign(engine, cfg, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC),
                           record=False)
    return {m.customer_id for m in result.sample}


def test_an_opt_out_during_the_grace_period_survives_a_restore(engine, cfg, client, keys):
    from crm_tasks.cleanup.archive import run_cleanup
    from crm_tasks.cleanup.restore import restore
    from tests.cleanup.support import LONG_AGO, permissive

    add_customers(engine, {"customer_id": "OLD", "birthday": date(1990, 5, 10), "updated_at": LONG_AGO},
                  {"customer_id": "NEW", "birthday": date(1990, 5, 10)})
    assert run_cleanup(engine, permissive(cfg), date(2026, 3, 31)).archived == 1
    done = client.post(f"/unsubscribe/{unsubscribe_token('OLD', keys.signing)}", **ONE_CLICK)
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert suppressions(engine) == 1
    restore(engine, cfg, "OLD", on=date(2026, 4, 2))
    assert _plan_birthday(engine, cfg) == {"NEW"}  # back, and still not mailed


def test_a_merged_away_profile_unsubscribes_the_profile_it_lives_on(engine, cfg, client, keys):
    from crm_tasks.cleanup.archive import run_cleanup
    from tests.cleanup.support import permissive

    twin = {"birthday": date(1990, 5, 10), "email": "twin@example.com"}
    add_customers(engine, {"customer_id": "A", **twin, "updated_at": datetime(2026, 1, 1, tzinfo=UTC)},
                  {"customer_id": "B", **twin, "updated_at": datetime(2026, 2, 1, tzinfo=UTC)})
    assert run_cleanup(engine, permissive(cfg), date(2026, 3, 31)).merged == 1  # A merged into B
    assert _plan_birthday(engine, cfg) == {"B"}
    assert client.post(f"/unsubscribe/{unsubscribe_token('A', keys.signing)}", **ONE_CLICK).status_code == 200
    assert _plan_birthday(engine, cfg) == set()


def test_purged_erased_and_unknown_ids_are_answered_truthfully(engine, cfg, client, keys):
    from crm_tasks.delivery.suppression import email_hash

    with engine.begin() as conn:  # what a purge leaves: the address's hash under the pseudonymous id
        conn.execute(Suppression.__table__.insert().values(
            email_hash=email_hash("gone@example.com", keys.hashing), customer_id="PURGED",
            reason="purged:inactive", created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    purged = client.post(f"/unsubscribe/{unsubscribe_token('PURGED', keys.signing)}", **ONE_CLICK)
    assert purged.status_code == 200 and "You are unsubscribed" in purged.text
    unknown = client.post(f"/unsubscribe/{unsubscribe_token('NEVER', keys.signing)}", **ONE_CLICK)
    assert unknown.status_code == 404 and "unsubscribed" not in unknown.text  # no pretended success
    assert suppressions(engine) == 1


def test_the_public_route_reads_no_large_body(engine, cfg, client, keys):
    add_customers(engine, {"customer_id": "C1"})
    url = f"/unsubscribe/{unsubscribe_token('C1', keys.signing)}"
    big = b"List-Unsubscribe=One-Click&pad=" + b"x" * 5_000_000
    said = client.post(url, content=big, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert said.status_code == 413
    streamed = client.post(url, content=iter([big[i:i + 4096] for i in range(0, len(big), 4096)]),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413  # no Content-Length to trust: the stream is cut off
    assert suppressions(engine) == 0
    assert client.post(url, **ONE_CLICK).status_code == 200


def test_a_source_that_keeps_sending_invalid_links_is_refused_for_a_while(engine, cfg, keys):
    from fastapi.testclient import TestClient

    from crm_tasks.delivery.unsubscribe import Strikes, create_app

    now = [1000.0]
    client = TestClient(create_app(lambda: cfg, lambda: engine, Strikes(limit=3, window=60, clock=lambda: now[0])))
    add_customers(engine, {"customer_id": "C1"})
    good = unsubscribe_token("C1", keys.signing)
    assert client.get(f"/unsubscribe/{good}").status_code == 200  # valid links are never counted
    ident, sig = good.split(".")
    flipped = f"{ident}.{'B' if sig[0] == 'A' else 'A'}{sig[1:]}"  # the signature's first 6 bits changed
    for bad in ("garbage", unsubscribe_token("C1", "x" * 40), flipped):
        assert client.get(f"/unsubscribe/{bad}").status_code == 400
    blocked = client.post(f"/unsubscribe/{good}", **ONE_CLICK)
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60" and suppressions(engine) == 0
    now[0] += 61  # a minute later the same source is served again
    assert client.post(f"/unsubscribe/{good}", **ONE_CLICK).status_code == 200 and suppressions(engine) == 1
