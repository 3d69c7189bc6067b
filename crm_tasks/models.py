"""The CRM store's tables. Migrations in ``crm_tasks/migrations`` create them."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_tasks.types import Money, UtcDateTime

# An auto-incrementing 64-bit key; on SQLite it must be INTEGER to alias the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class BatchStatus(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    REJECTED = "rejected"
    UNREADABLE = "unreadable"
    REPLACED = "replaced"


class IngestBatch(Base):
    """One landing file, read once: where it came from, its checksum, and how its rows reconciled."""

    __tablename__ = "ingest_batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # 'customers' | 'purchases'
    partition_date: Mapped[date] = mapped_column(Date)
    file_path: Mapped[str] = mapped_column(String(512))  # relative to the landing folder
    checksum: Mapped[str] = mapped_column(String(64))  # sha256 of the file's bytes
    file_size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_duplicate: Mapped[int] = mapped_column(BigInteger, default=0)
    # Good rows of a rejected file: read and valid, but not loaded because the file was rejected.
    rows_withheld: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_columns: Mapped[list] = mapped_column(Json, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    replaced_by: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_ingest_batches_file", "file_path", "status"),)


class Customer(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    phone: Mapped[str | None] = mapped_column(String(16), index=True)  # E.164
    birthday: Mapped[date | None] = mapped_column(Date)
    locale: Mapped[str] = mapped_column(String(35))  # BCP 47
    timezone: Mapped[str] = mapped_column(String(64))  # IANA
    country: Mapped[str] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    email_consent: Mapped[bool]
    attributes: Mapped[dict] = mapped_column(Json, default=dict)  # declared custom attributes
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    batch_id: Mapped[int] = mapped_column(BigInteger)  # the batch that last wrote the profile


class Purchase(Base):
    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    purchased_at: Mapped[datetime] = mapped_column(UtcDateTime)
    amount: Mapped[Decimal] = mapped_column(Money)  # negative: refund or return
    currency: Mapped[str] = mapped_column(String(3))  # ISO 4217
    store_id: Mapped[str] = mapped_column(String(64))
    sku: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    coupon_code: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[int] = mapped_column(BigInteger)
    line_no: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # Metrics rebuilds and every per-customer query walk this index. There is
        # deliberately none on batch_id: only replacing a corrected file looks rows up
        # by batch, rarely, and a scan then costs less than maintaining an index on
        # every nightly insert.
        Index("ix_purchases_customer", "customer_id", "purchased_at"),
    )


class QuarantinedRow(Base):
    """A rejected input row, kept verbatim with the reason, so nothing is lost."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ingest_batches.id"), index=True)
    file_path: Mapped[str] = mapped_column(String(512))
    line_no: Mapped[int] = mapped_column(BigInteger)
    raw_text: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class CustomerMetrics(Base):
    """Purchase metrics per customer and currency (amounts are never converted)."""

    __tablename__ = "customer_metrics"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    # None when the only rows in this currency are refunds (of purchases made before the data starts).
    first_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    orders: Mapped[int] = mapped_column(BigInteger)  # transactions with amount >= 0
    refunds: Mapped[int] = mapped_column(BigInteger)  # transactions with amount < 0
    items: Mapped[int] = mapped_column(BigInteger)  # sum of quantity over orders
    revenue: Mapped[Decimal] = mapped_column(Money)  # net: orders minus refunds
    avg_basket: Mapped[Decimal | None] = mapped_column(Money)  # revenue / orders
    favourite_category: Mapped[str | None] = mapped_column(String(64))


class CustomerCategoryMetrics(Base):
    """The incremental state behind customer_metrics: sums per customer, currency and category."""

    __tablename__ = "customer_category_metrics"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    orders: Mapped[int] = mapped_column(BigInteger)
    refunds: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Money)
    order_revenue: Mapped[Decimal] = mapped_column(Money)  # revenue of orders only: the favourite's tie-break


class MetricsDirty(Base):
    """Customers whose metrics must be re-derived (and, with ``rebuild``, recomputed from
    their purchases); filled and drained inside one ingest transaction."""

    __tablename__ = "metrics_dirty"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rebuild: Mapped[bool]


__all__ = [
    "Base", "BatchStatus", "Customer", "CustomerCategoryMetrics", "CustomerMetrics", "IngestBatch", "MetricsDirty",
    "Purchase", "QuarantinedRow",
]
