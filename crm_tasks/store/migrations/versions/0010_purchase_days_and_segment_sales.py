"""Each customer's purchase days, kept as the metrics are, for the lifetime-value fit (every customer with
purchases is queued, so the first fit after the upgrade builds them); the segment recomputes the sales cube
by segment has seen, and an index on one customer's segment history.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import Money, UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_days",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("first_day", sa.Boolean, nullable=False),
        sa.Column("counts_day", sa.Boolean, nullable=False),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("value", Money, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "customer_days_dirty",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "sales_segment_runs",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("computed_at", UtcDateTime, nullable=False),
    )
    # The segment cube reports what the store cube does (it was never filled before this revision).
    with op.batch_alter_table("sales_daily_segments") as table:
        for name, kind in (("refunds", sa.BigInteger), ("items", sa.BigInteger), ("refunded", Money),
                           ("new_buyers", sa.BigInteger)):
            table.add_column(sa.Column(name, kind, nullable=False, server_default="0"))
    op.create_index("ix_segment_memberships_customer", "segment_memberships", ["customer_id", "valid_from"])
    op.execute("INSERT INTO customer_days_dirty (customer_id) SELECT DISTINCT customer_id FROM customer_metrics")


def downgrade() -> None:
    op.drop_index("ix_segment_memberships_customer", "segment_memberships")
    op.drop_table("sales_segment_runs")
    with op.batch_alter_table("sales_daily_segments") as table:
        for name in ("refunds", "items", "refunded", "new_buyers"):
            table.drop_column(name)
    op.drop_table("customer_days_dirty")
    op.drop_table("customer_days")
