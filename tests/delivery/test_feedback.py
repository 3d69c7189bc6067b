"""Late bounces and complaints: reports parsed the way Postfix, Gmail and Yahoo write them, matched to their
message by Message-ID, applied once (hard bounces and complaints suppress, soft bounces count to the limit),
unmatched and forged ones only counted, no address kept or logged; on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from sqlalchemy import func, select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.delivery.feedback import FeedbackEvent, Kind, parse_report, record_events
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import UnreadableReport
from crm_tasks.store.models import AddressBounce, DeliveryEvent, Message
from tests.delivery.feedback_support import (
    AS_OF,
    OTHER_ID,
    PEOPLE,
    RUN_AT,
    arf_complaint,
    auto_reply,
    gmail_dsn,
    next_birthday_plan,
    postfix_dsn,
    send_birthdays,
    suppressions,
)
from tests.factories import add_customers, campaign


@pytest.fixture
def sent(engine, cfg) -> dict[str, str]:
    return send_birthdays(engine, cfg)


def record(engine, cfg, events):
    with engine.begin() as conn:
        result = record_events(conn, cfg, events)
    assert result.reconciles and result.read == len(events)
    return result


def events_table(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(DeliveryEvent).order_by(DeliveryEvent.id)).all()


# --- parsing -----------------------------------------------------------------------------------------------

MID = "<0123456789abcdef0123456789abcdef@example.com>"


@pytest.mark.parametrize("raw, kind, code", [
    (postfix_dsn(MID, "asha.rao@example.org"), Kind.HARD_BOUNCE, "5.1.1"),
    (gmail_dsn(MID, "ravi.kumar@gmail.com"), Kind.HARD_BOUNCE, "5.1.1"),
    (postfix_dsn(MID, "asha.rao@example.org", action="delayed", status="4.4.1",
                 diagnostic="X-Postfix; connect to mx.example.org[203.0.113.5]:25: Connection timed out"),
     Kind.SOFT_BOUNCE, "4.4.1"),
    # Postfix gives up after maximal_queue_lifetime with the last temporary status: still no permanent verdict.
    (postfix_dsn(MID, "asha.rao@example.org", status="4.2.2", diagnostic="smtp; 452 4.2.2 mailbox full"),
     Kind.SOFT_BOUNCE, "4.2.2"),
    (postfix_dsn(MID, "asha.rao@example.org", action="relayed", status="2.0.0", diagnostic="smtp; 250 ok"),
     Kind.OTHER, "2.0.0"),
    (arf_complaint(MID, "asha.rao@example.org"), Kind.COMPLAINT, None),
    (arf_complaint(MID, "asha.rao@example.org", feedback_type="not-spam"), Kind.OTHER, None),
], ids=["postfix-failed", "gmail-failed", "postfix-delayed", "postfix-failed-4xx", "relayed", "arf-abuse",
        "arf-not-spam"])
def test_reports_become_events_naming_the_original_message(raw, kind, code):
    [event] = parse_report(raw, "imap")
    assert (event.kind, event.status_code, event.message_ids, event.source) == (kind, code, (MID,), "imap")
    assert event.occurred_at is not None and event.occurred_at.tzinfo is not None
    # The diagnostic is kept without the address, and without its local part on its own either.
    for text in ("asha.rao", "ravi.kumar", "@example.org", "@gmail.com"):
        assert text not in (event.detail or "")
    # The same report read again is the same event; another report about the same message is not.
    assert parse_report(raw, "imap")[0].event_key == event.event_key


def test_a_postfix_diagnostic_keeps_its_meaning_without_the_address():
    [event] = parse_report(postfix_dsn(MID, "asha.rao@example.org", dsn_id="<d1@mail.example.com>"), "maildir")
    assert event.detail == ("failed: smtp; 550 5.1.1 <address>: Recipient address rejected: User unknown in virtual "
                            "mailbox table (user <address>)")
    other = parse_report(postfix_dsn(MID, "asha.rao@example.org", dsn_id="<d2@mail.example.com>"), "maildir")[0]
    assert other.event_key != event.event_key and event.source == "maildir"


@pytest.mark.parametrize("raw, reason", [
    (auto_reply(MID), "not a report (Content-Type text/plain)"),
    (postfix_dsn(MID, "a@example.org").replace(b"message/delivery-status", b"text/plain"), "without its message/"),
    (postfix_dsn(MID, "a@example.org").replace(b"delivery-status;", b"disposition-notification;"),
     "neither delivery-status nor feedback-report"),
    (arf_complaint(MID, "a@example.org").replace(b"Feedback-Type: abuse", b"X-Nothing: 1"), "without a Feedback-Type"),
])
def test_what_is_not_a_readable_report_is_refused_with_the_reason(raw, reason):
    with pytest.raises(UnreadableReport, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_report(raw, "imap")


def test_a_report_without_a_recipient_block_is_refused():
    raw = postfix_dsn(MID, "a@example.org")
    start, end = raw.index(b"\r\n\r\nFinal-Recipient"), raw.index(b"Diagnostic-Code")
    raw = raw[:start] + raw[raw.index(b"\r\n\r\n", end):]
    with pytest.raises(UnreadableReport, match="without a per-recipient block"):
        parse_report(raw, "imap")


# --- recording and applying --------------------------------------------------------------------------------


def test_a_hard_bounce_suppresses_the_address_and_planning_then_excludes_it(engine, cfg, keys, sent):
    [event] = parse_report(postfix_dsn(sent["C1"], "asha.rao@example.org"), "imap")
    result = record(engine, cfg, [event])
    assert (result.applied, result.unmatched, result.suppressed, result.kinds) == (1, 0, 1, {"hard_bounce": 1})
    address = email_hash("asha.rao@example.org", keys.hashing)
    assert suppressions(engine) == {address: ("C1", "hard_bounce")}
    [row] = events_table(engine)
    assert (row.status, row.kind, row.source, row.status_code, row.message_id, row.idempotency_key, row.email_hash) \
        == ("applied", "hard_bounce", "imap", "5.1.1", sent["C1"], "birthday:C1:2026", address)
    assert row.occurred_at is not None and row.received_at is not None
    plan = next_birthday_plan(engine, cfg)
    assert plan.reasons == {"suppressed": 1} and {m.customer_id for m in plan.sample} == {"C2", "C3"}


def test_a_gmail_bounce_is_matched_by_its_original_message_id(engine, cfg, keys, sent):
    result = record(engine, cfg, parse_report(gmail_dsn(sent["C2"], "ravi.kumar@example.net"), "imap"))
    assert result.applied == 1 and suppressions(engine) == {
        email_hash("ravi.kumar@example.net", keys.hashing): ("C2", "hard_bounce")}


def test_a_soft_bounce_counts_and_suppresses_only_at_the_limit(engine, cfg, keys, sent):
    assert cfg.delivery.soft_bounce_limit == 3
    address = email_hash("meera.iyer@example.com", keys.hashing)

    def delayed(n):
        raw = postfix_dsn(sent["C3"], "meera.iyer@example.com", action="delayed", status="4.4.1",
                          diagnostic="X-Postfix; connect to mx.example.com[203.0.113.9]:25: Connection timed out",
                          dsn_id=f"<delay{n}@mail.example.com>")
        return parse_report(raw, "imap")

    for n in (1, 2):
        result = record(engine, cfg, delayed(n))
        assert (result.applied, result.soft_bounces, result.suppressed) == (1, 1, 0)
        assert suppressions(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(select(AddressBounce.soft_bounces).where(AddressBounce.email_hash == address)).scalar() == 2
    assert next_birthday_plan(engine, cfg).reasons == {}  # not yet: two temporary failures
    result = record(engine, cfg, delayed(3))
    assert (result.soft_bounces, result.suppressed) == (1, 1)
    assert suppressions(engine) == {address: ("C3", "soft_bounce")}  # the reason the sender gives at its limit
    assert next_birthday_plan(engine, cfg).reasons == {"suppressed": 1}


def test_a_complaint_suppresses_the_address(engine, cfg, keys, sent):
    result = record(engine, cfg, parse_report(arf_complaint(sent["C2"], "ravi.kumar@example.net"), "imap"))
    assert (result.applied, result.kinds, result.suppressed) == (1, {"complaint": 1}, 1)
    assert suppressions(engine) == {email_hash("ravi.kumar@example.net", keys.hashing): ("C2", "complaint")}
    assert next_birthday_plan(engine, cfg).reasons == {"suppressed": 1}


def test_the_same_event_twice_is_applied_once_and_counted_as_a_duplicate(engine, cfg, keys, sent):
    soft = parse_report(postfix_dsn(sent["C1"], "asha.rao@example.org", action="delayed", status="4.4.1"), "imap")
    hard = parse_report(postfix_dsn(sent["C2"], "ravi.kumar@example.net"), "imap")
    first = record(engine, cfg, soft + hard)
    assert (first.applied, first.duplicate, first.soft_bounces, first.suppressed) == (2, 0, 1, 1)
    # A crash before the mailbox moved them: the same reports are read again, both in one batch this time.
    again = record(engine, cfg, soft + hard + soft)
    assert (again.read, again.applied, again.duplicate, again.soft_bounces, again.suppressed) == (3, 0, 3, 0, 0)
    with engine.connect() as conn:
        assert conn.execute(select(AddressBounce.soft_bounces)).scalars().all() == [1]  # counted once
    rows = events_table(engine)
    assert [r.status for r in rows] == ["applied", "applied", "duplicate", "duplicate", "duplicate"]
    assert {r.detail for r in rows[2:]} == {f"a second delivery of {soft[0].event_key}",
                                            f"a second delivery of {hard[0].event_key}"}
    assert len(suppressions(engine)) == 1


def test_an_unmatched_event_is_counted_and_never_applied(engine, cfg, sent):
    hard = parse_report(postfix_dsn(OTHER_ID, "asha.rao@example.org"), "imap")
    soft = parse_report(postfix_dsn(OTHER_ID, "asha.rao@example.org", action="delayed", status="4.4.1"), "imap")
    nameless = [FeedbackEvent("imap", "dsn:no-id", Kind.COMPLAINT)]  # a report that named no message at all
    result = record(engine, cfg, hard + soft + nameless)
    assert (result.unmatched, result.applied, result.suppressed, result.soft_bounces) == (3, 0, 0, 0)
    assert suppressions(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AddressBounce)).scalar() == 0
    rows = events_table(engine)
    assert [(r.status, r.message_id, r.idempotency_key, r.email_hash) for r in rows] == [
        ("unmatched", OTHER_ID, None, None), ("unmatched", OTHER_ID, None, None), ("unmatched", None, None, None)]


def test_a_forged_event_is_recorded_as_forged_and_never_matched(engine, cfg, sent):
    claims = FeedbackEvent("ses", "ses:claimed-id", Kind.HARD_BOUNCE, (sent["C1"],), forged=True)
    result = record(engine, cfg, [claims, FeedbackEvent.forgery("mailgun", "its signature does not match")])
    assert (result.forged, result.applied, result.suppressed) == (2, 0, 0)
    assert suppressions(engine) == {}
    rows = events_table(engine)
    assert [(r.status, r.message_id, r.idempotency_key) for r in rows] == [("forged", None, None)] * 2
    assert rows[1].event_key.startswith("forged:") and rows[1].detail == "its signature does not match"


def test_a_test_recipients_bounce_is_matched_but_suppresses_no_customer(engine, cfg, keys):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0, test_recipient="qa@example.org")
    with engine.connect() as conn:
        mid = conn.execute(select(Message.message_id).where(Message.test.is_(True))).scalar_one()
    result = record(engine, cfg, parse_report(postfix_dsn(mid, "qa@example.org"), "imap"))
    assert (result.applied, result.suppressed) == (1, 0) and suppressions(engine) == {}


def test_no_address_or_name_in_the_table_or_the_logs(engine, cfg, sent, caplog):
    caplog.set_level(logging.DEBUG)
    events = (parse_report(postfix_dsn(sent["C1"], "asha.rao@example.org"), "imap")
              + parse_report(gmail_dsn(sent["C2"], "ravi.kumar@example.net"), "imap")
              + parse_report(arf_complaint(sent["C3"], "meera.iyer@example.com"), "imap")
              + parse_report(postfix_dsn(OTHER_ID, "meera.iyer@example.com", action="delayed", status="4.4.1"), "imap"))
    result = record(engine, cfg, events)
    assert (result.applied, result.unmatched) == (3, 1)
    stored = " ".join(str(v) for row in events_table(engine) for v in row)
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for first, email in PEOPLE.values():
        for text in (email, email.split("@")[0], first):
            assert text not in stored, text
            assert text not in logged, text
    assert "birthday:C1:2026" in logged  # the logs name messages by their idempotency key
