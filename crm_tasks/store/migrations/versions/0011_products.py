"""The product catalogue: one row per SKU, the latest version loaded from products/ landing files.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import Money, UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign key from purchases: a sale of a SKU the catalogue does not list yet still loads.
    op.create_table(
        "products",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("name_hi", sa.String(200)),
        sa.Column("name_te", sa.String(200)),
        sa.Column("name_fa", sa.String(200)),
        sa.Column("name_ur", sa.String(200)),
        sa.Column("brand", sa.String(100)),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("price", Money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("image_url", sa.String(2048), nullable=False),
        sa.Column("in_stock", sa.Boolean, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("products")
