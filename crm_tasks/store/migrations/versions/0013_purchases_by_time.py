"""An index of purchases by instant (the sales cube reads the few days a night changed as a range), and the
time zone each table of local business days was built in (a change of crm.yaml's zone rebuilds them).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it, SQLite reads a day range by walking all of ix_purchases_customer (every purchase); with the
    # amount in it, the cube's fingerprint of every day reads the index alone, in order.
    op.create_index("ix_purchases_time", "purchases", ["purchased_at", "amount"])
    op.create_table(
        "derived_zones",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("timezone", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("derived_zones")
    op.drop_index("ix_purchases_time", "purchases")
