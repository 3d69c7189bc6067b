"""Product recommendations: co-purchase statistics, each customer's list, what was shown, and evaluations.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The latest refresh only: a night replaces both tables whole (history would cost ten million rows a night).
    op.create_table(
        "product_pairs",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("other_sku", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("support", sa.Integer, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("lift", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "customer_recommendations",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("rank", sa.SmallInteger, primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source_sku", sa.String(64)),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "recommendation_runs",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("window_start", sa.Date, nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
        sa.Column("pairs", sa.BigInteger, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("cross_sell", sa.BigInteger, nullable=False),
        sa.Column("up_sell", sa.BigInteger, nullable=False),
        sa.Column("popular", sa.BigInteger, nullable=False),
        sa.Column("short_lists", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("computed_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "recommendation_impressions",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("shown_on", sa.Date, primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "recommendation_evaluations",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("holdout_days", sa.Integer, primary_key=True),
        sa.Column("cut", sa.Date, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("model_hit_rate_at_5", sa.Float),
        sa.Column("model_recall_at_10", sa.Float),
        sa.Column("popularity_hit_rate_at_5", sa.Float),
        sa.Column("popularity_recall_at_10", sa.Float),
        sa.Column("computed_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("recommendation_evaluations", "recommendation_impressions", "recommendation_runs",
                  "customer_recommendations", "product_pairs"):
        op.drop_table(table)
