"""Success measures: A/B variants on plans and messages, attributions, campaign and control-group
results, clicks, and delivery feedback events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crm_tasks.store.types import Money, UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("campaign_plan") as t:
        t.add_column(sa.Column("variant", sa.String(32)))
    with op.batch_alter_table("messages") as t:
        t.add_column(sa.Column("variant", sa.String(32)))
    op.create_index("ix_messages_message_id", "messages", ["message_id"])

    op.create_table(
        "attributions",
        sa.Column("purchase_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("variant", sa.String(32)),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(8), nullable=False),
        sa.Column("amount", Money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("purchased_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_attributions_run", "attributions", ["campaign", "run_id"])

    op.create_table(
        "campaign_results",
        sa.Column("campaign", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("variant", sa.String(32), primary_key=True),
        sa.Column("grp", sa.String(16), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("run_as_of", sa.Date, nullable=False),
        sa.Column("window_start", UtcDateTime, nullable=False),
        sa.Column("window_end", UtcDateTime, nullable=False),
        sa.Column("window_complete", sa.Boolean, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("messages_sent", sa.BigInteger, nullable=False),
        sa.Column("converters", sa.BigInteger, nullable=False),
        sa.Column("orders", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("attributed_orders", sa.BigInteger, nullable=False),
        sa.Column("attributed_revenue", Money, nullable=False),
        sa.Column("coupons_redeemed", sa.BigInteger, nullable=False),
        sa.Column("clickers", sa.BigInteger, nullable=False),
        sa.Column("bounces", sa.BigInteger, nullable=False),
        sa.Column("lift", Json),
    )

    op.create_table(
        "control_results",
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("grp", sa.String(16), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("month_complete", sa.Boolean, nullable=False),
        sa.Column("customers", sa.BigInteger, nullable=False),
        sa.Column("buyers", sa.BigInteger, nullable=False),
        sa.Column("revenue", Money, nullable=False),
        sa.Column("lift", Json),
    )

    op.create_table(
        "clicks",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("link_no", sa.Integer, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("first_at", UtcDateTime, nullable=False),
        sa.Column("last_at", UtcDateTime, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_index("ux_clicks_link", "clicks", ["idempotency_key", "kind", "link_no"], unique=True)

    op.create_table(
        "delivery_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event_key", sa.String(128), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(128)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("email_hash", sa.String(64)),
        sa.Column("status_code", sa.String(16)),
        sa.Column("detail", sa.Text),
        sa.Column("occurred_at", UtcDateTime),
        sa.Column("received_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_delivery_events_idempotency_key", "delivery_events", ["idempotency_key"])


def downgrade() -> None:
    op.drop_table("delivery_events")
    op.drop_table("clicks")
    op.drop_table("control_results")
    op.drop_table("campaign_results")
    op.drop_table("attributions")
    op.drop_index("ix_messages_message_id", "messages")
    with op.batch_alter_table("messages") as t:
        t.drop_column("variant")
    with op.batch_alter_table("campaign_plan") as t:
        t.drop_column("variant")
