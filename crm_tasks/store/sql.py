"""The one way set-based SQL is written here, where Core cannot say it well on both dialects.

Statements that move many rows at once (the recompute, metrics refresh, cleanup) are named
module-level constants, each with a comment saying which rule it encodes and which index it
relies on. The spellings that differ between SQLite and PostgreSQL come from this module, never
from an ``if dialect`` inside a stage (a stage may still take a step on one dialect only, such as
PostgreSQL's ANALYZE, and says why), and statements run through ``execute`` so that
dates and UTC instants are bound as each dialect stores them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, bindparam, text

from crm_tasks.store.types import MONEY_UNITS


def true(conn: Connection) -> str:
    """The literal TRUE (SQLite stores booleans as 1)."""
    return "1" if conn.dialect.name == "sqlite" else "TRUE"


def byte_order(conn: Connection) -> str:
    """A COLLATE clause that sorts text by bytes, as SQLite does: ties break the same on both dialects."""
    return ' COLLATE "C"' if conn.dialect.name == "postgresql" else ""


def on_commit_drop(conn: Connection) -> str:
    """How a scratch table ends with its transaction (SQLite's temporary tables live per connection)."""
    return "ON COMMIT DROP" if conn.dialect.name == "postgresql" else ""


def epoch_seconds(column: str, dialect: str) -> str:
    """Whole seconds since 1970 of a timestamp expression, the same on both dialects."""
    if dialect == "sqlite":
        return f"CAST(strftime('%s', {column}) AS INTEGER)"
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {column})) AS BIGINT)"


def scanned(column: str, conn: Connection) -> str:
    """``column`` in a range condition that should not drive an index, for a range holding a large share of the
    table: SQLite's planner takes any usable index, and a range of one with a table lookup per row reads half a
    table slower than one pass over it; a unary plus keeps the index out. PostgreSQL weighs that itself."""
    return f"+{column}" if conn.dialect.name == "sqlite" else column


def scratch(conn: Connection, name: str, columns: str, *indexes: str) -> None:
    """An empty temporary table for this transaction: never in the database's journal or WAL."""
    conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}) {on_commit_drop(conn)}")
    for index in indexes:
        conn.exec_driver_sql(index)
    conn.exec_driver_sql(f"DELETE FROM {name}")


def execute(conn: Connection, sql: str, params: dict | None = None, *, result_types: dict | None = None, **types):
    """Execute ``sql`` with only the parameters it names, binding those given in ``types`` with that
    SQLAlchemy type (dates and UTC instants stored as each dialect stores them); ``result_types`` reads
    result columns the same way (money as Decimal, instants as UTC)."""
    stmt = text(sql)
    used = {k for k in (params or {}) if f":{k}" in sql}
    stmt = stmt.bindparams(*(bindparam(k, type_=t) for k, t in types.items() if k in used))
    if result_types:
        stmt = stmt.columns(**result_types)
    return conn.execute(stmt, {k: v for k, v in (params or {}).items() if k in used})


def count(conn: Connection, sql: str, params: dict | None = None, **types) -> int:
    """The single number a ``SELECT COUNT(*) ...`` returns (0 for NULL)."""
    return int(execute(conn, sql, params, **types).scalar_one() or 0)


def money_per(total: str, n: str, dialect: str) -> str:
    """``total / n`` for money, rounded half away from zero to the 4 decimals money is stored with;
    NULL when ``n`` is 0. SQLite keeps money as integer 1/10000 units, so integer division is exact."""
    if dialect == "postgresql":
        return f"ROUND({total} / NULLIF({n}, 0), 4)"
    return f"CASE WHEN {n} > 0 THEN (2 * {total} + (CASE WHEN {total} >= 0 THEN {n} ELSE -{n} END)) / (2 * {n}) END"


def plus_days(column: str, days: str, dialect: str) -> str:
    """A UTC timestamp column plus a whole number of days (a SQL expression), exact to the microsecond on
    both dialects: SQLite's date functions keep only milliseconds, so its fraction is carried over as text."""
    if dialect == "sqlite":
        return f"(strftime('%Y-%m-%dT%H:%M:%S', {column}, '+' || ({days}) || ' days') || substr({column}, 20))"
    return f"({column} + ({days}) * INTERVAL '1 day')"


def money_as_float(column: str, dialect: str) -> str:
    """A money column as a float in currency units, for spreads and statistics (never for totals, which
    stay exact): SQLite stores money as integer 1/10000 units."""
    scale = f" / {MONEY_UNITS}.0" if dialect == "sqlite" else ""
    return f"(CAST({column} AS DOUBLE PRECISION){scale})"


def relaxed_commit(conn: Connection) -> None:
    """Let the current transaction's commit return before its write-ahead log reaches the disk, for writes
    not worth a disk flush each (a click count). On PostgreSQL a server crash may lose the last fraction of a
    second of such commits, never corrupt anything; SQLite (WAL, synchronous=NORMAL) already commits so."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def date_of_day_number(expr: str, dialect: str) -> str:
    """The date ``expr`` days after 1970-01-01, as each dialect stores a date."""
    if dialect == "sqlite":
        return f"date(({expr}) * 86400, 'unixepoch')"
    return f"(DATE '1970-01-01' + CAST({expr} AS INTEGER))"


def month_start_day_number(expr: str, dialect: str) -> str:
    """The day number (days since 1970-01-01) of the first day of the month of day number ``expr``."""
    if dialect == "sqlite":
        return f"CAST(julianday(({expr}) * 86400, 'unixepoch', 'start of month') - 2440587.5 AS INTEGER)"
    return f"(CAST(date_trunc('month', DATE '1970-01-01' + CAST({expr} AS INTEGER)) AS DATE) - DATE '1970-01-01')"


def utc_date(column: str, dialect: str) -> str:
    """The UTC date of a timestamp column, cheaply (a grouping key): text 'YYYY-MM-DD' on SQLite (the stored
    form's prefix), a date on PostgreSQL."""
    if dialect == "sqlite":
        return f"substr({column}, 1, 10)"
    return f"CAST({column} AT TIME ZONE 'UTC' AS DATE)"


def empty(conn: Connection, *tables: str) -> None:
    """Remove every row of ``tables`` inside the current transaction, before rewriting them whole. PostgreSQL:
    ``TRUNCATE``, transactional there (a rollback restores the rows) and leaving no dead rows to vacuum, where a
    ``DELETE`` of millions writes each row's deletion first; it locks the tables until the commit, so readers
    wait for the rewrite instead of reading the old rows. SQLite truncates a ``DELETE`` without ``WHERE`` itself."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)}")
    else:
        for table in tables:
            conn.exec_driver_sql(f"DELETE FROM {table}")


def scratch_memory(conn: Connection, mib: int) -> None:
    """Let this connection's scratch tables (``scratch``) keep ``mib`` MiB in memory before they go through
    files, for a job whose scratch tables hold millions of rows. SQLite gives its temporary database a page cache
    of its own, 2 MB by default whatever the main database's (engine.py); PostgreSQL keeps temporary tables in
    ``temp_buffers`` (8 MB by default), which can only be set before the session's first temporary table: a
    pooled connection that had one keeps its size. Both allocate as the tables grow and keep the setting (and on
    PostgreSQL the buffers) for the connection's life."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA temp.cache_size = -{mib * 1024}")
    elif not conn.exec_driver_sql("SELECT pg_my_temp_schema() <> 0").scalar():
        conn.exec_driver_sql(f"SET temp_buffers = '{mib}MB'")


def money_times(column: str, rate: str, num: str, den: str, dialect: str) -> str:
    """A money column times an exchange rate, rounded half away from zero to the money scale: PostgreSQL's
    ``ROUND(numeric)`` on ``rate``; SQLite's integer units times the same rate as the exact fraction
    ``num``/``den`` (integer division, rounded as ROUND does), so both dialects give the same cents."""
    if dialect == "postgresql":
        return f"ROUND({column} * ({rate}), 4)"
    return (f"(CASE WHEN {column} * ({num}) >= 0 THEN 2 * {column} * ({num}) + ({den}) "
            f"ELSE 2 * {column} * ({num}) - ({den}) END) / (2 * ({den}))")


def fence(dialect: str) -> str:
    """A no-op clause that ends a subquery and keeps the planner from merging it into the query around it
    (which would copy the subquery's expensive expressions into every place that uses them)."""
    return "LIMIT -1 OFFSET 0" if dialect == "sqlite" else "OFFSET 0"


def least(dialect: str) -> str:
    """The function name of the smaller of two values (NULL if either is NULL on SQLite, ignored on PostgreSQL:
    callers COALESCE first)."""
    return "MIN" if dialect == "sqlite" else "LEAST"


def greatest(dialect: str) -> str:
    """The function name of the larger of two values; see ``least``."""
    return "MAX" if dialect == "sqlite" else "GREATEST"


def json_merged(target: str, patch: str, dialect: str) -> str:
    """JSON object ``target`` with ``patch``'s keys written over it, a key whose patch value is null removed
    (a JSON merge patch, RFC 7396, one level deep as our attributes are)."""
    if dialect == "sqlite":
        return f"json_patch({target}, {patch})"
    return f"jsonb_strip_nulls({target} || {patch})"


def json_without_nulls(column: str, dialect: str) -> str:
    """JSON object ``column`` without its keys whose value is null."""
    return f"json_patch('{{}}', {column})" if dialect == "sqlite" else f"jsonb_strip_nulls({column})"


def json_blanked(column: str, keys: tuple[str, ...], dialect: str) -> str:
    """JSON ``column`` with the string at the path ``keys`` (object keys: code, never input) replaced by ''
    where it exists; nothing is added where it does not."""
    if dialect == "sqlite":
        return f"json_replace({column}, '$.{'.'.join(keys)}', '')"
    return f"jsonb_set({column}, '{{{','.join(keys)}}}', CAST('\"\"' AS jsonb), false)"


@contextmanager
def key_built_after(conn: Connection, table: str) -> Iterator[None]:
    """Write many rows into an empty ``table`` (a replaced table after ``empty``, or a scratch table) with its
    primary key built once at the end instead of kept up row by row: PostgreSQL drops the key's constraint and adds
    it back as it was, one sorted index build instead of an index entry per row (and, for a logged table, the
    index's pages in the WAL once instead of a record per row). Inside the current transaction, which holds the
    table's lock until the commit anyway after ``empty``; nothing may rely on the key in between (a conflict
    clause, a lookup). SQLite keeps the key: a ``WITHOUT ROWID`` table is stored in it, and its scratch tables'
    lookups need it."""
    if conn.dialect.name != "postgresql":
        yield
        return
    name, definition = conn.exec_driver_sql(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        f"WHERE conrelid = '{table}'::regclass AND contype = 'p'").one()
    conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    yield
    conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def hashed_only(conn: Connection, *tables: str) -> None:
    """Drop the primary keys of the scratch ``tables`` (``scratch``, still empty) on PostgreSQL, which joins them by
    hashing whole: there a key costs an index entry per row written (or a sorted build) and serves no statement.
    SQLite keeps them: its joins and ``NOT EXISTS`` look rows up through them."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        for (name,) in conn.exec_driver_sql(
                f"SELECT conname FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p'").all():
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')


@contextmanager
def distinct_in_index_order(conn: Connection) -> Iterator[None]:
    """For the statements inside, a ``DISTINCT`` (or ``GROUP BY``) over rows read from an index in the grouping's
    order keeps that order, without a hash of every row: PostgreSQL prices an index-only scan's pages above a pass
    over the table and hashes millions of rows instead, twice the time for half a table. SQLite uses the order as
    it is."""
    if conn.dialect.name != "postgresql":
        yield
        return
    was = conn.exec_driver_sql("SELECT current_setting('enable_hashagg')").scalar()
    conn.exec_driver_sql("SET LOCAL enable_hashagg = off")
    yield
    conn.exec_driver_sql(f"SET LOCAL enable_hashagg = {was}")


def in_key_order(conn: Connection, key: str) -> str:
    """``ORDER BY key`` for an ``INSERT ... SELECT`` into a table stored in its key (SQLite's ``WITHOUT ROWID``):
    rows that come in the key's order are appended to its B-tree instead of inserted all over it. On PostgreSQL,
    nothing: a table with its key built after the rows (``key_built_after``) takes rows in any order, and sorting
    millions of them first costs a sort spilled to disk."""
    return f"ORDER BY {key}" if conn.dialect.name == "sqlite" else ""
