"""The store's tests migrate databases from empty: every other test's database is a copy of one migrated
per test process (tests/databases.py), so these keep the migrations themselves tested on both dialects."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine

from crm_tasks.store.engine import make_engine, upgrade
from tests.conftest import POSTGRES_URL
from tests.databases import schema_url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_from_empty(request, tmp_path):
    """An engine on an empty database (a new SQLite file, a new PostgreSQL schema) migrated to head by Alembic,
    as `crm db upgrade` does on a new deployment."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'from-empty.db'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    request.getfixturevalue("postgres_ready")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = make_engine(schema_url(POSTGRES_URL, schema))
    upgrade(engine)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
