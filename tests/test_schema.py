"""The ORM models and the Alembic migrations describe the same schema, on both dialects."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from crm_tasks.store.engine import check_schema, head_revision
from crm_tasks.store.models import Base


def test_models_match_migrations(engine):
    assert check_schema(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
