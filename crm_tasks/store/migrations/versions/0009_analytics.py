"""Analytics: the daily sales cube (by store and category, and by segment) with each day's fingerprint, customer lifetime value and its
fits, and the revenue forecast with its backtest.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import Money

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sales_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("store_id", sa.String(64), primary_key=True),
        sa.Column("category", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("refunds", sa.BigInteger, nullable=False),
        sa.Column("items", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("refunded", Money, nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
        sa.Column("new_buyers", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sales_daily_category", "sales_daily", ["category", "day"])
    op.create_table(
        "sales_days",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("purchases", sa.BigInteger, nullable=False),
        sa.Column("id_sum", sa.BigInteger, nullable=False),
        sa.Column("amount_sum", Money, nullable=False),
        sa.Column("first_orders", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sales_daily_segments",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("segment", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "customer_clv",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("frequency", sa.Integer, nullable=False),
        sa.Column("recency_days", sa.Float, nullable=False),
        sa.Column("tenure_days", sa.Float, nullable=False),
        sa.Column("monetary", Money),
        sa.Column("p_alive", sa.Float, nullable=False),
        sa.Column("purchases_90", sa.Float, nullable=False),
        sa.Column("purchases_365", sa.Float, nullable=False),
        sa.Column("clv_12m", Money),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "clv_fits",
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("repeat_customers", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_table(
        "revenue_forecasts",
        sa.Column("fit_date", sa.Date, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        *(sa.Column(c, sa.Float, nullable=False) for c in ("mean", "lower_80", "upper_80", "lower_95", "upper_95")),
    )
    op.create_table(
        "forecast_fits",
        sa.Column("fit_date", sa.Date, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("history_days", sa.Integer, nullable=False),
        *(sa.Column(c, sa.Float) for c in ("mape", "mase", "baseline_mape", "baseline_mase")),
        sa.Column("better_than_baseline", sa.Boolean),
        sa.Column("detail", sa.Text),
        sa.Column("seconds", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("forecast_fits", "revenue_forecasts", "clv_fits", "customer_clv", "sales_daily_segments",
                  "sales_days", "sales_daily"):
        op.drop_table(table)
