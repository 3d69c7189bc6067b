"""Shared fixtures: a fresh CRM database per test on SQLite and on PostgreSQL,
and one migrated Airflow metadata database per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration on first import: give the test session its own
# home before anything imports it, so that a developer's Airflow is never touched.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="crm-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ.pop("CRM_DATABASE_URL", None)
os.environ.pop("CRM_LANDING_DIR", None)

from crm_tasks.settings import load_settings, settings  # noqa: E402
from crm_tasks.store.engine import make_engine, upgrade  # noqa: E402

POSTGRES_URL = os.environ.get("CRM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    """None if the test server answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        eng = create_engine(POSTGRES_URL)
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure to connect means "not available"
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    problem = _postgres_available()
    if problem:
        # In CI the PostgreSQL half of the suite must never be skipped silently.
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI requires PostgreSQL)")
        pytest.skip(problem)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A migrated, empty CRM database: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'crm.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    request.getfixturevalue("postgres_ready")
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def engine(db_url):
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def landing(tmp_path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


@pytest.fixture
def cfg(landing, db_url):
    """Settings for one test: the repo's crm.yaml, this test's landing folder and database."""
    return load_settings(REPO / "crm.yaml", env={"CRM_LANDING_DIR": str(landing), "CRM_DATABASE_URL": db_url})


@pytest.fixture
def use_settings(cfg, monkeypatch):
    """Make the process-wide settings (read by the CLI and the DAGs) those of this test."""
    monkeypatch.setenv("CRM_LANDING_DIR", str(cfg.landing_dir))
    monkeypatch.setenv("CRM_DATABASE_URL", cfg.database_url)
    settings.cache_clear()
    yield cfg
    settings.cache_clear()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's Airflow metadata database once (dag.test() needs it)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return _AIRFLOW_HOME
