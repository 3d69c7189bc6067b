"""The customer page's data: finding a customer by id, e-mail or phone, and one customer's record.

Each query reads one customer through an index (``customers`` by its key, e-mail or phone;
``purchases``, ``messages`` and ``segment_memberships`` by customer id; ``archived_customers`` by customer
id and status). No library function returns a customer's record yet; this module is it. The record holds
personal data: only the routes for Admin and Op users call it, and each call is audited there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers
from sqlalchemy import Engine, func, or_, select

from crm_tasks.delivery.suppression import email_hash, normalise_email
from crm_tasks.settings import Settings
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import (
    ArchivedCustomer,
    ArchiveStatus,
    Customer,
    CustomerMerge,
    CustomerScore,
    Message,
    Purchase,
    Segment,
    SegmentMembership,
    Suppression,
)

PURCHASES_PAGE_SIZE = 50
MESSAGES_SHOWN = 200
SEGMENT_ROWS_SHOWN = 200
SEARCH_LIMIT = 50  # an e-mail or a phone shared by more profiles than this is listed in part, and said so
PROFILE_FIELDS = ("first_name", "last_name", "email", "phone", "birthday", "locale", "timezone", "country",
                  "email_consent", "attributes", "created_at", "updated_at")


@dataclass
class Match:
    customer_id: str
    status: str  # current | archived | no profile (purchases or messages only: erased or purged)
    matched_by: str  # id | e-mail | phone


def _phone_terms(q: str) -> list:
    """How a typed phone can match the stored E.164 form: exactly, or by its national number."""
    try:
        number = phonenumbers.parse(q, None)
        return [Customer.phone == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)]
    except phonenumbers.NumberParseException:
        # A national number without its country (its trunk 0 dropped): its digits end the stored number
        # (a scan, no index: staff only, one search at a time).
        digits = re.sub(r"\D", "", q).lstrip("0")
        return [Customer.phone.like(f"%{digits}")] if len(digits) >= 6 else []


def search(engine: Engine, q: str) -> tuple[list[Match], bool]:
    """Customers whose id, e-mail or phone is ``q``; and whether more matched than are listed."""
    q = q.strip()
    found: dict[str, Match] = {}
    if not q:
        return [], False
    with engine.connect() as conn:
        if "@" in q:
            email = normalise_email(q)  # ingest stores addresses lower-cased: the index on email serves
            for (cid,) in conn.execute(select(Customer.customer_id).where(Customer.email == email)
                                       .order_by(Customer.customer_id).limit(SEARCH_LIMIT + 1)):
                found.setdefault(cid, Match(cid, "current", "e-mail"))
            for (cid,) in conn.execute(select(ArchivedCustomer.customer_id).where(
                    ArchivedCustomer.email == email, ArchivedCustomer.status == ArchiveStatus.ARCHIVED)
                    .limit(SEARCH_LIMIT + 1)):
                found.setdefault(cid, Match(cid, "archived", "e-mail"))
        elif re.fullmatch(r"[+\d][\d\s().-]{5,}", q) and (terms := _phone_terms(q)):
            for (cid,) in conn.execute(select(Customer.customer_id).where(or_(*terms))
                                       .order_by(Customer.customer_id).limit(SEARCH_LIMIT + 1)):
                found.setdefault(cid, Match(cid, "current", "phone"))
        if len(q) <= 64:
            if conn.execute(select(Customer.customer_id).where(Customer.customer_id == q)).first():
                found[q] = Match(q, "current", "id")
            elif conn.execute(select(ArchivedCustomer.id).where(ArchivedCustomer.customer_id == q,
                                                                ArchivedCustomer.status == ArchiveStatus.ARCHIVED)
                              .limit(1)).first():
                found[q] = Match(q, "archived", "id")
            elif any(conn.execute(select(t.customer_id).where(t.customer_id == q).limit(1)).first()
                     for t in (Purchase, Message, ArchivedCustomer)):
                found[q] = Match(q, "no profile", "id")
    matches = sorted(found.values(), key=lambda m: (m.matched_by != "id", m.customer_id))
    return matches[:SEARCH_LIMIT], len(matches) > SEARCH_LIMIT


@dataclass
class CustomerRecord:
    customer_id: str
    profile: dict | None  # the current profile, else the archived copy while it is restorable
    status: str  # current | archived | no profile
    archive: list[dict]  # every archiving of the id: reason, status and dates (no personal data left)
    merges: list[dict]
    scores: dict | None  # RFM figures and stages at the latest recompute
    purchases: list[dict]  # one page, newest first
    purchases_total: int
    page: int
    pages: int
    segments: list[dict]  # memberships, newest first
    messages: list[dict]  # ledger rows, newest first (MESSAGES_SHOWN at most)
    suppressions: list[dict]  # by customer id, or by the hash of the profile's address
    known: bool = field(default=True)  # anything at all under this id

    @property
    def can_restore(self) -> bool:
        return self.status == "archived"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("customer_id", "profile", "status", "archive", "merges", "scores",
                                              "purchases", "purchases_total", "page", "pages", "segments",
                                              "messages", "suppressions")}


def _iso(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def record(engine: Engine, cfg: Settings, customer_id: str, page: int = 1) -> CustomerRecord:
    """Everything the CRM keeps under one customer id; ``page`` of the purchases (past the end: the last)."""
    c, a, p, m = Customer, ArchivedCustomer, Purchase, Message
    with engine.connect() as conn:
        current = conn.execute(select(*[getattr(c, f) for f in PROFILE_FIELDS]).where(c.customer_id == customer_id)
                               ).mappings().first()
        archive = [dict(r) for r in conn.execute(
            select(a.reason, a.status, a.archived_on, a.purge_after, a.restored_on, a.purged_on)
            .where(a.customer_id == customer_id).order_by(a.id.desc())).mappings()]
        archived = None
        if current is None:
            archived = conn.execute(select(*[getattr(a, f) for f in PROFILE_FIELDS]).where(
                a.customer_id == customer_id, a.status == ArchiveStatus.ARCHIVED).order_by(a.id.desc())
            ).mappings().first()
        merges = [dict(r) for r in conn.execute(
            select(CustomerMerge.merged_id, CustomerMerge.survivor_id, CustomerMerge.rule, CustomerMerge.merged_on)
            .where(or_(CustomerMerge.merged_id == customer_id, CustomerMerge.survivor_id == customer_id))
            .order_by(CustomerMerge.merged_on)).mappings()]
        s = CustomerScore
        scores = conn.execute(select(s.as_of, s.orders, s.monetary, s.recency_days, s.rfm_segment, s.lifecycle,
                                     s.value_tier).where(s.customer_id == customer_id)).mappings().first()
        total = conn.execute(select(func.count()).select_from(p).where(p.customer_id == customer_id)).scalar_one()
        pages = max(1, -(-total // PURCHASES_PAGE_SIZE))
        page = min(max(page, 1), pages)
        purchases = [dict(r) for r in conn.execute(
            select(p.transaction_id, p.purchased_at, p.amount, p.currency, p.store_id, p.sku, p.category, p.quantity,
                   p.coupon_code).where(p.customer_id == customer_id)
            .order_by(p.purchased_at.desc(), p.id.desc())
            .offset((page - 1) * PURCHASES_PAGE_SIZE).limit(PURCHASES_PAGE_SIZE)).mappings()]
        sm = SegmentMembership
        segments = [dict(r) for r in conn.execute(
            select(Segment.name, Segment.family, sm.valid_from, sm.valid_to).join(Segment, Segment.id == sm.segment_id)
            .where(sm.customer_id == customer_id).order_by(sm.valid_from.desc(), Segment.name)
            .limit(SEGMENT_ROWS_SHOWN)).mappings()]
        messages = [dict(r) for r in conn.execute(
            select(m.campaign, m.run_id, m.occurrence, m.state, m.test, m.variant, m.locale, m.send_at, m.sent_at,
                   m.attempts, m.coupon_code, m.expiry_reason, m.last_error)
            .where(m.customer_id == customer_id).order_by(m.send_at.desc(), m.idempotency_key)
            .limit(MESSAGES_SHOWN)).mappings()]
        profile = current or archived
        conds = [Suppression.customer_id == customer_id]
        if profile and profile["email"]:
            conds.append(Suppression.email_hash == email_hash(profile["email"], load_keys(conn, cfg).hashing))
        suppressions = [dict(r) for r in conn.execute(
            select(Suppression.reason, Suppression.created_at, Suppression.customer_id).where(or_(*conds))
            .order_by(Suppression.created_at)).mappings()]
    status = "current" if current else "archived" if archived else "no profile"
    known = bool(profile or archive or merges or scores or total or segments or messages or suppressions)

    def clean(rows):
        return [{k: _iso(v) for k, v in r.items()} for r in rows]

    return CustomerRecord(
        customer_id, {k: _iso(v) for k, v in profile.items()} if profile else None, status, clean(archive),
        clean(merges), {k: _iso(v) for k, v in scores.items()} if scores else None, clean(purchases), total, page,
        pages, clean(segments), clean(messages), clean(suppressions), known)


PURCHASE_FIELDS = ("transaction_id", "purchased_at", "amount", "currency", "store_id", "sku", "category", "quantity",
                   "coupon_code")


def purchases_csv(engine: Engine, customer_id: str, batch: int = 5000):
    """Every purchase of one customer as CSV text (a header first), oldest first, read in batches along
    ix_purchases_customer in one read transaction; cells that start like a formula are quoted as text."""
    import csv
    import io

    from crm_tasks.pages.data import _cell

    p = Purchase
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(PURCHASE_FIELDS)
    yield out.getvalue()
    with engine.connect() as conn, conn.begin():
        after = None
        while True:
            stmt = (select(p.id, *[getattr(p, f) for f in PURCHASE_FIELDS]).where(p.customer_id == customer_id)
                    .order_by(p.id).limit(batch))
            rows = conn.execute(stmt.where(p.id > after) if after is not None else stmt).all()
            if not rows:
                return
            out.seek(0)
            out.truncate()
            writer.writerows([[_cell(v) for v in r[1:]] for r in rows])
            yield out.getvalue()
            after = rows[-1][0]
