"""Targeted coupons: what a coupon is valid on, stored on the coupon so that redemption can check it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # scope: any | category | product. Coupons issued before this revision were valid on anything, hence the
    # server default; scope_value is the category or product sku the customer's recommendations gave at planning
    # (a copy, not a key: the coupon keeps its scope when the catalogue or the lists change).
    with op.batch_alter_table("coupons") as t:
        t.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="any"))
        t.add_column(sa.Column("scope_value", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("coupons") as t:
        t.drop_column("scope_value")
        t.drop_column("scope")
