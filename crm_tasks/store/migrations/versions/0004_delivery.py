"""Delivery: the ledger's state machine columns and per-address soft-bounce counts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as t:
        t.add_column(sa.Column("batch_no", sa.Integer))
        t.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        t.add_column(sa.Column("next_attempt_at", UtcDateTime))
        t.add_column(sa.Column("claimed_by", sa.String(128)))
        t.add_column(sa.Column("claimed_at", UtcDateTime))
        t.add_column(sa.Column("sent_at", UtcDateTime))
        t.add_column(sa.Column("message_id", sa.String(128)))
        t.add_column(sa.Column("smtp_code", sa.SmallInteger))
        t.add_column(sa.Column("last_error", sa.Text))
    op.create_index("ix_messages_batch", "messages", ["run_id", "batch_no", "state"])
    op.create_index("ix_messages_state", "messages", ["campaign", "state"])
    op.create_table(
        "address_bounces",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("soft_bounces", sa.Integer, nullable=False),
        sa.Column("last_code", sa.SmallInteger),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("address_bounces")
    op.drop_index("ix_messages_state", "messages")
    op.drop_index("ix_messages_batch", "messages")
    with op.batch_alter_table("messages") as t:
        for col in ("last_error", "smtp_code", "message_id", "sent_at", "claimed_at", "claimed_by",
                    "next_attempt_at", "attempts", "batch_no"):
            t.drop_column(col)
