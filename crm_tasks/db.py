"""Engine creation, schema migrations and the bulk-load paths of the CRM store."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, bindparam, create_engine, event

from crm_tasks.errors import SchemaNotReady

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


# --- bulk loading -------------------------------------------------------------
# Row-by-row ORM inserts manage a few thousand rows a second; the nightly load
# needs hundreds of thousands. SQLite gets executemany on the raw driver inside
# the caller's transaction; PostgreSQL gets COPY into a temporary table, then one
# INSERT ... SELECT so that conflict handling stays in SQL.


def bulk_insert(conn: Connection, table: str, columns: list[str], rows: list[tuple], on_conflict: str = "") -> int:
    """Insert ``rows`` into ``table``; ``on_conflict`` is an ON CONFLICT clause or ''.

    Returns how many rows the database reports as written (inserted or updated).
    """
    if not rows:
        return 0
    raw = conn.connection.driver_connection
    cols = ", ".join(columns)
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        cur = raw.cursor()
        try:
            cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) {on_conflict}", rows)
            return cur.rowcount
        finally:
            cur.close()
    stage = f"stage_{table}"
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        cur.execute(f"TRUNCATE {stage}")
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        # The stage has no conflict target; order keeps "first line wins" for DO NOTHING.
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {on_conflict}")
        return cur.rowcount


def dialect_insert(conn: Connection):
    """The dialect's ``insert`` construct, which has ``on_conflict_do_nothing``/``_update`` on both."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (sqlite if conn.dialect.name == "sqlite" else postgresql).insert


# Bound values per statement: SQLite builds before 3.32 allow at most 999.
IN_CHUNK = 900


def rows_in(conn: Connection, stmt, column, values) -> list:
    """The rows of ``stmt`` with ``column`` among ``values``, however many: one statement per chunk."""
    values = list(values)
    stmt = stmt.where(column.in_(bindparam("in_values", expanding=True)))
    rows: list = []
    for i in range(0, len(values), IN_CHUNK):
        rows += conn.execute(stmt, {"in_values": values[i:i + IN_CHUNK]}).all()
    return rows


def explain_url(url: str) -> str:
    """The URL with any password masked, for messages and reports."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

