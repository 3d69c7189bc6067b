"""Column types that behave the same on SQLite and PostgreSQL.

Money is exact on both: NUMERIC(18, 4) on PostgreSQL, and on SQLite (whose
NUMERIC affinity silently turns decimals into floats) an integer count of
1/10000 units. Sums, minimums and comparisons in SQL therefore stay exact on
both; Python always sees ``Decimal``.
"""

from __future__ import annotations

from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
from sqlalchemy import BigInteger, DateTime, Numeric
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

MONEY_SCALE = 4
MONEY_UNITS = 10**MONEY_SCALE
_QUANT = Decimal(1).scaleb(-MONEY_SCALE)
MONEY_QUANTUM = _QUANT  # the smallest amount money keeps: 0.0001

# SQLite stores timestamps as ISO 8601 text with a 'T', which sorts correctly,
# is what numpy writes in bulk, and is understood by SQLite's date functions.
SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)
_SQLITE_DATETIME_REGEXP = r"(\d+)-(\d+)-(\d+)[T ](\d+):(\d+):(\d+)(?:\.(\d+))?"


class Money(TypeDecorator):
    impl = Numeric(18, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(18, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        d = Decimal(value).quantize(_QUANT, rounding=ROUND_HALF_UP)
        return int(d.scaleb(MONEY_SCALE)) if dialect.name == "sqlite" else d

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-MONEY_SCALE).quantize(_QUANT)
        return Decimal(value).quantize(_QUANT)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both dialects (timestamptz on PostgreSQL)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                sqlite.DATETIME(storage_format=SQLITE_DATETIME_FORMAT, regexp=_SQLITE_DATETIME_REGEXP)
            )
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a time zone first")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def timestamp_texts(utc_us: np.ndarray, dialect: str) -> list[str | None]:
    """UTC instants (naive datetime64[us]) as text in each dialect's storage form, for bulk loads.

    SQLite: the ISO form of SQLITE_DATETIME_FORMAT; PostgreSQL: ISO with 'Z'. NaT becomes None.
    """
    text = np.datetime_as_string(utc_us, unit="us", timezone="naive" if dialect == "sqlite" else "UTC")
    nat = np.isnat(utc_us)
    return np.where(nat, None, text).tolist() if nat.any() else text.tolist()


def to_base(amount: Decimal, currency: str, rates: dict[str, Decimal], base: str) -> Decimal:
    """An exact amount in ``currency`` in the base currency of segments, at crm.yaml's fixed rate, to the
    decimals money keeps (each currency's exact sum is converted once, then the results are added)."""
    from crm_tasks.errors import ConfigError

    if currency not in rates:
        raise ConfigError(f"amounts in {currency}, which has no exchange rate: add it under segments.exchange_rates "
                          f"in crm.yaml (units of {base} per unit)")
    return (amount * rates[currency]).quantize(_QUANT)
