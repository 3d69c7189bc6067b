"""Campaigns: planning runs, their per-customer plans, the send ledger, coupons and suppressions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import Money, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "campaign_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_at", UtcDateTime, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("test_run", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("audience", sa.BigInteger, nullable=False),
        sa.Column("recipients", sa.BigInteger, nullable=False),
        sa.Column("holdout", sa.BigInteger, nullable=False),
        sa.Column("excluded", sa.BigInteger, nullable=False),
        sa.Column("reasons", Json, nullable=False),
        sa.Column("diff", Json, nullable=False),
        sa.Column("parameters", Json, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_campaign_runs_campaign", "campaign_runs", ["campaign", "as_of"])
    op.create_table(
        "campaign_plan",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("campaign_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("occurrence", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("coupon_code", sa.String(32)),
        sa.Column("send_at", UtcDateTime),
        sa.Column("local_send_at", sa.String(40)),
    )
    op.create_table(
        "messages",
        sa.Column("idempotency_key", sa.String(200), primary_key=True),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("occurrence", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("test", sa.Boolean, nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("locale", sa.String(8), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("coupon_code", sa.String(32)),
        sa.Column("send_at", UtcDateTime, nullable=False),
        sa.Column("context", Json, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_messages_customer", "messages", ["customer_id", "send_at"])
    op.create_index("ix_messages_run", "messages", ["run_id"])
    op.create_table(
        "coupons",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("value", Money, nullable=False),
        sa.Column("value_type", sa.String(8), nullable=False),
        sa.Column("currency", sa.String(3)),
        sa.Column("issued_on", sa.Date, nullable=False),
        sa.Column("expires_on", sa.Date, nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_coupons_campaign", "coupons", ["campaign"])
    op.create_table(
        "suppressions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("email_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_suppressions_customer_id", "suppressions", ["customer_id"])


def downgrade() -> None:
    for table in ("suppressions", "coupons", "messages", "campaign_plan", "campaign_runs"):
        op.drop_table(table)
