"""Segments: definitions, per-customer scores, membership history, daily sizes, runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import Money, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
OPEN = sa.text("valid_to IS NULL")
CLOSED = sa.text("valid_to IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("family", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("source", sa.String(512)),
        sa.Column("definition", Json),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "segment_runs",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("cutoff", UtcDateTime, nullable=False),
        sa.Column("computed_at", UtcDateTime, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("scored", sa.BigInteger, nullable=False),
        sa.Column("buyers_without_profile", sa.BigInteger, nullable=False),
        sa.Column("memberships", sa.BigInteger, nullable=False),
        sa.Column("entered", sa.BigInteger, nullable=False),
        sa.Column("exited", sa.BigInteger, nullable=False),
        sa.Column("parameters", Json, nullable=False),
        sa.Column("problems", Json, nullable=False),
    )
    op.create_table(
        "customer_scores",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("frequency", sa.BigInteger, nullable=False),
        sa.Column("monetary", Money, nullable=False),
        sa.Column("avg_basket", Money),
        sa.Column("recency_days", sa.Integer),
        sa.Column("tenure_days", sa.Integer),
        sa.Column("first_purchase_at", UtcDateTime),
        sa.Column("last_purchase_at", UtcDateTime),
        sa.Column("previous_gap_days", sa.Integer),
        sa.Column("r_score", sa.SmallInteger),
        sa.Column("f_score", sa.SmallInteger),
        sa.Column("m_score", sa.SmallInteger),
        sa.Column("rfm_segment", sa.String(32)),
        sa.Column("lifecycle", sa.String(16), nullable=False),
        sa.Column("value_tier", sa.String(16), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "segment_memberships",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("segment_id", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("valid_from", sa.Date, nullable=False),
        sa.Column("valid_to", sa.Date),
    )
    op.create_index("ux_segment_memberships_open", "segment_memberships", ["segment_id", "customer_id"],
                    unique=True, sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index("ix_segment_memberships_from", "segment_memberships", ["valid_from", "segment_id"])
    op.create_index("ix_segment_memberships_closed", "segment_memberships", ["valid_to", "segment_id", "customer_id"],
                    sqlite_where=CLOSED, postgresql_where=CLOSED)
    op.create_table(
        "segment_sizes",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("segment_id", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("entered", sa.BigInteger, nullable=False),
        sa.Column("exited", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "segment_stage",
        sa.Column("segment_id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for table in ("segment_stage", "segment_sizes", "segment_memberships", "customer_scores", "segment_runs",
                  "segments"):
        op.drop_table(table)
