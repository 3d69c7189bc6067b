"""The reports the CRM pages open with, stored once a night, and an index of the ledger's messages in
trouble (the overview's failed runs without a scan of every message).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import UtcDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
TROUBLE = sa.text("state IN ('failed', 'unknown')")


def upgrade() -> None:
    op.create_table(
        "report_figures",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("params", sa.String(200), primary_key=True),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("body", Json, nullable=False),
        sa.Column("computed_at", UtcDateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_messages_trouble", "messages", ["run_id"], sqlite_where=TROUBLE, postgresql_where=TROUBLE)


def downgrade() -> None:
    op.drop_index("ix_messages_trouble", "messages")
    op.drop_table("report_figures")
