"""An index of purchases by customer and product, for the nightly recommendations' baskets.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The refresh reads each customer's distinct products of the window (half the table at a year's window), by a
    # pass over the whole table, dropping the repeats one by one (SQLite: 14 s of CPU at 10M purchases) or hashing
    # them (PostgreSQL: 9-10 s). This index holds every column the read needs, in the order of the distinct pairs:
    # a pass over it alone, each pair once (2 s; 4.5 s). Ingest pays an entry per purchase (bench/README.md).
    op.create_index("ix_purchases_baskets", "purchases", ["customer_id", "sku", "purchased_at", "amount"])


def downgrade() -> None:
    op.drop_index("ix_purchases_baskets", "purchases")
