"""Delivery against real SMTP servers on 127.0.0.1: what arrives, every fault, and the ledger's
invariants (at most once, every message in a final state that says what happened), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import insert, select, update

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery import clicks
from crm_tasks.delivery.ledger import FINAL
from crm_tasks.delivery.send import deliver, prepare_delivery, send_batch
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.messages.mime import message_id_for
from crm_tasks.store.models import AddressBounce, Customer, Message, Suppression
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer, free_port

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)  # 06:00 in Kolkata; the window opens at 09:00
SENT_AT = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata: inside the window, on the day


def birthday_people(engine, *emails: str, **extra) -> list[str]:
    ids = []
    rows = []
    for i, email in enumerate(emails):
        cid = f"C{i:04d}"
        ids.append(cid)
        rows.append({"customer_id": cid, "email": email, "birthday": date(1990, 5, 10), **extra})
    add_customers(engine, *rows)
    return ids


def fast(cfg, url: str | None, **delivery):
    d = {"retry_seconds": 0.05, "retry_factor": 1.0, "inline_retry_seconds": 5, "timeout_seconds": 5, **delivery}
    return cfg.model_copy(update={"smtp_url": url, "delivery": cfg.delivery.model_copy(update=d)})


def plan_and_deliver(engine, cfg, c=None, **kw):
    c = c or campaign()
    plan = plan_campaign(engine, cfg, c, AS_OF, RUN_AT, sample=0)
    return plan, deliver(engine, cfg, c.name, plan.run_id, **kw, clock=running_from(SENT_AT))


def ledger(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {r.idempotency_key: r for r in conn.execute(select(Message))}


def built_where(monkeypatch, tmp_path):
    """Records the process that builds each message (a forked builder's memory is its own: a file is shared)."""
    from crm_tasks.delivery.send import _Batch

    log = tmp_path / "built-by.txt"
    build = _Batch._build

    def recording(self, row, address_hash):
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{row.customer_id} {os.getpid()}\n")
        return build(self, row, address_hash)

    monkeypatch.setattr(_Batch, "_build", recording)
    return lambda: dict(line.split() for line in log.read_text(encoding="utf-8").splitlines())


# checkpoint 1: four checkpoints, the first built in the sending process and the others in a forked one;
# 50: one checkpoint, built in the sending process.
@pytest.mark.parametrize("checkpoint", [1, 50])
def test_every_message_arrives_intact_with_the_headers_marketing_mail_needs(engine, cfg, keys, checkpoint,
                                                                          monkeypatch, tmp_path):
    builders = built_where(monkeypatch, tmp_path)
    add_customers(engine,
                  {"customer_id": "TE1", "first_name": "సీత", "locale": "te-IN", "email": "sita@example.com",
                   "birthday": date(1990, 5, 10)},
                  {"customer_id": "FA1", "first_name": "مریم", "locale": "fa-IR", "timezone": "Asia/Tehran",
                   "email": "maryam@example.com", "birthday": date(1991, 5, 10)},
                  {"customer_id": "HI1", "first_name": "अनीता", "locale": "hi-IN", "email": "anita@example.com",
                   "birthday": date(1992, 5, 10)},
                  {"customer_id": "EN1", "first_name": "Asha", "email": "asha@example.com",
                   "birthday": date(1993, 5, 10)})
    with SmtpServer() as srv:
        cfg = fast(cfg, srv.url, checkpoint=checkpoint)
        plan, result = plan_and_deliver(engine, cfg)
        assert plan.recipients == 4
        assert result.sent == 4 and result.states == {"sent": 4}
        received = srv.handler.parsed()
    assert len(received) == 4
    pids = builders()
    assert set(pids) == {"TE1", "FA1", "HI1", "EN1"}
    here = [c for c, pid in pids.items() if pid == str(os.getpid())]
    assert len(here) == (1 if checkpoint == 1 else 4) and len(set(pids.values())) == (2 if checkpoint == 1 else 1)
    rows = ledger(engine)
    by_to = {m["to"].addresses[0].addr_spec: m for m in received}
    for row in rows.values():
        msg = by_to[row.recipient]
        assert msg["message-id"] == message_id_for(row.idempotency_key, "example.com", keys.hashing) == row.message_id
        assert msg["from"].addresses[0].addr_spec == "rewards@example.com"
        assert msg["to"].addresses[0].display_name == row.context["customer"]["first_name"]
        assert msg.get_content_type() == "multipart/alternative"
        text, html = (p.get_content() for p in msg.iter_parts())
        assert row.context["customer"]["first_name"] in text and row.context["customer"]["first_name"] in html
        # The subject decodes to exactly what the template rendered.
        from crm_tasks.messages.render import renderer_for
        rendered = renderer_for(cfg).render(row.template, row.context)
        # The HTML part as rendered, its links (the shop's call to action) tracked; the unsubscribe link direct.
        sent_html = clicks.track(rendered.html, row.message_id, clicks.tracker_for(cfg, keys.signing),
                                 keep=(row.context["unsubscribe_url"],))
        assert msg["subject"] == rendered.subject and text == rendered.text and html == sent_html != rendered.html
        unsub = msg["list-unsubscribe"]
        assert f"<{row.context['unsubscribe_url']}>" in unsub and "<mailto:unsubscribe@example.com" in unsub
        assert msg["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
        assert msg["list-id"] == "<birthday.example.com>"
        assert row.state == "sent" and row.sent_at is not None and row.smtp_code == 250 and row.attempts == 1
    assert by_to["maryam@example.com"].get_body(("html",)).get_content().count('dir="rtl"') >= 1


def test_faults_end_in_states_that_say_what_happened(engine, cfg, keys):
    emails = ["ok1@example.com", "temp451@example.com", "perm550@example.com", "drop@example.com",
              "full452@example.com", "reject554@example.com", "flaky@example.com", "gone421@example.com",
              "ok2@example.com"]
    ids = birthday_people(engine, *emails)
    with SmtpServer() as srv:
        cfg = fast(cfg, srv.url, max_attempts=3, soft_bounce_limit=10)
        _plan, result = plan_and_deliver(engine, cfg)
        tries = dict(srv.handler.rcpt_tries)
    rows = {r.recipient: r for r in ledger(engine).values()}
    state = {addr.split("@")[0]: r.state for addr, r in rows.items()}
    assert state == {"ok1": "sent", "ok2": "sent", "flaky": "sent", "temp451": "failed", "perm550": "failed",
                     "drop": "unknown", "full452": "failed", "reject554": "failed", "gone421": "failed"}
    assert all(r.state in FINAL for r in rows.values())
    # Temporary failures were retried up to max_attempts, then given up; permanent ones never retried.
    assert tries["temp451@example.com"] == 3 and rows["temp451@example.com"].attempts == 3
    assert "gave up after 3 temporary failures" in rows["temp451@example.com"].last_error
    assert tries["perm550@example.com"] == 1 and rows["perm550@example.com"].smtp_code == 550
    assert tries["flaky@example.com"] == 2
    # The connection dropped after the content: maybe delivered, so never sent again.
    assert tries["drop@example.com"] == 1 and "may have been delivered" in rows["drop@example.com"].last_error
    # Reasons are kept without the address the server quoted.
    assert "perm550@example.com" not in rows["perm550@example.com"].last_error
    # Hard bounces (5xx to the recipient) suppress the address; 421 (server going away) and 4xx do not.
    with engine.connect() as conn:
        hashes = set(conn.execute(select(Suppression.email_hash)).scalars())
    suppressed = {e for e in emails if email_hash(e, keys.hashing) in hashes}
    assert suppressed == {"perm550@example.com", "reject554@example.com"}
    assert result.sent == 3 and result.unknown == 1 and result.failed == 5
    assert sum(result.states.values()) == len(ids)


def test_soft_bounces_in_a_row_suppress_the_address(engine, cfg, keys):
    birthday_people(engine, "temp451@example.com", "ok@example.com")
    with SmtpServer() as srv:
        cfg = fast(cfg, srv.url, max_attempts=10, soft_bounce_limit=2)
        plan_and_deliver(engine, cfg)
    row = next(r for r in ledger(engine).values() if r.recipient.startswith("temp451"))
    assert row.state == "failed" and row.attempts == 2 and "suppressed after 2" in row.last_error
    with engine.connect() as conn:
        reasons = dict(conn.execute(select(Suppression.email_hash, Suppression.reason)).all())
        assert reasons == {email_hash("temp451@example.com", keys.hashing): "soft_bounce"}
        # The accepted address has no soft-bounce count left.
        assert conn.execute(select(AddressBounce.email_hash)).scalars().all() == \
            [email_hash("temp451@example.com", keys.hashing)]


def test_consent_and_suppression_are_checked_again_at_send_time(engine, cfg, keys):
    ids = birthday_people(engine, "a@example.com", "b@example.com", "c@example.com", "d@example.com")
    c = campaign()
    plan = plan_campaign(engine, cfg, c, AS_OF, RUN_AT, sample=0)
    assert plan.recipients == 4
    with engine.begin() as conn:  # between planning and sending
        conn.execute(update(Customer).where(Customer.customer_id == ids[0]).values(email_consent=False))
        conn.execute(insert(Suppression).values(email_hash=email_hash("b@example.com", keys.hashing),
                                                customer_id=None, reason="unsubscribed",
                                                created_at=RUN_AT))
        conn.execute(update(Customer).where(Customer.customer_id == ids[2]).values(email="new@example.com"))
    with SmtpServer() as srv:
        result = deliver(engine, fast(cfg, srv.url), c.name, plan.run_id, clock=running_from(SENT_AT))
        got = [m["to"].addresses[0].addr_spec for m in srv.handler.parsed()]
    assert got == ["d@example.com"]
    why = {r.recipient: (r.state, r.last_error) for r in ledger(engine).values()}
    assert why["a@example.com"] == ("suppressed", "no e-mail consent at send time")
    assert why["b@example.com"] == ("suppressed", "suppressed since planning")
    assert why["c@example.com"] == ("suppressed", "the address changed since planning")
    assert result.suppressed == 3 and result.sent == 1


def test_a_refused_connection_defers_then_a_later_run_delivers_once(engine, cfg):
    birthday_people(engine, "a@example.com", "b@example.com")
    dead = f"smtp+insecure://127.0.0.1:{free_port()}"
    _plan, result = plan_and_deliver(engine, fast(cfg, dead, inline_retry_seconds=0, retry_seconds=600))
    assert result.states == {"deferred": 2} and result.sent == 0 and result.retry_at is not None
    assert all("cannot connect" in r.last_error for r in ledger(engine).values())
    with SmtpServer() as srv:
        # Not due yet: nothing is sent before the retry time.
        assert deliver(engine, fast(cfg, srv.url), "birthday", None, clock=running_from(SENT_AT)).sent == 0
        with engine.begin() as conn:  # ten minutes later
            conn.execute(update(Message).values(next_attempt_at=RUN_AT))
        # The next run sweeps deferred messages.
        again = deliver(engine, fast(cfg, srv.url), "birthday", None, clock=running_from(SENT_AT))
        assert again.sent == 2 and len(srv.handler.messages) == 2
        assert deliver(engine, fast(cfg, srv.url), "birthday", None, clock=running_from(SENT_AT)).batches == 0
        assert len(srv.handler.messages) == 2
    assert {r.state for r in ledger(engine).values()} == {"sent"}


# checkpoint 1: EVIL and OK are built in a forked process (A1, first, in the sending process); 50: all here.
@pytest.mark.parametrize("checkpoint", [1, 50])
def test_header_injection_in_a_name_is_refused_before_the_server(engine, cfg, checkpoint, caplog, monkeypatch,
                                                                tmp_path):
    builders = built_where(monkeypatch, tmp_path)
    add_customers(engine, {"customer_id": "EVIL", "first_name": "Eve\r\nBcc: victim@example.org",
                           "birthday": date(1990, 5, 10)},
                  {"customer_id": "OK", "birthday": date(1990, 5, 10)},
                  {"customer_id": "A1", "birthday": date(1990, 5, 10)})
    with SmtpServer() as srv:
        _plan, result = plan_and_deliver(engine, fast(cfg, srv.url, checkpoint=checkpoint))
        raw = b"".join(srv.handler.messages)
    rows = {r.customer_id: r for r in ledger(engine).values()}
    assert rows["EVIL"].state == "failed" and "line break" in rows["EVIL"].last_error
    assert rows["OK"].state == rows["A1"].state == "sent" and b"victim@example.org" not in raw
    assert result.failed == 1 and result.sent == 2
    pids = builders()
    assert (pids["EVIL"] == str(os.getpid())) == (checkpoint == 50) and pids["A1"] == str(os.getpid())
    # Logged by the sending process, with the key and never the address.
    assert f"message {rows['EVIL'].idempotency_key} not built:" in caplog.text and "victim@" not in caplog.text


def test_a_batch_whose_builder_process_died_is_built_and_sent_here_once(engine, cfg, monkeypatch, caplog):
    from crm_tasks.delivery.send import _Batch

    birthday_people(engine, *(f"p{i}@example.com" for i in range(6)))
    parent, build = os.getpid(), _Batch._build

    def dies_in_a_child(self, row, address_hash):
        if os.getpid() != parent:
            os._exit(9)  # as if killed for memory
        return build(self, row, address_hash)

    monkeypatch.setattr(_Batch, "_build", dies_in_a_child)
    with SmtpServer() as srv:
        _plan, result = plan_and_deliver(engine, fast(cfg, srv.url, checkpoint=2))
        arrived = sorted(m["to"].addresses[0].addr_spec for m in srv.handler.parsed())
    assert arrived == [f"p{i}@example.com" for i in range(6)]  # each once
    assert result.sent == 6 and {r.state for r in ledger(engine).values()} == {"sent"}
    assert "the process building its messages died; building them here" in caplog.text


def test_messages_not_yet_due_wait_for_their_send_time(engine, cfg):
    birthday_people(engine, "a@example.com")
    c = campaign()
    plan = plan_campaign(engine, cfg, c, AS_OF, RUN_AT, sample=0)
    with SmtpServer() as srv:
        batches = prepare_delivery(engine, cfg, c.name)
        assert batches == [{"run_id": plan.run_id, "batch_no": 0, "messages": 1}]
        early = send_batch(engine, fast(cfg, srv.url), plan.run_id, 0, clock=lambda: RUN_AT)
        assert early.claimed == 0 and early.states == {"planned": 1}
        assert early.retry_at == "2026-05-10T03:30:00+00:00"  # 09:00 in Kolkata
        assert srv.handler.messages == []


@pytest.mark.parametrize("size", [3])
def test_batches_are_numbered_once_and_cover_every_message(engine, cfg, size):
    birthday_people(engine, *[f"p{i}@example.com" for i in range(8)])
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    cfg = fast(cfg, None, batch_size=size)
    first = prepare_delivery(engine, cfg, "birthday")
    assert [b["messages"] for b in first] == [3, 3, 2]
    assert prepare_delivery(engine, cfg, "birthday") == first
    with engine.connect() as conn:
        numbers = conn.execute(select(Message.batch_no).where(Message.run_id == plan.run_id)).scalars().all()
    assert sorted(numbers) == [0, 0, 0, 1, 1, 1, 2, 2]
