"""The shop-wide recommendation list, stored once: the list of every customer without a list of their own.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The latest refresh only, replaced with customer_recommendations: the best sellers in stock, rank 1 first.
    op.create_table(
        "popular_recommendations",
        sa.Column("rank", sa.SmallInteger, primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("popular_recommendations")
