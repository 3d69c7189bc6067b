"""The bulk paths of the CRM store: many rows in, many keys looked up.

Row-by-row ORM inserts manage a few thousand rows a second; the nightly load
needs hundreds of thousands. SQLite gets executemany on the raw driver inside
the caller's transaction; PostgreSQL gets COPY into a temporary table, then one
INSERT ... SELECT so that conflict handling stays in SQL. Rows given as an Arrow
table (the purchase load's path) reach COPY as CSV written by Arrow in C++, with no
Python object per value, straight into the table unless a row conflicts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Table, bindparam

if TYPE_CHECKING:  # Arrow is imported where a table is written: the web app's inserts never load it
    import pyarrow as pa

COPY_BYTES = 8 << 20  # CSV handed to COPY per write


def bulk_insert(conn: Connection, table: str, columns: list[str], rows: list[tuple] | pa.Table,
                on_conflict: str = "") -> int:
    """Insert ``rows`` into ``table``; ``on_conflict`` is an ON CONFLICT clause or ''. ``rows`` may be an
    Arrow table with ``columns`` (PostgreSQL only: SQLite stores timestamps and money in its own forms).

    Returns how many rows the database reports as written (inserted or updated).
    """
    if not len(rows):
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
    arrow = type(rows).__module__.startswith("pyarrow")
    if arrow:
        direct = _copy_unless_conflict(raw, table, columns, rows)
        if direct is not None:
            return direct
    stage = f"stage_{table}"
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        cur.execute(f"TRUNCATE {stage}")
        if arrow:
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT csv)") as copy:
                for data in _csv_pieces(rows.select(columns)):
                    copy.write(data)
        else:
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        # The stage has no conflict target; order keeps "first line wins" for DO NOTHING.
        cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {on_conflict}")
        return cur.rowcount


def insert_columns(conn: Connection, table: Table, columns: dict[str, Sequence], on_conflict: str = "") -> int:
    """Insert rows given column by column (equal lengths; a column may be one value for every row) into the
    model's ``table`` through ``bulk_insert``, each column's values first converted by its SQLAlchemy type
    as an ORM insert converts them (UTC instants, JSON, money, booleans in each dialect's stored form). For
    plans of a hundred thousand messages: an ORM executemany spends more in building and binding its
    parameters than the database spends storing the rows."""
    count = max((len(v) for v in columns.values() if isinstance(v, list | tuple)), default=0)
    values = []
    for name, given in columns.items():
        # The type's own bind conversion, as SQLAlchemy applies it to a statement's parameters; a value shared by
        # every row is converted once.
        convert = table.c[name].type._cached_bind_processor(conn.dialect) or (lambda v: v)
        values.append([convert(v) for v in given] if isinstance(given, list | tuple) else [convert(given)] * count)
    return bulk_insert(conn, table.name, list(columns), list(zip(*values, strict=True)), on_conflict)


def copy_money(units: pa.Array) -> pa.Array:
    """Integer 1/10000 units as exact decimals, for an Arrow table bound for COPY."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.divide(units.cast(pa.int64()).cast(pa.decimal128(22, 0)), pa.scalar(10_000, pa.decimal128(5, 0)))


def copy_instants(instants: pa.Array) -> pa.Array:
    """UTC instants as text with their zone ('2026-03-01 04:30:00.000000Z'), for an Arrow table bound for
    COPY: Arrow formats a zoned timestamp through the time zone database, twenty times slower. Truncated
    to microseconds, as SQLite stores them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    naive = instants.cast(pa.timestamp("us", "UTC"), safe=False).cast(pa.timestamp("us"))
    return pc.binary_join_element_wise(naive.cast(pa.string()), pa.scalar("Z"), "")


def _copy_unless_conflict(raw, table: str, columns: list[str], rows: pa.Table) -> int | None:
    """COPY straight into ``table`` (a bulk load is nearly always new rows), in a savepoint; None when a
    row conflicts with a unique key, with nothing written: the caller then goes through the stage,
    where the ON CONFLICT clause decides row by row."""
    import psycopg.errors

    cols = ", ".join(columns)
    with raw.cursor() as cur:
        cur.execute("SAVEPOINT crm_bulk_copy")
        try:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)") as copy:
                for data in _csv_pieces(rows.select(columns)):
                    copy.write(data)
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT crm_bulk_copy")
            return None
        written = cur.rowcount
        cur.execute("RELEASE SAVEPOINT crm_bulk_copy")
        return written


def _csv_pieces(table: pa.Table):
    """The table as CSV for COPY, a few MiB at a time. Arrow quotes every string and writes a null as
    nothing, which is COPY's CSV reading of '' versus NULL."""
    import pyarrow.csv as pacsv

    rows = max(1, COPY_BYTES // max(1, table.nbytes // max(1, table.num_rows)))
    for start in range(0, table.num_rows, rows):
        buf = io.BytesIO()
        pacsv.write_csv(table.slice(start, rows), buf, pacsv.WriteOptions(include_header=False))
        yield buf.getbuffer()


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
