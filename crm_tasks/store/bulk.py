"""The bulk paths of the CRM store: many rows in, many keys looked up.

Row-by-row ORM inserts manage a few thousand rows a second; the nightly load
needs hundreds of thousands. SQLite gets executemany on the raw driver inside
the caller's transaction; PostgreSQL gets COPY into a temporary table, then one
INSERT ... SELECT so that conflict handling stays in SQL.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam


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
