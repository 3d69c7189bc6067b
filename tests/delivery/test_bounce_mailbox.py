"""The bounce mailbox, read over IMAP from a real Dovecot server on 127.0.0.1 (plain for a local server,
STARTTLS and IMAPS with the certificate checked), and from a local maildir: reports are recorded and moved
only after their commit, anything else is kept aside with the reason, a crash re-reads harmlessly, and a
missing or wrong configuration fails with what to set; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import mailbox
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from crm_tasks.delivery import bounce_mailbox
from crm_tasks.delivery.bounce_mailbox import (
    ImapMailbox,
    MaildirMailbox,
    open_mailbox,
    parse_imap_url,
    read_bounces,
    target_from_connection,
)
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import ConfigError, CrmError
from crm_tasks.store.models import DeliveryEvent
from tests.delivery.feedback_support import (
    OTHER_ID,
    arf_complaint,
    auto_reply,
    gmail_dsn,
    postfix_dsn,
    send_birthdays,
    suppressions,
)
from tests.imap_servers import dovecot_or_skip


@pytest.fixture(scope="module")
def dovecot():
    with dovecot_or_skip() as server:
        yield server


@pytest.fixture
def user() -> str:
    """A mailbox of this test's own on the module's server."""
    return f"bounces-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sent(engine, cfg) -> dict[str, str]:
    return send_birthdays(engine, cfg)


def with_imap(cfg, url: str):
    return cfg.model_copy(update={"bounce_imap_url": url})


def a_morning_of_reports(sent) -> list[bytes]:
    """What a bounce mailbox holds after a campaign: two hard bounces, a delay, a complaint, a bounce for a
    message that is not ours, and an out-of-office reply."""
    return [
        postfix_dsn(sent["C1"], "asha.rao@example.org"),
        gmail_dsn(sent["C2"], "ravi.kumar@example.net"),
        postfix_dsn(sent["C3"], "meera.iyer@example.com", action="delayed", status="4.4.1",
                    diagnostic="X-Postfix; connect to mx.example.com[203.0.113.9]:25: Connection timed out"),
        arf_complaint(sent["C3"], "meera.iyer@example.com"),
        postfix_dsn(OTHER_ID, "someone.else@example.org"),
        auto_reply(sent["C1"]),
    ]


def assert_morning_read(result, engine, keys) -> None:
    assert (result.messages, result.reports, result.unparsed) == (6, 5, 1)
    assert result.unparsed_reasons == {"not a report (Content-Type text/plain)": 1}
    e = result.events
    assert (e.read, e.applied, e.unmatched, e.forged, e.duplicate) == (5, 4, 1, 0, 0)
    assert e.kinds == {"hard_bounce": 3, "soft_bounce": 1, "complaint": 1}
    assert (e.suppressed, e.soft_bounces) == (3, 1) and result.reconciles
    assert suppressions(engine) == {email_hash("asha.rao@example.org", keys.hashing): ("C1", "hard_bounce"),
                                    email_hash("ravi.kumar@example.net", keys.hashing): ("C2", "hard_bounce"),
                                    email_hash("meera.iyer@example.com", keys.hashing): ("C3", "complaint")}


def statuses(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(DeliveryEvent.status, func.count()).group_by(DeliveryEvent.status)).all())


# --- IMAP ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["imap+insecure", "imap", "imaps"], ids=["plain", "starttls", "implicit-tls"])
def test_the_mailbox_is_read_over_imap_and_each_message_moved_after_its_commit(
        dovecot, user, engine, cfg, keys, sent, monkeypatch, scheme):
    # The client checks the server's certificate against the test server's own, as it would a real CA's.
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))
    dovecot.deliver(user, *a_morning_of_reports(sent))
    cfg = with_imap(cfg, dovecot.url(user, scheme))
    box = open_mailbox(cfg)
    assert isinstance(box, ImapMailbox) and box.source == "imap"
    result = read_bounces(engine, cfg, box)
    assert result.mailbox.startswith(f"imap://{user}@127.0.0.1:") and dovecot.password not in result.mailbox
    assert_morning_read(result, engine, keys)
    assert [dovecot.folder_count(user, f) for f in ("INBOX", "crm-processed", "crm-unparsed")] == [0, 5, 1]
    with engine.connect() as conn:
        assert set(conn.execute(select(DeliveryEvent.source)).scalars()) == {"imap"}
    # Nothing is left: the next run reads nothing.
    again = read_bounces(engine, cfg, open_mailbox(cfg))
    assert (again.messages, again.events.read) == (0, 0) and again.reconciles


def test_a_crash_before_the_move_re_reads_the_batch_and_applies_nothing_twice(dovecot, user, engine, cfg, keys,
                                                                              sent, monkeypatch):
    dovecot.deliver(user, *a_morning_of_reports(sent))
    cfg = with_imap(cfg, dovecot.url(user))

    def crash(self, keys, folder):
        raise CrmError("the worker was killed here")

    monkeypatch.setattr(ImapMailbox, "move", crash)
    with pytest.raises(CrmError, match="killed"):
        read_bounces(engine, cfg, open_mailbox(cfg))
    monkeypatch.undo()
    assert statuses(engine) == {"applied": 4, "unmatched": 1}  # committed before the crash
    assert dovecot.folder_count(user, "INBOX") == 6  # ...and still there
    result = read_bounces(engine, cfg, open_mailbox(cfg))
    e = result.events
    assert (result.messages, result.reports, e.read, e.duplicate, e.applied, e.suppressed, e.soft_bounces) == (
        6, 5, 5, 5, 0, 0, 0)
    assert statuses(engine) == {"applied": 4, "unmatched": 1, "duplicate": 5}
    assert len(suppressions(engine)) == 3
    assert [dovecot.folder_count(user, f) for f in ("INBOX", "crm-processed", "crm-unparsed")] == [0, 5, 1]


def test_batches_are_committed_one_after_another(dovecot, user, engine, cfg, keys, sent, monkeypatch):
    dovecot.deliver(user, *a_morning_of_reports(sent))
    fb = cfg.delivery.feedback.model_copy(update={"batch": 4, "processed_folder": "Bounces Done"})
    cfg = with_imap(cfg, dovecot.url(user)).model_copy(
        update={"delivery": cfg.delivery.model_copy(update={"feedback": fb})})
    moves = []
    real_move = ImapMailbox.move

    def recorded(self, keys, folder):
        moves.append((len(keys), folder, sum(statuses(engine).values())))
        real_move(self, keys, folder)

    monkeypatch.setattr(ImapMailbox, "move", recorded)
    result = read_bounces(engine, cfg, open_mailbox(cfg))
    assert_morning_read(result, engine, keys)
    # Four messages, then two; each batch's events were in the table before its messages moved.
    assert moves == [(4, "Bounces Done", 4), (0, "crm-unparsed", 4), (1, "Bounces Done", 5), (1, "crm-unparsed", 5)]
    assert dovecot.folder_count(user, "Bounces Done") == 5


def test_a_message_over_the_size_cap_is_kept_aside_unread(dovecot, user, engine, cfg, sent, monkeypatch):
    monkeypatch.setattr(bounce_mailbox, "MAX_MESSAGE_BYTES", 3000)
    small = postfix_dsn(OTHER_ID, "a@example.org")
    large = gmail_dsn(sent["C1"], "asha.rao@example.org") + b"x" * 3000
    dovecot.deliver(user, small, large)
    result = read_bounces(engine, with_imap(cfg, dovecot.url(user)), open_mailbox(with_imap(cfg, dovecot.url(user))))
    assert (result.reports, result.unparsed, result.unparsed_reasons) == (1, 1, {"larger than 3,000 bytes": 1})
    assert dovecot.folder_count(user, "crm-unparsed") == 1 and suppressions(engine) == {}


def test_a_certificate_that_does_not_verify_or_a_refused_login_names_what_to_fix(dovecot, user, cfg, engine):
    with pytest.raises(ConfigError, match="does not verify.*validate_certs=false"):
        read_bounces(engine, cfg, open_mailbox(with_imap(cfg, dovecot.url(user, "imaps"))))
    unchecked = with_imap(cfg, dovecot.url(user, "imaps") + "?validate_certs=false")
    assert read_bounces(engine, unchecked, open_mailbox(unchecked)).messages == 0
    wrong = with_imap(cfg, f"imap+insecure://{user}:not-the-password@127.0.0.1:{dovecot.port}")
    with pytest.raises(ConfigError, match="refused the login") as err:
        read_bounces(engine, wrong, open_mailbox(wrong))
    assert "not-the-password" not in str(err.value)
    missing = cfg.delivery.feedback.model_copy(update={"folder": "Nope"})
    nofolder = with_imap(cfg, dovecot.url(user)).model_copy(
        update={"delivery": cfg.delivery.model_copy(update={"feedback": missing})})
    with pytest.raises(ConfigError, match="no folder 'Nope'"):
        read_bounces(engine, nofolder, open_mailbox(nofolder))


# --- a local maildir -------------------------------------------------------------------------------------------


def test_a_local_maildir_is_the_documented_alternative(tmp_path, engine, cfg, keys, sent):
    path = tmp_path / "Maildir"
    box = mailbox.Maildir(path, create=True)
    for raw in a_morning_of_reports(sent):
        box.add(raw)
    fb = cfg.delivery.feedback.model_copy(update={"maildir": path})
    cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={"feedback": fb})})
    opened = open_mailbox(cfg)
    assert isinstance(opened, MaildirMailbox)
    result = read_bounces(engine, cfg, opened)
    assert_morning_read(result, engine, keys)
    root = mailbox.Maildir(path, create=False)
    assert (len(root), len(root.get_folder("crm-processed")), len(root.get_folder("crm-unparsed"))) == (0, 5, 1)
    with engine.connect() as conn:
        assert set(conn.execute(select(DeliveryEvent.source)).scalars()) == {"maildir"}


def test_where_the_mailbox_is_comes_from_one_place_and_none_is_an_error(tmp_path, cfg):
    with pytest.raises(ConfigError) as err:
        open_mailbox(cfg)
    for name in ("CRM_BOUNCE_IMAP_URL", "crm_bounces", "delivery.feedback.maildir"):
        assert name in str(err.value)
    airflow = target_from_connection("imap.example.com", None, "bounces", "pw", {})
    assert isinstance(open_mailbox(cfg, airflow), ImapMailbox)
    # --maildir wins over everything; the environment over the Airflow connection.
    assert isinstance(open_mailbox(with_imap(cfg, "imaps://u:p@h"), airflow, maildir=tmp_path), MaildirMailbox)
    assert open_mailbox(with_imap(cfg, "imaps://u:p@h"), airflow).target.host == "h"
    with pytest.raises(ConfigError, match="is not a maildir"):
        read_bounces(None, cfg, open_mailbox(cfg, maildir=tmp_path / "nothing"))


def test_imap_urls_and_connections():
    t = parse_imap_url("imaps://bounces%40example.com:p%3Ass@imap.example.com")
    assert (t.host, t.port, t.username, t.password, t.tls, t.validate_certs) == (
        "imap.example.com", 993, "bounces@example.com", "p:ss", "implicit", True)
    assert "p:ss" not in repr(t) and "p:ss" not in t.describe()
    assert (parse_imap_url("imap://u:p@h").tls, parse_imap_url("imap://u:p@h").port) == ("starttls", 143)
    assert parse_imap_url("imap+insecure://u:p@h:1143?validate_certs=false").validate_certs is False
    for bad, message in (("smtp://u:p@h", "must look like"), ("imaps://h", "no user and password"),
                         ("imaps://u:p@h/INBOX", "delivery.feedback.folder")):
        with pytest.raises(ConfigError, match=message):
            parse_imap_url(bad)
    # The IMAP provider's defaults: implicit TLS unless use_ssl is false, then STARTTLS unless disable_tls.
    assert target_from_connection("m", None, "u", "p", {}).tls == "implicit"
    assert target_from_connection("m", None, "u", "p", {"use_ssl": False}).tls == "starttls"
    plain = target_from_connection("m", 1143, "u", "p", {"use_ssl": "false", "disable_tls": "true",
                                                          "ssl_context": "none"})
    assert (plain.tls, plain.port, plain.validate_certs) == ("none", 1143, False)
    with pytest.raises(ConfigError, match="crm_bounces needs a host and a login"):
        target_from_connection(None, None, None, None, None)


# --- the command -------------------------------------------------------------------------------------------


def test_crm_bounces_read_prints_one_reconciling_object(tmp_path, use_settings, engine, keys, monkeypatch):
    from crm_tasks.cli import main

    sent = send_birthdays(engine, use_settings)
    path = tmp_path / "Maildir"
    box = mailbox.Maildir(path, create=True)
    for raw in a_morning_of_reports(sent):
        box.add(raw)
    done = CliRunner().invoke(main, ["bounces", "read", "--maildir", str(path), "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["reconciles"] is True and payload["events"]["reconciles"] is True
    assert (payload["messages"], payload["reports"], payload["unparsed"]) == (6, 5, 1)
    assert payload["events"]["applied"] == 4 and payload["events"]["suppressed"] == 3
    human = CliRunner().invoke(main, ["bounces", "read", "--maildir", str(path)])
    assert human.exit_code == 0 and "0 messages" in human.output and "reconciles" in human.output
    monkeypatch.delenv("CRM_BOUNCE_IMAP_URL", raising=False)
    nothing = CliRunner().invoke(main, ["bounces", "read"])
    assert nothing.exit_code == 1 and "CRM_BOUNCE_IMAP_URL" in nothing.stderr
