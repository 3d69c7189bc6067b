"""The CRM store's tables. Migrations in ``crm_tasks/store/migrations`` create them."""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_tasks.store.types import Money, UtcDateTime

# An auto-incrementing 64-bit key; on SQLite it must be INTEGER to alias the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class BatchStatus(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    REJECTED = "rejected"
    UNREADABLE = "unreadable"
    REPLACED = "replaced"


class IngestBatch(Base):
    """One landing file, read once: where it came from, its checksum, and how its rows reconciled."""

    __tablename__ = "ingest_batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # 'customers' | 'purchases' | 'products'
    partition_date: Mapped[date] = mapped_column(Date)
    file_path: Mapped[str] = mapped_column(String(512))  # relative to the landing folder
    checksum: Mapped[str] = mapped_column(String(64))  # sha256 of the file's bytes
    file_size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_loaded: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_duplicate: Mapped[int] = mapped_column(BigInteger, default=0)
    # Good rows of a rejected file: read and valid, but not loaded because the file was rejected.
    rows_withheld: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_columns: Mapped[list] = mapped_column(Json, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    replaced_by: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_ingest_batches_file", "file_path", "status"),)


class Customer(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    phone: Mapped[str | None] = mapped_column(String(16), index=True)  # E.164
    birthday: Mapped[date | None] = mapped_column(Date)
    locale: Mapped[str] = mapped_column(String(35))  # BCP 47
    timezone: Mapped[str] = mapped_column(String(64))  # IANA
    country: Mapped[str] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    email_consent: Mapped[bool]
    attributes: Mapped[dict] = mapped_column(Json, default=dict)  # declared custom attributes
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    batch_id: Mapped[int] = mapped_column(BigInteger)  # the batch that last wrote the profile


class Purchase(Base):
    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    purchased_at: Mapped[datetime] = mapped_column(UtcDateTime)
    amount: Mapped[Decimal] = mapped_column(Money)  # negative: refund or return
    currency: Mapped[str] = mapped_column(String(3))  # ISO 4217
    store_id: Mapped[str] = mapped_column(String(64))
    sku: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    coupon_code: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[int] = mapped_column(BigInteger)
    line_no: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # Metrics rebuilds and every per-customer query walk this index. There is
        # deliberately none on batch_id: only replacing a corrected file looks rows up
        # by batch, rarely, and a scan then costs less than maintaining an index on
        # every nightly insert.
        Index("ix_purchases_customer", "customer_id", "purchased_at"),
        # The sales cube reads the days a night changed as a time range, and its nightly fingerprint of
        # every day from this index alone (the amount included): bench/README.md, sales cube.
        Index("ix_purchases_time", "purchased_at", "amount"),
        # The recommendations' baskets, each customer's distinct products of a window, read from this index alone,
        # in order (bench/README.md, recommendations).
        Index("ix_purchases_baskets", "customer_id", "sku", "purchased_at", "amount"),
    )


class QuarantinedRow(Base):
    """A rejected input row, kept verbatim with the reason, so nothing is lost."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    batch_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("ingest_batches.id"), index=True)
    file_path: Mapped[str] = mapped_column(String(512))
    line_no: Mapped[int] = mapped_column(BigInteger)
    raw_text: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class CustomerMetrics(Base):
    """Purchase metrics per customer and currency (amounts are never converted)."""

    __tablename__ = "customer_metrics"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    # None when the only rows in this currency are refunds (of purchases made before the data starts).
    first_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    orders: Mapped[int] = mapped_column(BigInteger)  # transactions with amount >= 0
    refunds: Mapped[int] = mapped_column(BigInteger)  # transactions with amount < 0
    items: Mapped[int] = mapped_column(BigInteger)  # sum of quantity over orders
    revenue: Mapped[Decimal] = mapped_column(Money)  # net: orders minus refunds
    avg_basket: Mapped[Decimal | None] = mapped_column(Money)  # revenue / orders
    favourite_category: Mapped[str | None] = mapped_column(String(64))


class CustomerCategoryMetrics(Base):
    """The incremental state behind customer_metrics: sums per customer, currency and category."""

    __tablename__ = "customer_category_metrics"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    orders: Mapped[int] = mapped_column(BigInteger)
    refunds: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Money)
    order_revenue: Mapped[Decimal] = mapped_column(Money)  # revenue of orders only: the favourite's tie-break


class MetricsDirty(Base):
    """Customers whose metrics must be re-derived (and, with ``rebuild``, recomputed from
    their purchases); filled and drained inside one ingest transaction."""

    __tablename__ = "metrics_dirty"
    # Keyed by text: on SQLite the primary key B-tree can hold the row itself.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rebuild: Mapped[bool]


class Segment(Base):
    """A segment: built in (RFM, lifecycle, value tier) or defined in segments/*.yaml."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # 'rfm:champions', or a custom name
    family: Mapped[str] = mapped_column(String(16))  # rfm | lifecycle | value | custom
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str | None] = mapped_column(String(512))  # the definition file of a custom segment
    definition: Mapped[dict | None] = mapped_column(Json)  # its rule, as last loaded
    status: Mapped[str] = mapped_column(String(16))  # SegmentStatus
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SegmentStatus(enum.StrEnum):
    ACTIVE = "active"
    # The definition file is broken: the last good membership is carried forward, unchanged.
    INVALID = "invalid"
    REMOVED = "removed"  # the definition file is gone: memberships were closed


class SegmentRun(Base):
    """One recompute, keyed by its as-of date: what it covered and how it reconciled."""

    __tablename__ = "segment_runs"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    cutoff: Mapped[datetime] = mapped_column(UtcDateTime)  # end of the as-of day: purchases before it count
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    source: Mapped[str] = mapped_column(String(16))  # 'metrics' (maintained totals) | 'purchases' (rescan)
    customers: Mapped[int] = mapped_column(BigInteger)  # profiles existing at the cutoff
    scored: Mapped[int] = mapped_column(BigInteger)  # ...of which with an order: RFM-scored
    buyers_without_profile: Mapped[int] = mapped_column(BigInteger)  # purchases but no profile: not segmented
    memberships: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(BigInteger)
    exited: Mapped[int] = mapped_column(BigInteger)
    parameters: Mapped[dict] = mapped_column(Json)  # the settings it ran with
    problems: Mapped[list] = mapped_column(Json)  # invalid custom segments, by file


class CustomerScore(Base):
    """Each customer's RFM figures, scores and stages as of the latest recompute."""

    __tablename__ = "customer_scores"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    orders: Mapped[int] = mapped_column(BigInteger)  # all history up to the cutoff
    frequency: Mapped[int] = mapped_column(BigInteger)  # orders in the RFM window
    monetary: Mapped[Decimal] = mapped_column(Money)  # net revenue in the window, base currency
    avg_basket: Mapped[Decimal | None] = mapped_column(Money)  # monetary / frequency
    recency_days: Mapped[int | None] = mapped_column(Integer)  # whole days since the last order
    tenure_days: Mapped[int | None] = mapped_column(Integer)  # whole days since the first order
    first_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    previous_gap_days: Mapped[int | None] = mapped_column(Integer)  # between the last two orders, if recent
    r_score: Mapped[int | None] = mapped_column(SmallInteger)
    f_score: Mapped[int | None] = mapped_column(SmallInteger)
    m_score: Mapped[int | None] = mapped_column(SmallInteger)
    rfm_segment: Mapped[str | None] = mapped_column(String(32))
    lifecycle: Mapped[str] = mapped_column(String(16))
    value_tier: Mapped[str] = mapped_column(String(16))


class SegmentMembership(Base):
    """Who was in which segment when: member from valid_from up to, not including, valid_to."""

    __tablename__ = "segment_memberships"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str] = mapped_column(String(64))
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)  # None: still a member

    __table_args__ = (
        # Current members; the nightly diff probes it once per staged membership.
        Index("ux_segment_memberships_open", "segment_id", "customer_id", unique=True,
              sqlite_where=text("valid_to IS NULL"), postgresql_where=text("valid_to IS NULL")),
        # Entries of a day (sizes, transitions, undoing a re-run date).
        Index("ix_segment_memberships_from", "valid_from", "segment_id"),
        # Exits of a day, paired with entries by customer for transitions. Partial: closed
        # rows are the few that changed, so the index costs nothing on the first run.
        Index("ix_segment_memberships_closed", "valid_to", "segment_id", "customer_id",
              sqlite_where=text("valid_to IS NOT NULL"), postgresql_where=text("valid_to IS NOT NULL")),
        # One customer's history: the sales cube's segment of each buyer on a day, a customer's page.
        Index("ix_segment_memberships_customer", "customer_id", "valid_from"),
    )


class SegmentSize(Base):
    """A daily snapshot of every segment's size, and how many entered and left that day."""

    __tablename__ = "segment_sizes"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    segment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(BigInteger)
    exited: Mapped[int] = mapped_column(BigInteger)


class SegmentStage(Base):
    """Work table of a recompute: the memberships as of its date, before the diff into history."""

    __tablename__ = "segment_stage"
    __table_args__ = {"sqlite_with_rowid": False}

    segment_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class CampaignRun(Base):
    """One planning run of a campaign for a date: its counts, exclusions by reason and guardrail verdict."""

    __tablename__ = "campaign_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[date] = mapped_column(Date)  # the occurrence day the messages are for
    run_at: Mapped[datetime] = mapped_column(UtcDateTime)  # when the run was scheduled: sets the send times
    dry_run: Mapped[bool] = mapped_column(Boolean)
    test_run: Mapped[bool] = mapped_column(Boolean)  # rendered messages go to a test recipient
    status: Mapped[str] = mapped_column(String(16))  # RunStatus
    audience: Mapped[int] = mapped_column(BigInteger)  # customers the trigger selected
    recipients: Mapped[int] = mapped_column(BigInteger)
    holdout: Mapped[int] = mapped_column(BigInteger)
    excluded: Mapped[int] = mapped_column(BigInteger)
    reasons: Mapped[dict] = mapped_column(Json)  # exclusion reason -> customers
    diff: Mapped[dict] = mapped_column(Json)  # recipients against the previous planned run
    parameters: Mapped[dict] = mapped_column(Json)  # the definition and run options it planned with
    error: Mapped[str | None] = mapped_column(Text)  # why a guardrail blocked it
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    # Ids are never reused (AUTOINCREMENT on SQLite): sent messages keep naming a replaced run.
    __table_args__ = (Index("ix_campaign_runs_campaign", "campaign", "as_of"), {"sqlite_autoincrement": True})


class RunStatus(enum.StrEnum):
    PLANNED = "planned"
    BLOCKED = "blocked"  # a guardrail stopped it: nothing was planned for sending
    REPLACED = "replaced"  # re-planned; kept because some of its messages had already left 'planned'


class CampaignPlanRow(Base):
    """The plan of one run, one row per customer the trigger selected: sent to, held out, or why not."""

    __tablename__ = "campaign_plan"

    run_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("campaign_runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))  # send | holdout | excluded
    reason: Mapped[str | None] = mapped_column(String(32))  # Exclusion, for outcome excluded
    occurrence: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    locale: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(64))
    coupon_code: Mapped[str | None] = mapped_column(String(32))
    send_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    local_send_at: Mapped[str | None] = mapped_column(String(40))  # ISO 8601 with the customer's offset
    variant: Mapped[str | None] = mapped_column(String(32))  # the A/B variant of a send (None: no variants, holdout)


class MessageState(enum.StrEnum):
    """The ledger's states; ``crm_tasks.delivery.ledger`` holds the only legal transitions."""

    PLANNED = "planned"  # written by planning, waiting to be sent
    CLAIMED = "claimed"  # a sender holds it; never handed to the SMTP server yet
    SENDING = "sending"  # committed just before its SMTP transaction: the one gate to the server
    SENT = "sent"  # the server accepted it (250 after DATA)
    DEFERRED = "deferred"  # a temporary failure (4xx, or a connection lost before DATA): retried later
    FAILED = "failed"  # permanent (5xx, or too many temporary failures): never retried
    UNKNOWN = "unknown"  # the connection broke after DATA, or its sender died: maybe delivered, never retried
    SUPPRESSED = "suppressed"  # opted out, suppressed or lost consent between planning and sending
    EXPIRED = "expired"  # not sent before its lateness limit (its day passed, its coupon expired): never sent


class Message(Base):
    """The send ledger: one row per message occurrence, keyed by its idempotency key.

    A key present here is planned or sent: no other run plans it again.
    """

    __tablename__ = "messages"

    idempotency_key: Mapped[str] = mapped_column(String(200), primary_key=True)  # 'birthday:C1:2027'
    campaign: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int] = mapped_column(BigInteger)
    occurrence: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    test: Mapped[bool] = mapped_column(Boolean)  # to a test recipient: not a customer's occurrence
    recipient: Mapped[str] = mapped_column(String(254))
    locale: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(64))
    coupon_code: Mapped[str | None] = mapped_column(String(32))
    send_at: Mapped[datetime] = mapped_column(UtcDateTime)
    context: Mapped[dict] = mapped_column(Json)  # the allow-listed render context: delivery renders exactly this
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Delivery (crm_tasks/delivery/ledger.py, crm_tasks/delivery/send.py).
    batch_no: Mapped[int | None] = mapped_column(Integer)  # the send batch, assigned once per run
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # SMTP transactions started
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # a deferred message's retry time
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # host:pid:nonce of the sender holding it
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    message_id: Mapped[str | None] = mapped_column(String(128))  # derived from the idempotency key
    smtp_code: Mapped[int | None] = mapped_column(SmallInteger)  # the server's last reply code
    last_error: Mapped[str | None] = mapped_column(Text)  # the last failure, addresses removed
    # Lateness (issue: stale sends): past this moment the message is expired instead of sent; None for test
    # messages, which a tester wants whenever they ask.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expiry_reason: Mapped[str | None] = mapped_column(String(160))  # what makes it stale, set at planning
    variant: Mapped[str | None] = mapped_column(String(32))  # the campaign's A/B variant, if it declares any

    __table_args__ = (
        # The frequency cap counts a customer's messages over the last days.
        Index("ix_messages_customer", "customer_id", "send_at"),
        Index("ix_messages_run", "run_id"),
        # A send batch claims its rows; the sweep finds a campaign's deferred messages.
        Index("ix_messages_batch", "run_id", "batch_no", "state"),
        Index("ix_messages_state", "campaign", "state"),
        # Late bounces and complaints name their message by its Message-ID.
        Index("ix_messages_message_id", "message_id"),
        # The overview's failed runs: only the few messages in trouble, so the page does not scan the ledger.
        Index("ix_messages_trouble", "run_id", sqlite_where=text("state IN ('failed', 'unknown')"),
              postgresql_where=text("state IN ('failed', 'unknown')")),
    )


class Coupon(Base):
    """A unique coupon code issued to one customer for one message occurrence."""

    __tablename__ = "coupons"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    campaign: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[Decimal] = mapped_column(Money)
    value_type: Mapped[str] = mapped_column(String(8))  # percent | amount
    currency: Mapped[str | None] = mapped_column(String(3))  # for amount coupons
    issued_on: Mapped[date] = mapped_column(Date)
    expires_on: Mapped[date] = mapped_column(Date)  # last day it can be redeemed
    run_id: Mapped[int] = mapped_column(BigInteger)
    # What it is valid on (CouponScope): any purchase, or only one category / one product (sku), copied
    # from the customer's recommendations at planning. Redemption and attribution count only matching lines.
    scope: Mapped[str] = mapped_column(String(16), default="any", server_default="any")
    scope_value: Mapped[str | None] = mapped_column(String(64))  # the category or sku; None when scope is any


class Suppression(Base):
    """An address that must never get marketing mail, kept as a keyed hash so it outlives the profile."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)  # HMAC-SHA256 of the normalised address
    customer_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(32))  # unsubscribed | hard_bounce | complaint | manual
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SecretKey(Base):
    """The deployment's keys, generated here so that no key is written in the source
    (``crm_tasks/store/keys.py``): one ``hashing`` key for suppression hashes, never rotated, and
    ``signing`` keys for links; a retired signing key still verifies until ``valid_until``."""

    __tablename__ = "secret_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # signing | hashing
    secret: Mapped[str] = mapped_column(String(128))  # 64 hex digits
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # replaced by a newer signing key
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime)  # a retired key verifies until then


class AddressBounce(Base):
    """Soft bounces per address (keyed hash) since its last accepted message; enough of them suppress it."""

    __tablename__ = "address_bounces"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    soft_bounces: Mapped[int] = mapped_column(Integer)
    last_code: Mapped[int | None] = mapped_column(SmallInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- cleanup and erasure (crm_tasks/cleanup/archive.py, crm_tasks/cleanup/erasure.py) ---------------------------


class ArchiveStatus(enum.StrEnum):
    ARCHIVED = "archived"  # out of customers, restorable until purged
    RESTORED = "restored"  # back in customers (by hand, or because the profile came back)
    PURGED = "purged"  # personal data gone (grace period over, or erased on request)


class ArchivedCustomer(Base):
    """A profile taken out of ``customers`` by a cleanup run, with the reason.

    While ``archived`` it holds the whole profile, so that it can be restored; once
    restored or purged only the ids, reason and dates remain.
    """

    __tablename__ = "archived_customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))  # inactive | hard_bounce | no_contact
    status: Mapped[str] = mapped_column(String(16))  # ArchiveStatus
    archived_on: Mapped[date] = mapped_column(Date)  # the as-of date of the run
    purge_after: Mapped[date] = mapped_column(Date)  # the first run on or after this date purges it
    restored_on: Mapped[date | None] = mapped_column(Date)
    purged_on: Mapped[date | None] = mapped_column(Date)
    # The profile as it was (the columns of customers); all None once restored or purged.
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(16))
    birthday: Mapped[date | None] = mapped_column(Date)
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(2))
    email_consent: Mapped[bool | None] = mapped_column(Boolean)
    attributes: Mapped[dict | None] = mapped_column(Json)
    created_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # Restore and erasure look a customer up; a run finds the profiles that came back.
        Index("ix_archived_customers_customer", "customer_id", "status"),
        # The purge takes the archived rows whose grace period is over; reports count by day.
        Index("ix_archived_customers_purge", "status", "purge_after"),
        Index("ix_archived_customers_archived_on", "archived_on", "reason"),
    )


class CustomerMerge(Base):
    """A duplicate profile merged into its survivor: its purchases, metrics, coupons and ledger moved there."""

    __tablename__ = "customer_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    merged_id: Mapped[str] = mapped_column(String(64), index=True)  # the profile that is gone
    survivor_id: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(32))  # duplicate_email | duplicate_phone
    merged_on: Mapped[date] = mapped_column(Date, index=True)  # the as-of date of the run


class CleanupRun(Base):
    """One cleanup per as-of date: how the profiles reconciled, the archive's totals, and freshness."""

    __tablename__ = "cleanup_runs"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(UtcDateTime)  # the latest run of this date
    # profiles_before = kept + archived + merged (runs of this date together)
    profiles_before: Mapped[int] = mapped_column(BigInteger)
    kept: Mapped[int] = mapped_column(BigInteger)
    archived: Mapped[int] = mapped_column(BigInteger)
    merged: Mapped[int] = mapped_column(BigInteger)
    restored: Mapped[int] = mapped_column(BigInteger)  # profiles that came back while archived
    purged: Mapped[int] = mapped_column(BigInteger)
    reasons: Mapped[dict] = mapped_column(Json)  # reason -> profiles: archived, merged (duplicate_*), purged (purged:*)
    # The whole archive after the run: archived_total = restored_total + purged_total + in_grace.
    archived_total: Mapped[int] = mapped_column(BigInteger)
    restored_total: Mapped[int] = mapped_column(BigInteger)
    purged_total: Mapped[int] = mapped_column(BigInteger)
    in_grace: Mapped[int] = mapped_column(BigInteger)
    # Data freshness, shares of profiles_before: active, at risk of going stale, archived by this date.
    active_share: Mapped[float] = mapped_column(Float)
    at_risk_share: Mapped[float] = mapped_column(Float)
    archived_share: Mapped[float] = mapped_column(Float)
    parameters: Mapped[dict] = mapped_column(Json)  # the settings it ran with


# --- success measures (crm_tasks/results, crm_tasks/delivery/clicks.py, crm_tasks/delivery/feedback.py) ---------


class Attribution(Base):
    """A purchase credited to the campaign message that earned it (``crm_tasks/results/attribution.py``):
    at most one message per purchase, by the rule in ``rule``. Replaced as a whole by each refresh."""

    __tablename__ = "attributions"

    purchase_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    campaign: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int] = mapped_column(BigInteger)
    variant: Mapped[str | None] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(8))  # coupon | window
    amount: Mapped[Decimal] = mapped_column(Money)  # in the purchase's currency; negative: a refund
    currency: Mapped[str] = mapped_column(String(3))
    purchased_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_attributions_run", "campaign", "run_id"),)


class CampaignResult(Base):
    """One group of one campaign run, as of a date: who was assigned, who bought, what it earned, and (for
    a treatment group) its lift against the run's holdout (``crm_tasks/results/campaigns.py``)."""

    __tablename__ = "campaign_results"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    variant: Mapped[str] = mapped_column(String(32), primary_key=True)  # '' without variants, and for the holdout
    grp: Mapped[str] = mapped_column(String(16), primary_key=True)  # treatment | holdout
    as_of: Mapped[date] = mapped_column(Date)  # purchases up to the end of this day count
    run_as_of: Mapped[date] = mapped_column(Date)  # the run's occurrence day
    window_start: Mapped[datetime] = mapped_column(UtcDateTime)  # the assignment: when the run was scheduled
    window_end: Mapped[datetime] = mapped_column(UtcDateTime)  # window_start + attribution_days
    window_complete: Mapped[bool] = mapped_column(Boolean)  # the as-of cutoff is past window_end
    customers: Mapped[int] = mapped_column(BigInteger)  # assigned (intention to treat)
    messages_sent: Mapped[int] = mapped_column(BigInteger)
    converters: Mapped[int] = mapped_column(BigInteger)  # customers with an order in the window
    orders: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Money)  # net revenue in the window, base currency
    attributed_orders: Mapped[int] = mapped_column(BigInteger)
    attributed_revenue: Mapped[Decimal] = mapped_column(Money)  # net of refunds, base currency
    coupons_redeemed: Mapped[int] = mapped_column(BigInteger)
    clickers: Mapped[int] = mapped_column(BigInteger)  # messages with at least one click
    bounces: Mapped[int] = mapped_column(BigInteger)  # late bounces and complaints recorded against its messages
    lift: Mapped[dict | None] = mapped_column(Json)  # treatment rows: the statistics against the holdout


class ControlResult(Base):
    """One month of the global control group against everyone else: the programme's total lift."""

    __tablename__ = "control_results"

    month: Mapped[date] = mapped_column(Date, primary_key=True)  # its first day
    grp: Mapped[str] = mapped_column(String(16), primary_key=True)  # control | marketed
    as_of: Mapped[date] = mapped_column(Date)
    month_complete: Mapped[bool] = mapped_column(Boolean)
    customers: Mapped[int] = mapped_column(BigInteger)  # profiles that existed when the month began
    buyers: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[Decimal] = mapped_column(Money)  # net, base currency
    lift: Mapped[dict | None] = mapped_column(Json)  # the marketed row: its lift against control


class Click(Base):
    """A tracked link of a sent message that was followed (or, with open tracking on, the message opened):
    one row per message and link, however often it is followed (``crm_tasks/delivery/clicks.py``)."""

    __tablename__ = "clicks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))  # click | open
    link_no: Mapped[int] = mapped_column(Integer)  # the link's position in the HTML part (0 for an open)
    url: Mapped[str | None] = mapped_column(Text)  # the link's target; None for an open
    first_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_at: Mapped[datetime] = mapped_column(UtcDateTime)
    count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ux_clicks_link", "idempotency_key", "kind", "link_no", unique=True),)


class DeliveryEventStatus(enum.StrEnum):
    APPLIED = "applied"  # matched to its message and acted on (suppressed, counted)
    UNMATCHED = "unmatched"  # names no message of ours: counted, never applied
    FORGED = "forged"  # its signature or secret did not check: counted, never applied
    DUPLICATE = "duplicate"  # the same event again (a provider retry): counted once


class DeliveryEvent(Base):
    """Feedback after the send: a late bounce (RFC 3464 report from the bounce mailbox) or a provider's
    bounce or complaint webhook, recorded once and matched to its message by Message-ID
    (``crm_tasks/delivery/feedback.py``). No address is kept, only its keyed hash."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # imap | maildir | ses | mailgun
    event_key: Mapped[str] = mapped_column(String(128), unique=True)  # the provider's id, or a hash of the report
    kind: Mapped[str] = mapped_column(String(16))  # hard_bounce | soft_bounce | complaint | other
    status: Mapped[str] = mapped_column(String(16))  # DeliveryEventStatus
    message_id: Mapped[str | None] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), index=True)
    email_hash: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[str | None] = mapped_column(String(16))  # enhanced status, e.g. 5.1.1
    detail: Mapped[str | None] = mapped_column(Text)  # the diagnostic, addresses removed
    occurred_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- analytics (crm_tasks/analytics) -----------------------------------------------------------------------------


class SalesDaily(Base):
    """The sales cube: one day of one store's category in one currency, kept equal to a recomputation from
    purchases (``crm_tasks/analytics/sales.py``). Weeks and months are sums of days, except distinct buyers."""

    __tablename__ = "sales_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # the business day, in crm.yaml's time zone
    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    orders: Mapped[int] = mapped_column(BigInteger)  # transactions with amount >= 0
    refunds: Mapped[int] = mapped_column(BigInteger)  # transactions with amount < 0
    items: Mapped[int] = mapped_column(BigInteger)  # quantity over orders
    revenue: Mapped[Decimal] = mapped_column(Money)  # net: orders minus refunds
    refunded: Mapped[Decimal] = mapped_column(Money)  # the refunds' amount, as a positive number
    buyers: Mapped[int] = mapped_column(BigInteger)  # distinct customers with an order
    new_buyers: Mapped[int] = mapped_column(BigInteger)  # ...whose first order ever (any store) is that day

    __table_args__ = (Index("ix_sales_daily_category", "category", "day"),)


class SalesDay(Base):
    """What the cube last saw of one UTC day's purchases: when a day's fingerprint differs from the
    purchases now (a late file, a correction, a replaced file, a customer's first order moved), the cube
    rows of the business days it overlaps are recomputed, and only then."""

    __tablename__ = "sales_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # a UTC day: a cheap grouping key in both databases
    purchases: Mapped[int] = mapped_column(BigInteger)  # rows with purchased_at on that day
    id_sum: Mapped[int] = mapped_column(BigInteger)  # sum of their ids: changes when rows are replaced
    amount_sum: Mapped[Decimal] = mapped_column(Money)
    first_orders: Mapped[int] = mapped_column(BigInteger)  # customers whose first order ever is that day


class SalesDailySegment(Base):
    """The sales cube by the buyer's RFM and lifecycle segment when the day began (the membership of the
    day before: what a campaign that day targeted); buyers in no segment of a family count under
    '<family>:(none)', so each family's rows add up to the day's totals."""

    __tablename__ = "sales_daily_segments"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    segment: Mapped[str] = mapped_column(String(64), primary_key=True)  # 'rfm:champions', 'lifecycle:(none)'
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    orders: Mapped[int] = mapped_column(BigInteger)
    refunds: Mapped[int] = mapped_column(BigInteger, server_default="0")
    items: Mapped[int] = mapped_column(BigInteger, server_default="0")
    revenue: Mapped[Decimal] = mapped_column(Money)  # net: orders minus refunds
    refunded: Mapped[Decimal] = mapped_column(Money, server_default="0")
    buyers: Mapped[int] = mapped_column(BigInteger)
    new_buyers: Mapped[int] = mapped_column(BigInteger, server_default="0")


class CustomerDay(Base):
    """Each customer's purchase days: the orders (amount >= 0) of one local business day in one currency, kept
    per customer as the metrics are (``crm_tasks/analytics/purchase_days.py``); the lifetime-value fit reads
    its calibration data from here instead of grouping every purchase each night."""

    __tablename__ = "customer_days"
    # Keyed by text: on SQLite the primary key B-tree holds the row, in the order the fit reads it.
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)  # the local day, as days since 1970-01-01
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    first_day: Mapped[bool]  # the customer's first purchase day in any currency (BG/NBD's time zero)
    # True on one row of each customer and day (its first currency by code): counting these counts purchase
    # days without COUNT(DISTINCT), which would sort every row by customer.
    counts_day: Mapped[bool]
    orders: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[Decimal] = mapped_column(Money)  # the orders' amount, in the currency


class CustomerDaysDirty(Base):
    """Customers whose purchase days must be recomputed from their purchases: queued by every metrics
    refresh (so by ingest, replaced files, corrections and merges) and drained by the nightly fit."""

    __tablename__ = "customer_days_dirty"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class SalesSegmentRun(Base):
    """The segment recomputes the segment cube last saw: a recompute of date X that is new or was re-run
    changes the segments of day X + 1, whose rows are then recomputed."""

    __tablename__ = "sales_segment_runs"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CustomerClv(Base):
    """Each customer's lifetime-value scores as of the latest fit (``crm_tasks/analytics/clv.py``)."""

    __tablename__ = "customer_clv"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    frequency: Mapped[int] = mapped_column(Integer)  # repeat purchase days (BG/NBD's x)
    recency_days: Mapped[float] = mapped_column(Float)  # first to last purchase day (t_x)
    tenure_days: Mapped[float] = mapped_column(Float)  # first purchase day to the as-of date (T)
    monetary: Mapped[Decimal | None] = mapped_column(Money)  # mean value of the repeat purchase days, base currency
    p_alive: Mapped[float] = mapped_column(Float)
    purchases_90: Mapped[float] = mapped_column(Float)  # expected purchase days in the next 90 days
    purchases_365: Mapped[float] = mapped_column(Float)
    clv_12m: Mapped[Decimal | None] = mapped_column(Money)  # expected spend over 12 months, base currency


class ClvFit(Base):
    """One nightly fit of the lifetime-value models: their parameters, sizes and time."""

    __tablename__ = "clv_fits"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # fitted | not_enough_data | failed
    params: Mapped[dict] = mapped_column(Json)  # {"bgnbd": {r, alpha, a, b}, "gamma_gamma": {p, q, v}}
    customers: Mapped[int] = mapped_column(BigInteger)  # scored
    repeat_customers: Mapped[int] = mapped_column(BigInteger)  # with at least one repeat purchase (Gamma-Gamma)
    detail: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)


class RevenueForecast(Base):
    """The daily revenue forecast made on ``fit_date`` for the days after it, with 80 % and 95 % intervals
    (``crm_tasks/analytics/forecast.py``); base currency."""

    __tablename__ = "revenue_forecasts"

    fit_date: Mapped[date] = mapped_column(Date, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    mean: Mapped[float] = mapped_column(Float)
    lower_80: Mapped[float] = mapped_column(Float)
    upper_80: Mapped[float] = mapped_column(Float)
    lower_95: Mapped[float] = mapped_column(Float)
    upper_95: Mapped[float] = mapped_column(Float)


class ForecastFit(Base):
    """One forecast fit: the model, the history it saw, and its rolling backtest against seasonal naive."""

    __tablename__ = "forecast_fits"

    fit_date: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # fitted | not_enough_data | failed
    model: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(Json)
    history_days: Mapped[int] = mapped_column(Integer)
    mape: Mapped[float | None] = mapped_column(Float)
    mase: Mapped[float | None] = mapped_column(Float)
    baseline_mape: Mapped[float | None] = mapped_column(Float)  # seasonal naive (the same weekday last week)
    baseline_mase: Mapped[float | None] = mapped_column(Float)
    better_than_baseline: Mapped[bool | None] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)


# --- catalogue (crm_tasks/ingest: the products/ landing contract) ---------------------------------------------


class Product(Base):
    """One product of the shop's catalogue, as its latest version (by ``updated_at``) described it.

    Purchases refer to a ``sku`` without a foreign key: the catalogue can lag behind the tills, and a sale
    of a product not yet listed is still a sale.
    """

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # English, the default for every other language
    name_hi: Mapped[str | None] = mapped_column(String(200))
    name_te: Mapped[str | None] = mapped_column(String(200))
    name_fa: Mapped[str | None] = mapped_column(String(200))
    name_ur: Mapped[str | None] = mapped_column(String(200))
    brand: Mapped[str | None] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(64))
    price: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))  # ISO 4217
    url: Mapped[str] = mapped_column(String(2048))  # https only
    image_url: Mapped[str] = mapped_column(String(2048))  # https only
    in_stock: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    batch_id: Mapped[int] = mapped_column(BigInteger)  # the batch that last wrote the product


class CustomerRecordAudit(Base):
    """One look at (or action on) a customer's record in the CRM pages: who, when, which customer, what.

    Nothing of the record is copied here, so the audit itself holds no personal data beyond the opaque id.
    """

    __tablename__ = "customer_record_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    username: Mapped[str] = mapped_column(String(256))  # the Airflow user
    customer_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # view, export, erase, restore

    __table_args__ = (
        Index("ix_customer_record_audit_customer", "customer_id", "at"),
        {"sqlite_autoincrement": True},
    )


# --- recommendations (crm_tasks/analytics/recommendations.py) -------------------------------------------------


class ProductPair(Base):
    """Co-purchase of two products over the latest refresh's window: of the customers who bought ``sku``,
    ``support`` also bought ``other_sku``. Both directions are stored; only pairs with the minimum support."""

    __tablename__ = "product_pairs"
    __table_args__ = {"sqlite_with_rowid": False}

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    other_sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    support: Mapped[int] = mapped_column(Integer)  # customers who bought both
    confidence: Mapped[float] = mapped_column(Float)  # support / buyers of sku
    lift: Mapped[float] = mapped_column(Float)  # confidence / share of buyers who bought other_sku


class CustomerRecommendation(Base):
    """One product recommended to a customer by the latest refresh, and why: ``kind`` with the product it
    comes from (``source_sku``) and how many customers stand behind it."""

    __tablename__ = "customer_recommendations"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 1 is the best
    sku: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # cross_sell | up_sell | popular
    source_sku: Mapped[str | None] = mapped_column(String(64))  # bought with / a step up from; None: popular
    customers: Mapped[int] = mapped_column(Integer)  # cross_sell: bought both; else bought the product
    score: Mapped[float] = mapped_column(Float)  # cross_sell: confidence; else the product's buyers
    as_of: Mapped[date] = mapped_column(Date)


class PopularRecommendation(Base):
    """The shop-wide list of the latest refresh: its best sellers in stock, rank 1 first. It is the list of
    every profiled customer without rows in ``customer_recommendations`` (no orders in the window, nothing
    shown recently: half the customers of a shop, the same list each), stored once instead of once each."""

    __tablename__ = "popular_recommendations"

    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 1 is the best
    sku: Mapped[str] = mapped_column(String(64))
    customers: Mapped[int] = mapped_column(Integer)  # customers who bought the product in the window
    as_of: Mapped[date] = mapped_column(Date)


class RecommendationRun(Base):
    """One refresh of the recommendations: its window, sizes and time."""

    __tablename__ = "recommendation_runs"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    window_start: Mapped[date] = mapped_column(Date)
    buyers: Mapped[int] = mapped_column(BigInteger)  # customers with an order in the window
    pairs: Mapped[int] = mapped_column(BigInteger)  # product_pairs rows (both directions)
    customers: Mapped[int] = mapped_column(BigInteger)  # customers with at least one recommendation
    cross_sell: Mapped[int] = mapped_column(BigInteger)
    up_sell: Mapped[int] = mapped_column(BigInteger)
    popular: Mapped[int] = mapped_column(BigInteger)
    short_lists: Mapped[int] = mapped_column(BigInteger)  # customers given fewer than per_customer products
    seconds: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RecommendationImpression(Base):
    """A product shown to a customer in a message on a day: not recommended again for ``recent_days``."""

    __tablename__ = "recommendation_impressions"
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    shown_on: Mapped[date] = mapped_column(Date, primary_key=True)


class RecommendationEvaluation(Base):
    """An offline evaluation: trained up to ``cut``, scored on what customers bought after it until ``as_of``."""

    __tablename__ = "recommendation_evaluations"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    holdout_days: Mapped[int] = mapped_column(Integer, primary_key=True)
    cut: Mapped[date] = mapped_column(Date)
    customers: Mapped[int] = mapped_column(BigInteger)  # customers who bought a product new to them after the cut
    model_hit_rate_at_5: Mapped[float | None] = mapped_column(Float)
    model_recall_at_10: Mapped[float | None] = mapped_column(Float)
    popularity_hit_rate_at_5: Mapped[float | None] = mapped_column(Float)
    popularity_recall_at_10: Mapped[float | None] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DerivedZone(Base):
    """The time zone a table of local business days was last built in (``sales_cube``, ``customer_days``):
    when crm.yaml's zone changes, every day of that table moves, so it is rebuilt rather than patched."""

    __tablename__ = "derived_zones"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))  # IANA


class ReportFigure(Base):
    """A report the CRM pages open with, stored by the nightly reports run (``crm_tasks/analytics/figures.py``):
    read instead of recounted while ``state``, the fingerprint of the data it was computed from, still holds."""

    __tablename__ = "report_figures"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # kpis, cohorts, sales, clv, clv_bins
    params: Mapped[str] = mapped_column(String(200), primary_key=True)  # its arguments, canonical JSON
    state: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict] = mapped_column(Json)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seconds: Mapped[float] = mapped_column(Float)


__all__ = [
    "AddressBounce",
    "ArchiveStatus",
    "ArchivedCustomer",
    "Attribution",
    "Base",
    "BatchStatus",
    "CampaignPlanRow",
    "CampaignResult",
    "CampaignRun",
    "CleanupRun",
    "Click",
    "ClvFit",
    "ControlResult",
    "Coupon",
    "Customer",
    "CustomerCategoryMetrics",
    "CustomerClv",
    "CustomerDay",
    "CustomerDaysDirty",
    "CustomerMerge",
    "CustomerMetrics",
    "CustomerRecommendation",
    "CustomerRecordAudit",
    "CustomerScore",
    "DeliveryEvent",
    "DeliveryEventStatus",
    "DerivedZone",
    "ForecastFit",
    "IngestBatch",
    "Message",
    "MessageState",
    "MetricsDirty",
    "PopularRecommendation",
    "Product",
    "ProductPair",
    "Purchase",
    "QuarantinedRow",
    "RecommendationEvaluation",
    "RecommendationImpression",
    "RecommendationRun",
    "ReportFigure",
    "RevenueForecast",
    "RunStatus",
    "SalesDaily",
    "SalesDailySegment",
    "SalesDay",
    "SalesSegmentRun",
    "SecretKey",
    "Segment",
    "SegmentMembership",
    "SegmentRun",
    "SegmentSize",
    "SegmentStage",
    "SegmentStatus",
    "Suppression",
]
