"""Shared by the delivery-feedback tests: customers with a sent message, and late bounces and complaints as
they arrive: delivery status notifications written the way Postfix and Gmail write them, an ARF complaint the
way Yahoo's feedback loop sends it, an out-of-office reply, and the JSON of Amazon SES notifications (as AWS
documents them) and of Mailgun's webhooks."""

from __future__ import annotations

import secrets
import textwrap
from datetime import UTC, date, datetime

from sqlalchemy import select, update

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.store.models import Message, Suppression
from tests.factories import add_customers, campaign

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)
PEOPLE = {"C1": ("Asha", "asha.rao@example.org"), "C2": ("Ravi", "ravi.kumar@example.net"),
          "C3": ("Meera", "meera.iyer@example.com")}
OTHER_ID = "<ffffffffffffffffffffffffffffffff@elsewhere.example>"  # no message of ours


def send_birthdays(engine, cfg) -> dict[str, str]:
    """The three PEOPLE each sent a birthday message on AS_OF; returns their Message-IDs by customer id."""
    add_customers(engine, *({"customer_id": cid, "first_name": first, "email": email, "birthday": date(1990, 5, 10)}
                            for cid, (first, email) in PEOPLE.items()))
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    assert plan.recipients == 3
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent", sent_at=RUN_AT))
        return dict(conn.execute(select(Message.customer_id, Message.message_id)).all())


def suppressions(engine) -> dict[str, tuple[str, str]]:
    """Every suppression: address hash -> (customer id, reason)."""
    with engine.connect() as conn:
        return {h: (c, r) for h, c, r in conn.execute(select(Suppression.email_hash, Suppression.customer_id,
                                                             Suppression.reason))}


def next_birthday_plan(engine, cfg):
    """Next year's birthday plan, recorded nowhere: whom planning would mail now."""
    return plan_campaign(engine, cfg, campaign(), date(2027, 5, 10), datetime(2027, 5, 10, 0, 30, tzinfo=UTC),
                         record=False, sample=100)


def _crlf(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").replace("\n", "\r\n").encode()


def _ind(text: str) -> str:
    """A multi-line value for a template indented by 8 spaces (dedented with it)."""
    return text.rstrip("\n").replace("\n", "\n        ")


def _original_headers(message_id: str, recipient: str) -> str:
    """The headers of one of our campaign messages, as a report returns them."""
    return textwrap.dedent(f"""\
        Return-Path: <rewards@example.com>
        Received: from crm-worker-1 (crm-worker-1 [10.0.0.7])
        \tby mail.example.com (Postfix) with ESMTPSA id 3F2A12C0A6B
        \tfor <{recipient}>; Sun, 10 May 2026 11:31:58 +0530 (IST)
        From: Rewards Club <rewards@example.com>
        To: Asha <{recipient}>
        Subject: =?utf-8?b?SGFwcHkgYmlydGhkYXksIEFzaGEh?=
        Date: Sun, 10 May 2026 06:01:58 +0000
        Message-ID: {message_id}
        List-Id: <birthday.example.com>
        List-Unsubscribe: <https://crm.example.com/unsubscribe/QzE.abc>
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="=-crm-1"
        """)


def postfix_dsn(message_id: str, recipient: str, *, action: str = "failed", status: str = "5.1.1",
                diagnostic: str | None = None, dsn_id: str | None = None) -> bytes:
    """Postfix's bounce (or, with action delayed, its delay warning): text/plain, message/delivery-status,
    text/rfc822-headers."""
    dsn_id = dsn_id or f"<20260510060201.{secrets.token_hex(5).upper()}@mail.example.com>"
    local = recipient.split("@")[0]
    diagnostic = diagnostic or (f"smtp; 550 5.1.1 <{recipient}>: Recipient address\n    rejected: User unknown "
                                f"in virtual mailbox table (user {local})")
    subject = "Undelivered Mail Returned to Sender" if action == "failed" else "Delayed Mail (still being retried)"
    headers = _ind(_original_headers(message_id, recipient))
    return _crlf(f"""
        Return-Path: <>
        Delivered-To: bounces@example.com
        Received: by mail.example.com (Postfix) id 3F2A12C0A6B; Sun, 10 May 2026 11:32:01 +0530 (IST)
        Date: Sun, 10 May 2026 11:32:01 +0530 (IST)
        From: MAILER-DAEMON@mail.example.com (Mail Delivery System)
        Subject: {subject}
        To: bounces@example.com
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status;
        \tboundary="3F2A12C0A6B.1778393521/mail.example.com"
        Content-Transfer-Encoding: 8bit
        Message-Id: {dsn_id}

        This is a MIME-encapsulated message.

        --3F2A12C0A6B.1778393521/mail.example.com
        Content-Description: Notification
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: 8bit

        This is the mail system at host mail.example.com.

        I'm sorry to have to inform you that your message could not
        be delivered to one or more recipients. It's attached below.

                           The mail system

        <{recipient}>: host mx.example.org[203.0.113.5] said: 550 5.1.1
            <{recipient}>: Recipient address rejected: User unknown (in reply to RCPT TO command)

        --3F2A12C0A6B.1778393521/mail.example.com
        Content-Description: Delivery report
        Content-Type: message/delivery-status

        Reporting-MTA: dns; mail.example.com
        X-Postfix-Queue-ID: 3F2A12C0A6B
        X-Postfix-Sender: rfc822; rewards@example.com
        Arrival-Date: Sun, 10 May 2026 11:31:58 +0530 (IST)

        Final-Recipient: rfc822; {recipient}
        Original-Recipient: rfc822;{recipient}
        Action: {action}
        Status: {status}
        Remote-MTA: dns; mx.example.org
        Diagnostic-Code: {_ind(diagnostic)}

        --3F2A12C0A6B.1778393521/mail.example.com
        Content-Description: Undelivered Message Headers
        Content-Type: text/rfc822-headers
        Content-Transfer-Encoding: 8bit

        {headers}

        --3F2A12C0A6B.1778393521/mail.example.com--
        """)


def gmail_dsn(message_id: str, recipient: str, *, dsn_id: str | None = None) -> bytes:
    """Gmail's "Address not found": the per-message block names the original (X-Original-Message-ID) and
    the whole original message comes back as message/rfc822 after a multipart/related notice."""
    dsn_id = dsn_id or f"<{secrets.token_hex(8)}.1c69fb81.a1b2.1234.GMR@mx.google.com>"
    original = _ind(_original_headers(message_id, recipient))
    return _crlf(f"""
        Delivered-To: bounces@example.com
        Return-Path: <>
        From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
        To: bounces@example.com
        Auto-Submitted: auto-replied
        Subject: Delivery Status Notification (Failure)
        References: {message_id}
        In-Reply-To: {message_id}
        X-Failed-Recipients: {recipient}
        Message-ID: {dsn_id}
        Date: Sun, 10 May 2026 06:02:11 -0700 (PDT)
        MIME-Version: 1.0
        Content-Type: multipart/report; boundary="000000000000a1b2c3d4e5f60718"; report-type=delivery-status

        --000000000000a1b2c3d4e5f60718
        Content-Type: multipart/related; boundary="000000000000a1b2c3d4e5f60720"

        --000000000000a1b2c3d4e5f60720
        Content-Type: text/plain; charset="UTF-8"


        ** Address not found **

        Your message wasn't delivered to {recipient} because the address couldn't be found, or is unable to receive mail.

        --000000000000a1b2c3d4e5f60720--

        --000000000000a1b2c3d4e5f60718
        Content-Type: message/delivery-status

        Reporting-MTA: dns; googlemail.com
        Received-From-MTA: dns; rewards@example.com
        Arrival-Date: Sun, 10 May 2026 06:02:10 -0700 (PDT)
        X-Original-Message-ID: {message_id}

        Final-Recipient: rfc822; {recipient}
        Action: failed
        Status: 5.1.1
        Remote-MTA: dns; gmail-smtp-in.l.google.com. (142.250.0.26, the server for the domain gmail.com.)
        Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try
         550-5.1.1 double-checking the recipient's email address for typos or
         550-5.1.1 unnecessary spaces. For more information, go to
         550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si2345678pfb.123 - gsmtp
        Last-Attempt-Date: Sun, 10 May 2026 06:02:11 -0700 (PDT)

        --000000000000a1b2c3d4e5f60718
        Content-Type: message/rfc822

        {original}

        --=-crm-1
        Content-Type: text/plain; charset=utf-8

        Happy birthday!
        --=-crm-1--

        --000000000000a1b2c3d4e5f60718--
        """)


def arf_complaint(message_id: str, recipient: str, *, feedback_type: str = "abuse",
                  report_id: str | None = None) -> bytes:
    """An ARF (RFC 5965) complaint, as Yahoo's feedback loop sends one: the original comes back whole."""
    report_id = report_id or f"<{secrets.token_hex(8)}@arf.mail.yahoo.com>"
    original = _ind(_original_headers(message_id, recipient))
    return _crlf(f"""
        From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
        To: fbl@example.com
        Subject: FW: Happy birthday, Asha!
        Date: Sun, 10 May 2026 06:20:00 +0000
        Message-ID: {report_id}
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=feedback-report;
        \tboundary="----=_Part_1_12345.1778393999"

        ------=_Part_1_12345.1778393999
        Content-Type: text/plain; charset="US-ASCII"
        Content-Transfer-Encoding: 7bit

        This is an email abuse report for an email message received from IP 198.51.100.7 on
        Sun, 10 May 2026 06:02:00 +0000. For more information about this format please see
        http://www.mipassoc.org/arf/.

        ------=_Part_1_12345.1778393999
        Content-Type: message/feedback-report

        Feedback-Type: {feedback_type}
        User-Agent: Yahoo!-Mail-Feedback/2.0
        Version: 1
        Original-Mail-From: <rewards@example.com>
        Original-Rcpt-To: <{recipient}>
        Arrival-Date: Sun, 10 May 2026 06:02:00 +0000
        Reported-Domain: example.com
        Source-IP: 198.51.100.7

        ------=_Part_1_12345.1778393999
        Content-Type: message/rfc822
        Content-Disposition: inline

        {original}

        --=-crm-1
        Content-Type: text/plain; charset=utf-8

        Happy birthday!
        --=-crm-1--

        ------=_Part_1_12345.1778393999--
        """)


def auto_reply(message_id: str) -> bytes:
    """An out-of-office reply: no report, so it is kept aside for a person, never dropped."""
    return _crlf(f"""
        From: Asha Rao <asha.rao@example.org>
        To: bounces@example.com
        Subject: Automatic reply: Happy birthday, Asha!
        Date: Sun, 10 May 2026 06:05:00 +0000
        Message-ID: <{secrets.token_hex(8)}@example.org>
        In-Reply-To: {message_id}
        Auto-Submitted: auto-replied
        Content-Type: text/plain; charset=utf-8

        I am away until Monday.
        """)


# --- provider webhooks -------------------------------------------------------------------------------------


def ses_mail(message_id: str, recipient: str) -> dict:
    """The ``mail`` object of an SES notification: SES's own messageId, and our Message-ID in the headers."""
    return {
        "timestamp": "2026-05-10T06:01:58.000Z",
        "source": "rewards@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
        "sourceIp": "203.0.113.10",
        "sendingAccountId": "123456789012",
        "messageId": "0100018f5f1a2b3c-4d5e6f70-8192-4a3b-9c8d-7e6f5a4b3c2d-000000",
        "destination": [recipient],
        "headersTruncated": False,
        "headers": [{"name": "From", "value": "Rewards Club <rewards@example.com>"},
                    {"name": "To", "value": f"Asha <{recipient}>"},
                    {"name": "Subject", "value": "Happy birthday, Asha!"},
                    {"name": "Message-ID", "value": message_id}],
        "commonHeaders": {"from": ["Rewards Club <rewards@example.com>"], "to": [f"Asha <{recipient}>"],
                          "messageId": message_id, "subject": "Happy birthday, Asha!"},
    }


def ses_bounce(message_id: str, recipient: str, bounce_type: str = "Permanent",
               feedback_id: str | None = None) -> dict:
    """An SES bounce notification (docs.aws.amazon.com/ses/latest/dg/notification-contents.html)."""
    permanent = bounce_type == "Permanent"
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General" if permanent else "MailboxFull",
            "bouncedRecipients": [{
                "emailAddress": recipient, "action": "failed", "status": "5.1.1" if permanent else "4.2.2",
                "diagnosticCode": (f"smtp; 550 5.1.1 <{recipient}>: user unknown" if permanent
                                   else f"smtp; 452 4.2.2 The email account {recipient} is over quota"),
            }],
            "timestamp": "2026-05-10T06:05:00.000Z",
            "feedbackId": feedback_id or f"0100018f5f1a{secrets.token_hex(6)}-bounce-000000",
            "remoteMtaIp": "127.0.2.0",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": ses_mail(message_id, recipient),
    }


def ses_complaint(message_id: str, recipient: str, feedback_id: str | None = None) -> dict:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": recipient}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2026-05-10T06:09:00.000Z",
            "timestamp": "2026-05-10T06:10:00.000Z",
            "feedbackId": feedback_id or f"0100018f5f1a{secrets.token_hex(6)}-complaint-000000",
        },
        "mail": ses_mail(message_id, recipient),
    }


def mailgun_event_data(message_id: str, recipient: str, event: str = "failed", severity: str = "permanent",
                       event_id: str | None = None) -> dict:
    """Mailgun's ``event-data`` (documentation.mailgun.com, Events): ``failed`` or ``complained``; Mailgun
    writes the Message-ID without angle brackets."""
    data = {
        "event": event,
        "id": event_id or secrets.token_urlsafe(16),
        "timestamp": 1778393400.123456,
        "log-level": "error" if event == "failed" else "warn",
        "recipient": recipient,
        "recipient-domain": recipient.split("@")[1],
        "envelope": {"sender": "bounces@mg.example.com", "targets": recipient, "transport": "smtp"},
        "message": {"headers": {"to": f"Asha <{recipient}>", "message-id": message_id.strip("<>"),
                                "from": "Rewards Club <rewards@example.com>", "subject": "Happy birthday, Asha!"},
                    "attachments": [], "size": 2712},
        "tags": [], "campaigns": [], "user-variables": {},
    }
    if event == "failed":
        data |= {"severity": severity, "reason": "bounce" if severity == "permanent" else "generic",
                 "delivery-status": {
                     "code": 550 if severity == "permanent" else 452,
                     "enhanced-code": "5.1.1" if severity == "permanent" else "4.2.2",
                     "message": (f"5.1.1 The email account {recipient} that you tried to reach does not exist"
                                 if severity == "permanent" else "4.2.2 Mailbox full"),
                     "description": "", "attempt-no": 1, "session-seconds": 0.42, "mx-host": "mx.example.org"}}
    return data
