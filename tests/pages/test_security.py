"""Every data route of the /crm app is behind Airflow's login; only the e-mail endpoints are public.

The app is built exactly as the plugin builds it, and its routes are enumerated: a route added later is
checked too, and one meant to be public must be added to the allow-list below, on purpose."""

from __future__ import annotations

import importlib.util

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from tests.conftest import REPO

# (method, path) of the routes readers, mail clients and providers reach without logging in; each proves
# itself with a signed token or the provider's signature (crm_tasks.delivery).
PUBLIC = {
    ("GET", "/unsubscribe/{token}"), ("POST", "/unsubscribe/{token}"),
    ("GET", "/r/{token}"), ("GET", "/o/{token}.gif"),
    ("POST", "/webhooks/ses"), ("POST", "/webhooks/mailgun"),
}
PAGES = {"/overview", "/segments", "/sales", "/campaigns", "/data-quality"}


def _plugin():
    spec = importlib.util.spec_from_file_location("crm_plugin_under_test", REPO / "plugins" / "crm_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CrmPlugin


def _routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, HEAD aside (Starlette answers it as GET)."""
    out, others = [], []
    for r in app.routes:
        if isinstance(r, Route | APIRoute):
            out += [(m, r.path) for m in r.methods if m != "HEAD"]
            # A plain Starlette route carries no FastAPI dependency, so no login: only public ones may be.
            if not isinstance(r, APIRoute):
                assert {(m, r.path) for m in r.methods if m != "HEAD"} <= PUBLIC, r
        else:
            others.append(r)
    # A mount (a static folder, a sub-app) would skip the route dependencies: none may exist.
    assert not others, f"routes outside the login's reach: {others}"
    return sorted(out)


def _url(path: str) -> str:
    return path.replace("{token}", "x")


@pytest.fixture(scope="module")
def plugin_app():
    [entry] = _plugin().fastapi_apps
    assert entry["url_prefix"] == "/crm"
    return entry["app"]


def test_the_plugin_app_holds_the_public_endpoints_and_the_pages(plugin_app):
    routes = set(_routes(plugin_app))
    assert PUBLIC <= routes
    assert {("GET", p) for p in PAGES} <= routes


def test_every_route_but_the_public_ones_refuses_a_request_without_credentials(plugin_app, airflow_token):
    # airflow_token: the auth manager that judges a token exists, as in the api-server.
    client = TestClient(plugin_app)
    protected = [(m, p) for m, p in _routes(plugin_app) if (m, p) not in PUBLIC]
    assert len(protected) >= len(PAGES)
    for method, path in protected:
        assert client.request(method, _url(path)).status_code == 401, (method, path)
        bad = client.request(method, _url(path), headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 403, (method, path)
        forged = TestClient(plugin_app, cookies={"_token": "eyJhbGciOiJIUzUxMiJ9.e30.x"})
        assert forged.request(method, _url(path)).status_code in (401, 403), (method, path)


def test_the_public_endpoints_need_no_login(plugin_app):
    client = TestClient(plugin_app)
    # Their own check answers (a link that is not valid): not Airflow's 401.
    assert client.get("/unsubscribe/x").status_code == 400
    assert client.get("/r/x").status_code not in (401, 403)


def test_a_logged_in_user_opens_every_page_with_the_cookie_or_a_bearer_token(app, airflow_token):
    browser, script = TestClient(app, cookies={"_token": airflow_token}), TestClient(app)
    for path in sorted(PAGES):
        by_cookie = browser.get(path)
        assert by_cookie.status_code == 200, (path, by_cookie.text[:500])
        assert by_cookie.headers["cache-control"] == "no-store"
        assert "<nav class=\"crm\"" in by_cookie.text
        by_bearer = script.get(path, headers={"Authorization": f"Bearer {airflow_token}"})
        assert by_bearer.status_code == 200, path


def test_the_menu_opens_each_page_inside_the_ui():
    views = _plugin().external_views
    assert {v["href"] for v in views} == {f"crm{p}" for p in PAGES}
    for v in views:
        assert v["destination"] == "nav" and v["category"] == "CRM" and v["url_route"]
        assert not v["href"].startswith("/")  # relative: survives a sub-path deployment (<base href>)
    # Airflow's own model of a view accepts them.
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    for v in views:
        ExternalViewResponse(**v)
