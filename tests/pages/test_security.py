"""Every data route of the /crm app is behind Airflow's login; only the e-mail endpoints are public; the
customer-level routes need Airflow's Admin or Op role, erase and restore Admin.

The app is built exactly as the plugin builds it, and its routes are enumerated: a route added later is
checked too; one meant to be public must be added to the allow-list below, on purpose, and one that shows
a single customer or personal data must fall under the customer-level prefixes."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from tests.pages.conftest import browser, plugin_module

# (method, path) of the routes readers, mail clients and providers reach without logging in; each proves
# itself with a signed token or the provider's signature (crm_tasks.delivery).
PUBLIC = {
    ("GET", "/unsubscribe/{token}"), ("POST", "/unsubscribe/{token}"),
    ("GET", "/r/{token}"), ("GET", "/o/{token}.gif"),
    ("POST", "/webhooks/ses"), ("POST", "/webhooks/mailgun"),
}
PAGES = {"/overview", "/segments", "/sales", "/campaigns", "/customers", "/data-quality"}  # the menu
# Routes that show one customer's record, a segment's members or personal data: Admin or Op only.
STAFF_ONLY = ("/customers", "/segments/members")
ADMIN_ONLY = re.compile(r"^/customers/\{customer_id\}/(erase|restore)$")


def _plugin():
    """The plugin as Airflow holds it: an instance (its app is built when the api-server reads it)."""
    return plugin_module().CrmPlugin()


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
    """A concrete URL for a route's path: each path parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def _staff_only(path: str) -> bool:
    return any(path == p or path.startswith((p + "/", p + ".")) for p in STAFF_ONLY)


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


def test_a_logged_in_user_opens_every_page_with_the_cookie_or_a_bearer_token(app, tokens):
    viewer, script = TestClient(app, cookies={"_token": tokens["viewer"]}), TestClient(app)
    for path in sorted(PAGES - {"/customers"}):
        by_cookie = viewer.get(path)
        assert by_cookie.status_code == 200, (path, by_cookie.text[:500])
        assert by_cookie.headers["cache-control"] == "no-store"
        assert "<nav class=\"crm\"" in by_cookie.text
        by_bearer = script.get(path, headers={"Authorization": f"Bearer {tokens['viewer']}"})
        assert by_bearer.status_code == 200, path
    # The customer search: Op by cookie, Admin by bearer token.
    assert browser(app, tokens["op"]).get("/customers").status_code == 200
    assert script.get("/customers", headers={"Authorization": f"Bearer {tokens['admin']}"}).status_code == 200


def test_viewers_and_users_get_403_on_every_customer_level_route_and_ops_on_erase_and_restore(plugin_app, tokens):
    routes = [(m, p) for m, p in _routes(plugin_app) if (m, p) not in PUBLIC]
    staff = [(m, p) for m, p in routes if _staff_only(p)]
    # The customer search, record, purchases export, erase, restore, and a segment's members and their export.
    assert len(staff) >= 9 and {m for m, _ in staff} == {"GET", "POST"}
    assert sum(bool(ADMIN_ONLY.match(p)) for _, p in staff) == 4
    for role in ("viewer", "user"):
        client = browser(plugin_app, tokens[role])
        for method, path in staff:
            response = client.request(method, _url(path))
            assert response.status_code == 403, (role, method, path, response.text[:200])
            assert "Admin" in response.json()["detail"]
    op = browser(plugin_app, tokens["op"])
    for method, path in staff:
        if ADMIN_ONLY.match(path):
            assert op.request(method, _url(path)).status_code == 403, (method, path)
    # Every other data route opens for a viewer (a route that is neither is a test to write).
    for method, path in routes:
        if not _staff_only(path):
            assert method == "GET", (method, path)


def test_a_browser_is_told_in_a_page_what_went_wrong_and_what_to_do(plugin_app, tokens):
    html = {"Accept": "text/html,application/xhtml+xml"}
    viewer = browser(plugin_app, tokens["viewer"])
    refused = viewer.get("/customers/C1", headers=html)
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html")
    page = refused.text
    assert "<h1>Not allowed</h1>" in page and "Admin or Op role" in page and 'href="../overview"' in page
    assert refused.headers["Cache-Control"] == "no-store"
    anonymous = TestClient(plugin_app).get("/overview", headers=html)
    assert anonymous.status_code == 401 and "<h1>Not logged in</h1>" in anonymous.text
    # A script asking for JSON still gets JSON, and the e-mail endpoints keep their own answers.
    assert viewer.get("/customers/C1").json()["detail"].startswith("this page needs")
    assert "Not logged in" not in TestClient(plugin_app).get("/unsubscribe/not-a-token", headers=html).text


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


def test_roles_are_read_from_either_auth_manager_s_user():
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    page_user = plugin_module().page_user
    for role, staff, admin in (("viewer", False, False), ("user", False, False), ("op", True, False),
                               ("ADMIN", True, True), (None, False, False)):
        user = page_user(SimpleAuthManagerUser(username="u", role=role))
        assert (user.name, user.staff, user.admin) == ("u", staff, admin), role

    # The FAB auth manager's user (not installed here) carries role objects with a name: the same shape.
    class Role:
        def __init__(self, name):
            self.name = name

    class FabUser:
        roles = (Role("Viewer"), Role("Op"))

        def get_name(self):
            return "fab"

    user = page_user(FabUser())
    assert (user.name, user.roles, user.staff, user.admin) == ("fab", frozenset({"VIEWER", "OP"}), True, False)
