"""The ORM models and the Alembic migrations describe the same schema, on both dialects, migrating from empty."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from crm_tasks.errors import ConfigError
from crm_tasks.store.engine import check_schema, head_revision
from crm_tasks.store.models import Base


def test_models_match_migrations(engine_from_empty):
    assert check_schema(engine_from_empty) == head_revision()
    with engine_from_empty.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_urls_from_airflow_connection_fields():
    from crm_tasks.store.engine import url_from_connection

    assert url_from_connection("sqlite", "/srv/crm/crm.db", None, None, None, None) == "sqlite:////srv/crm/crm.db"
    url = url_from_connection("postgres", "db.internal", "crm", "s3cr:t", 5432, "crm",
                              {"sslmode": "require", "unrelated": "x"})
    assert url == "postgresql+psycopg://crm:s3cr%3At@db.internal:5432/crm?sslmode=require"
    with pytest.raises(ConfigError, match="use postgres"):
        url_from_connection("mysql", "h", None, None, None, "crm")
