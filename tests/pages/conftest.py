"""The CRM pages under test: the app the plugin builds, a real Airflow login token, and an HTML reader."""

from __future__ import annotations

import importlib.util
import uuid
from collections import defaultdict
from functools import cache
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from crm_tasks.pages.app import create_crm_app
from crm_tasks.settings import load_settings, settings
from crm_tasks.store.engine import make_engine, upgrade
from tests.conftest import POSTGRES_URL, REPO
from tests.databases import sqlite_copy


@cache
def plugin_module():
    """plugins/crm_plugin.py, loaded as the api-server loads it (the plugins folder is not a package)."""
    spec = importlib.util.spec_from_file_location("crm_plugin_under_test", REPO / "plugins" / "crm_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokens(airflow_db) -> dict[str, str]:
    """A JWT per simple-auth-manager role, signed by Airflow's own auth manager on the session's migrated
    metadata database: the token the UI keeps in its ``_token`` cookie (the user is named after the role).
    Checking one reads the ``revoked_token`` table."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    return {role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))
            for role in ("viewer", "user", "op", "admin")}


@pytest.fixture(scope="session")
def airflow_token(tokens) -> str:
    """A viewer's token: enough for every page but the customer-level ones."""
    return tokens["viewer"]


def _app(cfg, engine):
    """The /crm app with Airflow's own login, the plugin's user roles and its reader of Airflow's runs, as
    the plugin builds it, on a test's database."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    plugin = plugin_module()
    return create_crm_app(login=requires_authenticated(), who=plugin.login_user(), get_settings=lambda: cfg,
                          get_engine=lambda: engine, airflow_runs=plugin.airflow_runs)


def browser(app, token: str) -> TestClient:
    """A logged-in browser on ``app``: the UI's cookie on every request, and the app's own origin on a POST
    (as a browser sends it from the app's pages)."""
    return TestClient(app, cookies={"_token": token}, headers={"Origin": "http://testserver"})


@pytest.fixture
def app(cfg, engine):
    return _app(cfg, engine)


@pytest.fixture
def client(app, airflow_token):
    """A logged-in browser: the UI's cookie on every request."""
    with TestClient(app, cookies={"_token": airflow_token}) as c:
        yield c


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def crm(request, tmp_path_factory):
    """The scenario (tests/pages/scenario.py) in a database of each dialect, built once for a module whose
    tests only read it (as the pages do): ``engine``, ``cfg``, ``url`` and the campaign's ``run_id``. A fresh
    database with the same settings as ``cfg``: a copy of the migrated SQLite template, or a PostgreSQL schema
    of the module's own, migrated."""
    from sqlalchemy import create_engine, text

    from tests.pages import scenario

    tmp = tmp_path_factory.mktemp("crm")
    (tmp / "landing").mkdir()
    schema = None
    if request.param == "sqlite":
        url = sqlite_copy(request.getfixturevalue("sqlite_template"), tmp / "crm.db")
    else:
        request.getfixturevalue("postgres_ready")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    if schema:  # a schema of the module's own, beside the one its tests take in turn (tests/databases.py)
        upgrade(engine)
    base = load_settings(REPO / "crm.yaml", env={"CRM_LANDING_DIR": str(tmp / "landing"), "CRM_DATABASE_URL": url})
    cfg = base.model_copy(update={"results": base.results.model_copy(update={"global_control_share": 0.0})})
    run_id = scenario.everything(engine, cfg)
    yield SimpleNamespace(engine=engine, cfg=cfg, url=url, run_id=run_id)
    engine.dispose()
    if schema:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def crm_client(crm, airflow_token):
    """A logged-in browser on the scenario's pages."""
    with TestClient(_app(crm.cfg, crm.engine), cookies={"_token": airflow_token}) as c:
        yield c


@pytest.fixture
def staff_client(crm, tokens):
    """An Op user's browser on the scenario's pages (customer records, members, exports)."""
    with browser(_app(crm.cfg, crm.engine), tokens["op"]) as c:
        yield c


@pytest.fixture
def crm_cli(crm, monkeypatch):
    """The ``crm`` command reads the scenario's database (the process-wide settings)."""
    monkeypatch.setenv("CRM_LANDING_DIR", str(crm.cfg.landing_dir))
    monkeypatch.setenv("CRM_DATABASE_URL", crm.url)
    settings.cache_clear()
    yield crm
    settings.cache_clear()


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_CONTEXT = ("data-period", "data-night", "data-run", "data-cohort", "data-variant", "data-campaign", "data-batch",
            "data-segment", "data-from", "data-customer")


class Values(HTMLParser):
    """The text of every element with a ``data-key``, keyed by the ``data-*`` context of its ancestors (the
    row's period, the run, the variant...) and the key: what a reader sees next to each label."""

    def __init__(self, html: str):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.found: dict[tuple, list[str]] = defaultdict(list)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.stack.append((tag, dict(attrs)))
            if "data-key" in dict(attrs):
                self.found[self._key()].append("")

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        for i in range(len(self.stack) - 1, -1, -1):
            if "data-key" in self.stack[i][1]:
                key = self._key(i + 1)
                self.found[key][-1] += data
                break

    def _key(self, depth: int | None = None) -> tuple:
        stack = self.stack[:depth]
        context = tuple((a, attrs[a]) for _, attrs in stack[:-1] for a in _CONTEXT if a in attrs)
        return (*context, stack[-1][1]["data-key"])

    def get(self, *path: str) -> str:
        """The one text at this key, with context given as "attr=value" strings before the key."""
        context = tuple(tuple(p.split("=", 1)) for p in path[:-1])
        matches = [" ".join(v.split()) for k, vs in self.found.items() for v in vs
                   if k[-1] == path[-1] and all(c in k[:-1] for c in context)]
        assert len(matches) == 1, f"{path}: {matches}"
        return matches[0]


def number(text: str) -> float:
    """A number as a page shows it ("1,234.50", "12.5 %"), as a float."""
    return float(text.replace(",", "").replace("%", "").strip())
