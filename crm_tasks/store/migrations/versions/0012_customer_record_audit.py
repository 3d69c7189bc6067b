"""Who opened which customer's record in the CRM pages: the audit the privacy rules ask for.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Only who, when, which customer and what they did: the record itself is never copied here.
    op.create_table(
        "customer_record_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("username", sa.String(256), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_customer_record_audit_customer", "customer_record_audit", ["customer_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_customer_record_audit_customer", "customer_record_audit")
    op.drop_table("customer_record_audit")
