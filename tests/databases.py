"""Fresh CRM databases for tests without migrating each one: the migrations run once per test process.

Running the Alembic migrations took most of a database test's time (a third of a second on SQLite, over half
a second on PostgreSQL with the schema's drop). So each test process (each pytest-xdist worker) migrates once:

- SQLite: one migrated template file, copied for every test.
- PostgreSQL: one migrated schema that the process's tests take in turn, put back in its migrated state
  before each test: the tables a test wrote to are truncated (their sequences restarting), the rows the
  migrations wrote put back, and the schema's shape checked against the migrated one, so that a test which
  altered it (a downgrade, a table of its own) gets a newly migrated schema instead.

Either way every test's database gets secret keys of its own, as `crm db upgrade` generates them for each
database. tests/store/test_engine.py migrates databases from empty on both dialects, so the migrations
themselves stay tested.
"""

from __future__ import annotations

import secrets
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, create_engine, select, text, update
from sqlalchemy.exc import DBAPIError

from crm_tasks.store.engine import make_engine, upgrade
from crm_tasks.store.models import SecretKey


def give_own_keys(conn: Connection) -> None:
    """New random secrets for every key the migration generated, so that no two test databases share one."""
    table = SecretKey.__table__
    ids = conn.execute(select(table.c.id)).scalars().all()
    conn.execute(update(table).where(table.c.id == bindparam("key_id"))
                 .values(secret=bindparam("new_secret"), created_at=datetime.now(UTC)),
                 [{"key_id": key_id, "new_secret": secrets.token_hex(32)} for key_id in ids])


def migrated_sqlite_template(folder: Path) -> Path:
    """A SQLite file migrated to head, whole in one file (no write-ahead log beside it) so that it copies."""
    path = folder / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def sqlite_copy(template: Path, path: Path) -> str:
    """The URL of a copy of the template at ``path``, with keys of its own."""
    shutil.copyfile(template, path)
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        give_own_keys(conn)
    engine.dispose()
    return f"sqlite:///{path}"


def schema_url(server_url: str, schema: str) -> str:
    """The server's URL with ``schema`` as every connection's search path."""
    sep = "&" if "?" in server_url else "?"
    return f"{server_url}{sep}options=-csearch_path%3D{schema}"


# The schema's shape: its relations with their columns (type, nullability, default), indexes, constraints,
# functions and types, by name and definition, and the revision. Names and definitions, not oids: the
# library drops and recreates indexes around bulk loads, which leaves the schema as migrated.
_SHAPE = text("""
SELECT md5(string_agg(part, '|' ORDER BY part COLLATE "C")) FROM (
    SELECT concat_ws(':', c.relname, c.relkind, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
                     a.attisdropped, pg_get_expr(d.adbin, d.adrelid)) AS part
      FROM pg_class c
      LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
     WHERE c.relnamespace = CAST(:namespace AS oid) AND c.relkind <> 'i'
    UNION ALL
    SELECT concat_ws(':', 'index', indexdef) FROM pg_indexes WHERE schemaname = CAST(:schema AS text)
    UNION ALL
    SELECT concat_ws(':', 'constraint', conrelid::regclass, conname, pg_get_constraintdef(oid)) FROM pg_constraint
     WHERE connamespace = CAST(:namespace AS oid)
    UNION ALL
    SELECT concat_ws(':', 'function', oid::regprocedure) FROM pg_proc WHERE pronamespace = CAST(:namespace AS oid)
    UNION ALL
    SELECT concat_ws(':', 'type', typname) FROM pg_type WHERE typnamespace = CAST(:namespace AS oid)
    UNION ALL
    SELECT concat_ws(':', 'revision', version_num) FROM alembic_version
) AS shape
""")

# The tables a test wrote to: a table's file grows with its first row (even one rolled back) and only
# TRUNCATE shrinks it back to nothing. Truncating only these is what keeps the reset cheap: truncating
# all fifty tables costs as much as migrating.
_WRITTEN = text("""
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = CAST(:namespace AS oid) AND c.relkind = 'r' AND c.relname <> 'alembic_version'
   AND pg_relation_size(c.oid) > 0
""")

_SEQUENCES = text("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = :schema")

# Every object in the schema by name: what the migration made is remembered, anything else a test made.
_OBJECTS = text("""
SELECT 'relation:' || relname FROM pg_class WHERE relnamespace = CAST(:namespace AS oid)
UNION ALL SELECT 'function:' || oid::regprocedure FROM pg_proc WHERE pronamespace = CAST(:namespace AS oid)
UNION ALL SELECT 'type:' || typname FROM pg_type WHERE typnamespace = CAST(:namespace AS oid)
""")

# What a test created beside the migrated objects (a probe table of its own, a view, a function, a type), as
# DROP statements in an order that works: views before tables, tables (with their indexes and sequences)
# before loose sequences and indexes, then functions and types.
_EXTRAS = text("""
SELECT kind, name FROM (
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                          WHEN 'i' THEN 'INDEX' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
           format('%I', c.relname) AS name,
           CASE c.relkind WHEN 'v' THEN 1 WHEN 'm' THEN 1 WHEN 'S' THEN 3 WHEN 'i' THEN 3 ELSE 2 END AS step
      FROM pg_class c
     WHERE c.relnamespace = CAST(:namespace AS oid) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'f')
       AND 'relation:' || c.relname <> ALL(CAST(:known AS text[]))
    UNION ALL
    SELECT 'FUNCTION', p.oid::regprocedure::text, 4 FROM pg_proc p
     WHERE p.pronamespace = CAST(:namespace AS oid) AND 'function:' || p.oid::regprocedure <> ALL(CAST(:known AS text[]))
    UNION ALL
    SELECT 'TYPE', format('%I', t.typname), 5 FROM pg_type t
     WHERE t.typnamespace = CAST(:namespace AS oid) AND t.typtype IN ('e', 'd', 'r')
       AND 'type:' || t.typname <> ALL(CAST(:known AS text[]))
) AS extra ORDER BY step
""")


class ReusedSchema:
    """One test process's PostgreSQL schema, migrated once and put back in its migrated state for each test."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        self.schema = ""
        self.engine: Engine | None = None
        self.to_drop: list[str] = []  # seed copies, and schemas a test altered
        self._migrate_new_schema()

    def fresh(self) -> str:
        """The URL of the schema in its migrated state, with keys of its own."""
        try:
            with self.engine.begin() as conn:
                # A test that left a transaction open on the schema would make the reset wait for ever.
                conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
                if self._shape(conn) != self.shape:
                    self._drop_extras(conn)
                    if self._shape(conn) != self.shape:
                        raise _Altered
                self._empty(conn)
                give_own_keys(conn)
        except (_Altered, DBAPIError):  # altered, or locked: a new schema instead, the old one dropped at the end
            self.to_drop.append(self.schema)
            self.engine.dispose()
            self._migrate_new_schema()
            with self.engine.begin() as conn:
                give_own_keys(conn)
        return schema_url(self.server_url, self.schema)

    def drop(self) -> None:
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '10s'")
            for schema in (*self.to_drop, self.schema):
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.admin.dispose()

    def _migrate_new_schema(self) -> None:
        """A new schema migrated to head; what it holds now (the migrations' rows, sequence positions, shape)
        is what every reset puts back."""
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}")
            conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}_seed")
        self.engine = make_engine(schema_url(self.server_url, self.schema))
        upgrade(self.engine)
        with self.engine.begin() as conn:
            self.namespace = conn.execute(text("SELECT CAST(CAST(:schema AS text) AS regnamespace)::oid::bigint"),
                                          {"schema": self.schema}).scalar_one()
            self.shape = self._shape(conn)
            self.known = conn.execute(_OBJECTS, {"namespace": self.namespace}).scalars().all()
            self.seeded = conn.execute(_WRITTEN, {"namespace": self.namespace}).scalars().all()
            for table in self.seeded:
                conn.exec_driver_sql(f"CREATE TABLE {self.schema}_seed.{table} AS TABLE {self.schema}.{table}")
            self.sequences = dict(conn.execute(_SEQUENCES, {"schema": self.schema}).all())
        self.to_drop.append(f"{self.schema}_seed")

    def _shape(self, conn: Connection) -> str:
        return conn.execute(_SHAPE, {"namespace": self.namespace, "schema": self.schema}).scalar_one()

    def _drop_extras(self, conn: Connection) -> None:
        """Drop what the last test created in the schema beside the migrated objects."""
        for kind, name in conn.execute(_EXTRAS, {"namespace": self.namespace, "known": self.known}).all():
            conn.exec_driver_sql(f"DROP {kind} IF EXISTS {name} CASCADE")

    def _empty(self, conn: Connection) -> None:
        """Truncate the tables written to, put the migrations' rows back and the sequences where they were."""
        written = conn.execute(_WRITTEN, {"namespace": self.namespace}).scalars().all()
        if written:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(written)} RESTART IDENTITY CASCADE")
        for table in self.seeded:
            conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM {self.schema}_seed.{table}")
        for name, value in conn.execute(_SEQUENCES, {"schema": self.schema}).all():
            if value != self.sequences.get(name):
                target = self.sequences.get(name)
                conn.execute(text("SELECT setval(CAST(:seq AS regclass), :value, :called)"),
                             {"seq": name, "value": target or 1, "called": target is not None})


class _Altered(Exception):
    """The schema is no longer the migrated one."""
