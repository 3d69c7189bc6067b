"""Retries as they happen on the wire, on SQLite and PostgreSQL: the backoff between attempts is really
waited (timestamps at the server, not only the count), and drops after DATA spread over several batches
all end unknown and are never sent again."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from datetime import UTC, date, datetime

from sqlalchemy import select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery.send import deliver
from crm_tasks.store.models import Message
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)
SENT_AT = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)


def settings_with(cfg, url: str, **delivery):
    d = {"timeout_seconds": 5, "inline_retry_seconds": 30, "soft_bounce_limit": 100, **delivery}
    return cfg.model_copy(update={"smtp_url": url, "delivery": cfg.delivery.model_copy(update=d)})


def test_the_backoff_between_attempts_is_waited_and_capped(engine, cfg):
    add_customers(engine, {"customer_id": "C1", "email": "temp451@example.com", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "email": "ok@example.com", "birthday": date(1990, 5, 10)})
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    with SmtpServer() as srv:
        # Delays 0.4, 0.8, then 1.6 capped at 1.0 s: four attempts in all.
        result = deliver(engine, settings_with(cfg, srv.url, retry_seconds=0.4, retry_factor=2.0,
                                               max_retry_seconds=1.0, max_attempts=4),
                         "birthday", plan.run_id, clock=running_from(SENT_AT))
        times = srv.handler.rcpt_times["temp451@example.com"]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(times) == 4 and result.failed == 1 and result.sent == 1
    for gap, delay in zip(gaps, [0.4, 0.8, 1.0], strict=True):
        assert delay - 0.05 <= gap <= delay + 0.6, (gaps, "each retry waits its backoff, and no longer than needed")
    with engine.connect() as conn:
        row = conn.execute(select(Message).where(Message.customer_id == "C1")).one()
    assert row.state == "failed" and row.attempts == 4 and "gave up after 4 temporary failures" in row.last_error


def test_drops_after_data_across_batches_all_end_unknown_and_are_never_resent(engine, cfg):
    """10% of the messages lose their connection after the content was sent: maybe delivered, so each is
    unknown, never retried, while the other 90% of every batch go out once."""
    people = [{"customer_id": f"C{i:03d}", "birthday": date(1990, 5, 10),
               "email": f"{'drop' if i % 10 == 0 else 'ok'}{i}@example.com"} for i in range(40)]
    add_customers(engine, *people)
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    with SmtpServer() as srv:
        c = settings_with(cfg, srv.url, batch_size=10, retry_seconds=0.05, max_attempts=5)
        first = deliver(engine, c, "birthday", plan.run_id, clock=running_from(SENT_AT))
        again = deliver(engine, c, "birthday", None, clock=running_from(SENT_AT))
        tries = Counter(srv.handler.rcpt_tries)
        arrived = Counter(m["Message-ID"] for m in srv.handler.parsed())
    assert first.batches == 4 and (first.sent, first.unknown) == (36, 4)
    assert again.batches == 0 and again.sent == again.unknown == 0
    with engine.connect() as conn:
        rows = conn.execute(select(Message.recipient, Message.state, Message.batch_no, Message.message_id)).all()
    dropped = [r for r in rows if r.recipient.startswith("drop")]
    assert {r.state for r in dropped} == {"unknown"} and len({r.batch_no for r in dropped}) == 4  # every batch
    assert all(tries[r.recipient] == 1 for r in rows)  # nothing tried twice
    assert set(arrived.values()) == {1} and set(arrived) == {r.message_id for r in rows}
