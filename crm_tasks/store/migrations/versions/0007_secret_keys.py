"""The deployment's secret keys, generated at random here: no key is written in the source.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from crm_tasks.store.types import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    table = op.create_table(
        "secret_keys",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("retired_at", UtcDateTime),
        sa.Column("valid_until", UtcDateTime),
    )
    now = datetime.now(UTC)
    op.bulk_insert(table, [{"purpose": purpose, "secret": secrets.token_hex(32), "created_at": now}
                           for purpose in ("hashing", "signing")])


def downgrade() -> None:
    op.drop_table("secret_keys")
