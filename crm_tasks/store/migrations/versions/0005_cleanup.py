"""Cleanup: the archive of stale profiles, the record of merged duplicates, and one row per cleanup run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "archived_customers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("archived_on", sa.Date, nullable=False),
        sa.Column("purge_after", sa.Date, nullable=False),
        sa.Column("restored_on", sa.Date),
        sa.Column("purged_on", sa.Date),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("email", sa.String(254)),
        sa.Column("phone", sa.String(16)),
        sa.Column("birthday", sa.Date),
        sa.Column("locale", sa.String(35)),
        sa.Column("timezone", sa.String(64)),
        sa.Column("country", sa.String(2)),
        sa.Column("email_consent", sa.Boolean),
        sa.Column("attributes", Json),
        sa.Column("created_at", UtcDateTime),
        sa.Column("updated_at", UtcDateTime),
        sa.Column("batch_id", sa.BigInteger),
    )
    op.create_index("ix_archived_customers_customer", "archived_customers", ["customer_id", "status"])
    op.create_index("ix_archived_customers_purge", "archived_customers", ["status", "purge_after"])
    op.create_index("ix_archived_customers_archived_on", "archived_customers", ["archived_on", "reason"])
    op.create_table(
        "customer_merges",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("merged_id", sa.String(64), nullable=False),
        sa.Column("survivor_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("merged_on", sa.Date, nullable=False),
    )
    op.create_index("ix_customer_merges_merged_id", "customer_merges", ["merged_id"])
    op.create_index("ix_customer_merges_survivor_id", "customer_merges", ["survivor_id"])
    op.create_index("ix_customer_merges_merged_on", "customer_merges", ["merged_on"])
    op.create_table(
        "cleanup_runs",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("ran_at", UtcDateTime, nullable=False),
        sa.Column("profiles_before", sa.BigInteger, nullable=False),
        sa.Column("kept", sa.BigInteger, nullable=False),
        sa.Column("archived", sa.BigInteger, nullable=False),
        sa.Column("merged", sa.BigInteger, nullable=False),
        sa.Column("restored", sa.BigInteger, nullable=False),
        sa.Column("purged", sa.BigInteger, nullable=False),
        sa.Column("reasons", Json, nullable=False),
        sa.Column("archived_total", sa.BigInteger, nullable=False),
        sa.Column("restored_total", sa.BigInteger, nullable=False),
        sa.Column("purged_total", sa.BigInteger, nullable=False),
        sa.Column("in_grace", sa.BigInteger, nullable=False),
        sa.Column("active_share", sa.Float, nullable=False),
        sa.Column("at_risk_share", sa.Float, nullable=False),
        sa.Column("archived_share", sa.Float, nullable=False),
        sa.Column("parameters", Json, nullable=False),
    )


def downgrade() -> None:
    for table in ("cleanup_runs", "customer_merges", "archived_customers"):
        op.drop_table(table)
