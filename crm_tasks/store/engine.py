"""The CRM store's engine: how it is opened (a URL, an Airflow connection's fields), and its schema migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from crm_tasks.errors import ConfigError, SchemaNotReady

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            # WAL lets readers (the CLI, reports) work while a nightly load writes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # 128 MiB page cache: bulk loads mostly append. Sorts (index builds, GROUP BY) spill to
            # temporary files rather than memory, so a 10M-row load stays within 2 GiB.
            cur.execute("PRAGMA cache_size=-131072")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the CRM database; returns the revision it is at afterwards."""
    command.upgrade(_alembic_config(engine), revision)
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head() or ""


def check_schema(engine: Engine) -> str:
    """Raise SchemaNotReady unless the database is at the code's head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotReady(
            f"the CRM database is at revision {current or 'none (empty)'} but this code needs {head}; "
            f"run `crm db upgrade` first"
        )
    return current


def explain_url(url: str) -> str:
    """The URL with any password masked, for messages and reports."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def url_from_connection(conn_type: str, host: str | None, login: str | None, password: str | None,
                        port: int | None, schema: str | None, extra: dict | None = None) -> str:
    """A SQLAlchemy URL from an Airflow connection's fields.

    Airflow's own ``get_uri()`` percent-encodes a SQLite path into something
    SQLAlchemy reads as a relative file name, so the URL is built from the fields.
    For ``sqlite`` the host is the database file; for ``postgres`` the schema is
    the database and extras such as ``options`` or ``sslmode`` become query parameters.
    """
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ConfigError("Airflow connection crm_db (sqlite) needs the database file as its host")
        return f"sqlite:///{host}"
    if kind in ("postgres", "postgresql"):
        query = {k: str(v) for k, v in (extra or {}).items() if k in ("options", "sslmode", "application_name")}
        return URL.create("postgresql+psycopg", username=login, password=password, host=host, port=port,
                          database=schema, query=query).render_as_string(hide_password=False)
    raise ConfigError(f"Airflow connection crm_db has type {conn_type!r}; use postgres (or sqlite for development)")
