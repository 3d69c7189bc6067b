"""Lateness: when a planned message becomes stale, and why.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as t:
        t.add_column(sa.Column("expires_at", UtcDateTime))
        t.add_column(sa.Column("expiry_reason", sa.String(160)))


def downgrade() -> None:
    with op.batch_alter_table("messages") as t:
        t.drop_column("expiry_reason")
        t.drop_column("expires_at")
