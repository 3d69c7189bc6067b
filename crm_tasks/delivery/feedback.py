"""Delivery feedback after the send: late bounces and complaints, matched to their message and recorded once.

Events come from two places:

- the **bounce mailbox** (``bounce_mailbox.py``): delivery status notifications (RFC 3464,
  ``multipart/report; report-type=delivery-status``) and complaint reports (RFC 5965 ARF,
  ``report-type=feedback-report``), parsed here with the standard library's ``email`` package;
- the providers' **webhooks** (``webhooks.py``): Amazon SES through SNS, and Mailgun.

Each becomes a ``FeedbackEvent`` and ``record_events`` writes it to ``delivery_events`` with one status:

| status | when | what is done |
|---|---|---|
| ``applied`` | its Message-ID names a message of ours | hard bounce, complaint: the message's address is suppressed; soft bounce: counted toward ``delivery.soft_bounce_limit`` |
| ``unmatched`` | no message of ours has its Message-ID | nothing: counted |
| ``forged`` | its signature, certificate, topic or timestamp did not check | nothing: counted |
| ``duplicate`` | its ``event_key`` was recorded before (a provider's retry, a mailbox read twice) | nothing: counted |

so that ``read = applied + unmatched + forged + duplicate`` always. No address is stored or logged: the
suppression is keyed by the address's keyed hash, and diagnostics are kept with addresses removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from enum import StrEnum

from sqlalchemy import Connection, select

from crm_tasks.delivery.smtp import scrub
from crm_tasks.delivery.suppression import add_soft_bounces, add_suppressions, email_hash
from crm_tasks.errors import UnreadableReport
from crm_tasks.settings import Settings
from crm_tasks.store.bulk import dialect_insert, rows_in
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import DeliveryEvent, Message
from crm_tasks.store.models import DeliveryEventStatus as Status

log = logging.getLogger(__name__)


class Kind(StrEnum):
    HARD_BOUNCE = "hard_bounce"  # permanent: the address is suppressed
    SOFT_BOUNCE = "soft_bounce"  # temporary: counted; soft_bounce_limit in a row suppress the address
    COMPLAINT = "complaint"  # the recipient reported it as spam: the address is suppressed
    OTHER = "other"  # delivered, relayed, not-spam, an unknown type: recorded, nothing done


# Which kinds suppress, and with which suppression reason.
SUPPRESSES = {Kind.HARD_BOUNCE: "hard_bounce", Kind.COMPLAINT: "complaint"}
SOFT_BOUNCE_REASON = "soft_bounce"  # the reason send.py gives an address at the soft-bounce limit
DETAIL_CHARS = 200
INSERT_ROWS = 80  # rows per INSERT: 11 bound values each, within SQLite's oldest limit of 999


@dataclass(frozen=True)
class FeedbackEvent:
    """One bounce or complaint about one message, as a report or a provider told it (no address in it)."""

    source: str  # imap | maildir | ses | mailgun
    event_key: str  # the provider's event id, or a hash of the report's identifying parts: recorded once
    kind: str  # Kind
    message_ids: tuple[str, ...] = ()  # the Message-IDs it names, normalised to <...>; the first ours wins
    status_code: str | None = None  # enhanced status, e.g. 5.1.1
    detail: str | None = None  # the diagnostic, addresses removed
    occurred_at: datetime | None = None
    forged: bool = False  # its authenticity did not check: recorded as forged, never matched

    @classmethod
    def forgery(cls, source: str, why: str) -> FeedbackEvent:
        """A request that failed its check. Its key is random: nothing in it can be trusted to identify it,
        and each one is counted (a flood is cut short by the route's rate limit, not by dedup)."""
        return cls(source, f"forged:{secrets.token_hex(16)}", Kind.OTHER, detail=scrub(why, DETAIL_CHARS),
                   forged=True)


@dataclass
class FeedbackResult:
    """What recording a set of events did; counts only, safe for logs and XCom."""

    read: int = 0
    applied: int = 0
    unmatched: int = 0
    forged: int = 0
    duplicate: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # every event read, by kind
    suppressed: int = 0  # addresses newly suppressed (hard bounces, complaints, soft bounces at the limit)
    soft_bounces: int = 0  # soft bounces counted toward delivery.soft_bounce_limit

    @property
    def reconciles(self) -> bool:
        return self.read == self.applied + self.unmatched + self.forged + self.duplicate

    def add(self, other: FeedbackResult) -> None:
        for name in ("read", "applied", "unmatched", "forged", "duplicate", "suppressed", "soft_bounces"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, n in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + n

    def summary(self) -> dict:
        return asdict(self) | {"reconciles": self.reconciles}


# --- reading a report (RFC 3464 DSN, RFC 5965 ARF) -------------------------------------------------------

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
# The parts a report returns the original message's headers in (RFC 3462/6522, RFC 6533 for SMTPUTF8).
_RETURNED = ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers", "message/global",
             "message/global-headers")
# Complaint reports about our mail; not-spam and auth-failure (DMARC) reports are no complaint.
_COMPLAINT_TYPES = {"abuse", "fraud", "virus", "other"}


def normalise_message_id(value: str | None) -> str | None:
    """``<id@domain>`` from a header value, with or without angle brackets (Mailgun and SES omit them)."""
    if not value:
        return None
    found = _MESSAGE_ID.search(value)
    if found:
        return found.group(0)[:128]
    bare = value.strip()
    return f"<{bare}>"[:128] if bare and " " not in bare and "@" in bare else None


def event_key(prefix: str, *parts: str | None) -> str:
    """A stable key from a report's identifying parts: the same report read twice gets the same key."""
    digest = hashlib.sha256(json.dumps([p or "" for p in parts]).encode()).hexdigest()
    return f"{prefix}:{digest}"


def parse_report(raw: bytes, source: str) -> list[FeedbackEvent]:
    """The events of one message from the bounce mailbox: one per recipient block of a DSN, or one for a
    complaint report. UnreadableReport when it is neither (an auto-reply, a bounce in free text, a
    report without a recipient block): the caller keeps such a message for a person."""
    msg = message_from_bytes(raw, policy=compat32)
    if msg.get_content_type() != "multipart/report":
        raise UnreadableReport(f"not a report (Content-Type {msg.get_content_type()})")
    report_type = (msg.get_param("report-type") or "").lower()
    # The report's own identity: its Message-ID, else its bytes (the same copy read twice is the same event).
    report_id = (msg.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest()
    parts = list(msg.walk())
    if report_type == "delivery-status":
        return _dsn_events(msg, parts, report_id, source)
    if report_type == "feedback-report":
        return [_arf_event(msg, parts, report_id, source)]
    raise UnreadableReport(f"a report of type {report_type or 'none'}, neither delivery-status nor feedback-report")


def _dsn_events(msg: EmailMessage, parts: list[EmailMessage], report_id: str, source: str) -> list[FeedbackEvent]:
    status_part = next((p for p in parts if p.get_content_type() in ("message/delivery-status",
                                                                     "message/global-delivery-status")), None)
    if status_part is None:
        raise UnreadableReport("a delivery-status report without its message/delivery-status part")
    blocks = _field_blocks(status_part)
    if len(blocks) < 2:
        raise UnreadableReport("a delivery status notification without a per-recipient block")
    per_message, recipients = blocks[0], blocks[1:]
    returned = _returned_message_id(parts)
    sent_at = _when(msg.get("Date"))
    events = []
    for block in recipients:
        action = (block.get("Action") or "").strip().lower()
        status = _STATUS.search(block.get("Status") or "")
        code = ".".join(status.groups()) if status else None
        recipient = _address(block.get("Final-Recipient")) or _address(block.get("Original-Recipient"))
        # Some MTAs name the original message in the blocks; the returned headers are the usual place.
        ids = tuple(i for i in (normalise_message_id(block.get("Original-Message-ID")),
                                normalise_message_id(per_message.get("Original-Message-ID")),
                                normalise_message_id(per_message.get("X-Original-Message-ID")), returned) if i)
        diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
        events.append(FeedbackEvent(
            source=source,
            event_key=event_key("dsn", report_id, ids[0] if ids else None, (recipient or "").lower(), action, code),
            kind=_dsn_kind(action, code),
            message_ids=_unique(ids),
            status_code=code,
            detail=without_address(f"{action or 'no action'}: {diagnostic}" if diagnostic else action or None,
                                    recipient),
            occurred_at=_when(block.get("Last-Attempt-Date")) or sent_at,
        ))
    return events


def _dsn_kind(action: str, code: str | None) -> str:
    """failed with 5.x.x is permanent (the same rule as a 5xx at send time); failed with 4.x.x (the MTA gave
    up on a temporary error) and delayed are temporary. No status class, or delivered/relayed/expanded:
    nothing to act on, since an address is never suppressed on a guess."""
    if action == "failed" and code:
        return Kind.HARD_BOUNCE if code.startswith("5") else Kind.SOFT_BOUNCE
    if action == "delayed":
        return Kind.SOFT_BOUNCE
    return Kind.OTHER


def _arf_event(msg: EmailMessage, parts: list[EmailMessage], report_id: str, source: str) -> FeedbackEvent:
    report = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    if report is None:
        raise UnreadableReport("a feedback report without its message/feedback-report part")
    blocks = _field_blocks(report)
    fields = blocks[0] if blocks else EmailMessage()
    feedback_type = (fields.get("Feedback-Type") or "").strip().lower()
    if not feedback_type:
        raise UnreadableReport("a feedback report without a Feedback-Type")
    returned = _returned_message_id(parts)
    agent = " ".join((fields.get("User-Agent") or "").split())
    return FeedbackEvent(
        source=source,
        event_key=event_key("arf", report_id, returned, feedback_type),
        kind=Kind.COMPLAINT if feedback_type in _COMPLAINT_TYPES else Kind.OTHER,
        message_ids=(returned,) if returned else (),
        detail=scrub(f"feedback type {feedback_type}" + (f" from {agent}" if agent else ""), DETAIL_CHARS),
        occurred_at=_when(fields.get("Arrival-Date")) or _when(fields.get("Received-Date")) or _when(msg.get("Date")),
    )


def _field_blocks(part: EmailMessage) -> list[EmailMessage]:
    """The header blocks of a message/delivery-status or message/feedback-report part. The parser splits the
    former into blocks and reads the latter as one embedded message; a part it left as text is split here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, EmailMessage)]
    text = part.get_payload(decode=True) or b""
    return [BytesHeaderParser(policy=compat32).parsebytes(b.strip() + b"\n")
            for b in re.split(rb"\r?\n\s*\r?\n", text) if b.strip()]


def _returned_message_id(parts: list[EmailMessage]) -> str | None:
    """The Message-ID of the returned original message (its headers or the whole message)."""
    for part in parts:
        kind = part.get_content_type()
        if kind not in _RETURNED:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            headers = payload[0]
        else:
            headers = BytesHeaderParser(policy=compat32).parsebytes(part.get_payload(decode=True) or b"")
        found = normalise_message_id(headers.get("Message-ID"))
        if found:
            return found
    return None


def _address(value: str | None) -> str | None:
    """The address of a Final-Recipient/Original-Recipient field (``rfc822; user@example.com``)."""
    if not value:
        return None
    return value.split(";", 1)[-1].strip().strip("<>") or None


def without_address(text: str | None, recipient: str | None) -> str | None:
    """A diagnostic fit to keep: every address removed, and the recipient's local part too (servers write
    ``user asha.rao unknown``)."""
    if not text:
        return None
    text = scrub(text, limit=len(text))  # whole addresses first, then what is left of the recipient's
    local = (recipient or "").split("@", 1)[0]
    if len(local) >= 3:  # shorter ones are too likely to be ordinary words of the diagnostic
        text = re.sub(re.escape(local), "<address>", text, flags=re.IGNORECASE)
    return text[:DETAIL_CHARS]


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


# --- recording events ---------------------------------------------------------------------------------


def record_events(conn: Connection, cfg: Settings, events: list[FeedbackEvent],
                  now: datetime | None = None) -> FeedbackResult:
    """Record ``events`` in ``delivery_events``, each exactly once, and apply the matched ones (see the
    module docstring). Set-based: one read of the messages they name, one insert per chunk of rows, one
    suppression statement. Runs in the caller's transaction, so a report is marked done only after its
    events are committed."""
    now = now or datetime.now(UTC)
    result = FeedbackResult(read=len(events))
    for e in events:
        result.kinds[e.kind] = result.kinds.get(e.kind, 0) + 1
    if not events:
        return result
    # The messages the events name, through ix_messages_message_id. A forged event names nothing we trust.
    m = Message
    named = {i for e in events if not e.forged for i in e.message_ids}
    ours = {r.message_id: r for r in rows_in(conn, select(m.message_id, m.idempotency_key, m.customer_id,
                                                          m.recipient, m.test), m.message_id, named)}
    hashing = load_keys(conn, cfg).hashing if ours else ""
    rows, matched = [], {}
    for e in events:
        msg = None if e.forged else next((ours[i] for i in e.message_ids if i in ours), None)
        # A test message went to a tester, and an erased person's message keeps no address (it is suppressed
        # by hash already): matched, but there is no customer address to act on.
        address = email_hash(msg.recipient, hashing) if msg is not None and msg.recipient and not msg.test else None
        rows.append({
            "source": e.source, "event_key": e.event_key[:128], "kind": e.kind,
            "status": Status.FORGED if e.forged else Status.APPLIED if msg is not None else Status.UNMATCHED,
            "message_id": None if e.forged else (msg.message_id if msg is not None else next(iter(e.message_ids), None)),
            "idempotency_key": msg.idempotency_key if msg is not None else None,
            "email_hash": address, "status_code": e.status_code, "detail": e.detail,
            "occurred_at": e.occurred_at, "received_at": now,
        })
        if msg is not None:
            matched[e.event_key[:128]] = (msg, address)
    new = _insert_new(conn, rows)
    # A key recorded before, or twice in this batch: a second delivery of the same event. It is kept as its
    # own row (so a provider's retries stay visible) under a fresh key naming the first one.
    first: dict[str, dict] = {}
    applied = []
    duplicates = []
    for row in rows:
        if row["event_key"] in new and row["event_key"] not in first:
            first[row["event_key"]] = row
            if row["status"] == Status.APPLIED:
                applied.append(row)
        else:
            duplicates.append({**row, "status": Status.DUPLICATE, "event_key": f"duplicate:{secrets.token_hex(16)}",
                               "detail": f"a second delivery of {row['event_key']}"[:DETAIL_CHARS]})
    _insert_new(conn, duplicates)
    for row in first.values():
        setattr(result, row["status"], getattr(result, row["status"]) + 1)
    result.duplicate = len(duplicates)
    _apply(conn, cfg, [(row, *matched[row["event_key"]]) for row in applied], now, result)
    log.info("delivery feedback: %d events read, %d applied, %d unmatched, %d forged, %d duplicate; "
             "%d addresses suppressed, %d soft bounces counted", result.read, result.applied, result.unmatched,
             result.forged, result.duplicate, result.suppressed, result.soft_bounces)
    return result


def _insert_new(conn: Connection, rows: list[dict]) -> set[str]:
    """Insert the rows whose event_key is new; returns those keys. ON CONFLICT makes two readers of the same
    event at once (two webhook deliveries racing) record it once: the loser sees it as not new."""
    new: set[str] = set()
    for i in range(0, len(rows), INSERT_ROWS):
        stmt = (dialect_insert(conn)(DeliveryEvent).values(rows[i:i + INSERT_ROWS])
                .on_conflict_do_nothing(index_elements=["event_key"]).returning(DeliveryEvent.event_key))
        new.update(conn.execute(stmt).scalars())
    return new


def _apply(conn: Connection, cfg: Settings, applied: list[tuple], now: datetime, result: FeedbackResult) -> None:
    """Hard bounces and complaints suppress the message's address; soft bounces count toward the limit, the
    same count the sender keeps (``suppression.add_soft_bounces``)."""
    suppress: dict[str, dict] = {}
    soft: Counter[str] = Counter()
    owner: dict[str, str] = {}
    for row, msg, address in applied:
        log.info("delivery event %s: %s of message %s", row["event_key"], row["kind"], msg.idempotency_key)
        if address is None:
            continue
        owner[address] = msg.customer_id
        if row["kind"] in SUPPRESSES:
            suppress.setdefault(address, {"email_hash": address, "customer_id": msg.customer_id,
                                          "reason": SUPPRESSES[row["kind"]], "created_at": now})
        elif row["kind"] == Kind.SOFT_BOUNCE:
            soft[address] += 1
    if soft:
        totals = add_soft_bounces(conn, soft, now)
        result.soft_bounces = sum(soft.values())
        for address, n in totals.items():
            if n >= cfg.delivery.soft_bounce_limit:
                suppress.setdefault(address, {"email_hash": address, "customer_id": owner[address],
                                              "reason": SOFT_BOUNCE_REASON, "created_at": now})
    rows = list(suppress.values())
    for i in range(0, len(rows), INSERT_ROWS):
        result.suppressed += add_suppressions(conn, rows[i:i + INSERT_ROWS])
