"""Small factories for landing files, and rows read back from the store."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import event, select

PURCHASE_HEADER = ["transaction_id", "customer_id", "purchased_at", "amount", "currency", "store_id", "sku",
                   "category", "quantity", "coupon_code"]
CUSTOMER_HEADER = ["customer_id", "first_name", "last_name", "email", "phone", "birthday", "locale", "timezone",
                   "country", "email_consent", "created_at", "updated_at"]


def purchase(tid: str, customer: str = "C1", at: str = "2026-03-01T10:00:00+05:30", amount: str = "100.00",
             currency: str = "INR", category: str = "grocery", quantity: str = "1", coupon: str = "") -> list[str]:
    return [tid, customer, at, amount, currency, "S1", "SKU-1", category, quantity, coupon]


def customer(cid: str, email: str = "", phone: str = "", birthday: str = "", locale: str = "en-IN",
             tz: str = "Asia/Kolkata", country: str = "IN", consent: str = "true",
             updated: str = "2026-03-01T09:00:00+05:30", first: str = "Asha", last: str = "Rao",
             **extra: str) -> dict[str, str]:
    row = dict(zip(CUSTOMER_HEADER, [cid, first, last, email or f"{cid.lower()}@example.com", phone, birthday,
                                     locale, tz, country, consent, "2025-01-01T00:00:00Z", updated]))
    row.update(extra)
    return row


def write_csv(landing: Path, source: str, day: str, rows, header=None, name: str | None = None) -> Path:
    path = landing / source / f"dt={day}" / (name or f"{source}.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if rows and isinstance(rows[0], dict):
        header = header or list(rows[0])
        w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    else:
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header or PURCHASE_HEADER)
        w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def rows(engine, model, *where):
    with engine.connect() as conn:
        return conn.execute(select(model).where(*where)).all()


def recent_day(days_ago: int = 2, tz: str = "Asia/Kolkata") -> date:
    """A day ``days_ago`` before today in the CRM's time zone: a run for it is due now, whatever the hour."""
    return datetime.now(ZoneInfo(tz)).date() - timedelta(days=days_ago)


def born_on(day: date, year: int = 1990) -> date:
    """A birthday that falls on ``day``'s month and day (29 February in a leap year)."""
    return day.replace(year=1992 if (day.month, day.day) == (2, 29) else year)


def lenient_campaigns(folder: Path, days: int = 7) -> Path:
    """The repository's campaigns with ``max_lateness_days: days``: a test that really sends, on the real
    clock, a run for ``recent_day()`` (whose messages would otherwise be stale by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((Path(__file__).parents[1] / "campaigns").glob("*.yaml")):
        (folder / src.name).write_text(src.read_text(encoding="utf-8") + f"\nmax_lateness_days: {days}\n",
                                       encoding="utf-8")
    return folder


@contextmanager
def statements_naming(engine, table: str) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` inside the block that name ``table``: a test counts them to prove
    a read is batched, not one per customer."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if table in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
