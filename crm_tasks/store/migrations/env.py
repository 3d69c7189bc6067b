"""Alembic environment: runs on the engine handed over by ``crm_tasks.store.engine.upgrade``,
or on the URL from the project's settings when Alembic is invoked directly."""

from alembic import context

from crm_tasks.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    from crm_tasks.settings import settings
    from crm_tasks.store.engine import make_engine

    engine = make_engine(settings().resolved_database_url())

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
