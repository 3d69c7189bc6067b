"""Ingest store: customers, purchases, ingest batches, quarantine, customer metrics.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import Money, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "ingest_batches",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("partition_date", sa.Date, nullable=False),
        sa.Column("file_path", sa.String(512), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_loaded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_duplicate", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_withheld", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dropped_columns", Json, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("replaced_by", sa.BigInteger),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime),
    )
    op.create_index("ix_ingest_batches_file", "ingest_batches", ["file_path", "status"])

    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("email", sa.String(254)),
        sa.Column("phone", sa.String(16)),
        sa.Column("birthday", sa.Date),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("email_consent", sa.Boolean, nullable=False),
        sa.Column("attributes", Json, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_customers_email", "customers", ["email"])
    op.create_index("ix_customers_phone", "customers", ["phone"])

    op.create_table(
        "purchases",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("transaction_id", sa.String(64), nullable=False, unique=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("purchased_at", UtcDateTime, nullable=False),
        sa.Column("amount", Money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("coupon_code", sa.String(64)),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("line_no", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_purchases_customer", "purchases", ["customer_id", "purchased_at"])

    op.create_table(
        "quarantine",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("ingest_batches.id"), nullable=False),
        sa.Column("file_path", sa.String(512), nullable=False),
        sa.Column("line_no", sa.BigInteger, nullable=False),
        sa.Column("raw_text", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_quarantine_batch_id", "quarantine", ["batch_id"])

    op.create_table(
        "customer_metrics",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("first_purchase_at", UtcDateTime),
        sa.Column("last_purchase_at", UtcDateTime),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("refunds", sa.BigInteger, nullable=False),
        sa.Column("items", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("avg_basket", Money),
        sa.Column("favourite_category", sa.String(64)),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "customer_category_metrics",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("category", sa.String(64), primary_key=True),
        sa.Column("first_purchase_at", UtcDateTime),
        sa.Column("last_purchase_at", UtcDateTime),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("refunds", sa.BigInteger, nullable=False),
        sa.Column("items", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("order_revenue", Money, nullable=False),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "metrics_dirty",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("rebuild", sa.Boolean, nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for table in ("metrics_dirty", "customer_category_metrics", "customer_metrics", "quarantine", "purchases", "customers", "ingest_batches"):
        op.drop_table(table)
