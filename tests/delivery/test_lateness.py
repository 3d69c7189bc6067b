"""Lateness: a message past its campaign's limit is expired, never sent, and counted, on SQLite and
PostgreSQL. The limit is a local day: the end of the send day (plus ``max_lateness_days``) in the
customer's own time zone, capped by the coupon's last valid day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select

from crm_tasks.campaigns.definitions import OFFER_LATENESS_DAYS
from crm_tasks.campaigns.planning import lateness_limit, plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery.send import campaign_status, deliver, run_report
from crm_tasks.store.models import Message
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer, free_port

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)


def fast(cfg, url: str | None, **delivery):
    d = {"retry_seconds": 0.05, "retry_factor": 1.0, "inline_retry_seconds": 0, "timeout_seconds": 5, **delivery}
    return cfg.model_copy(update={"smtp_url": url, "delivery": cfg.delivery.model_copy(update=d)})


def messages(engine) -> dict[str, Message]:
    with engine.connect() as conn:
        return {r.customer_id: r for r in conn.execute(select(Message))}


def test_a_birthday_mail_not_sent_on_its_local_day_is_expired_never_sent(engine, cfg):
    # Kolkata's 10 May ends at 18:30 UTC, Tehran's at 20:30 UTC.
    add_customers(engine, {"customer_id": "IN", "email": "in@example.com", "birthday": date(1990, 5, 10)},
                  {"customer_id": "IR", "email": "ir@example.com", "birthday": date(1990, 5, 10),
                   "timezone": "Asia/Tehran", "locale": "fa-IR"})
    plan = plan_campaign(engine, cfg, campaign(coupon={"value": 15, "valid_days": 14}), AS_OF, RUN_AT, sample=0)
    rows = messages(engine)
    assert rows["IN"].expires_at == datetime(2026, 5, 10, 18, 30, tzinfo=UTC)
    assert rows["IR"].expires_at == datetime(2026, 5, 10, 20, 30, tzinfo=UTC)
    with SmtpServer() as srv:
        result = deliver(engine, fast(cfg, srv.url), "birthday", plan.run_id,
                         clock=running_from(datetime(2026, 5, 10, 19, 0, tzinfo=UTC)))
        got = [m["to"].addresses[0].addr_spec for m in srv.handler.parsed()]
    assert got == ["ir@example.com"]  # still 10 May in Tehran; already 11 May in Kolkata
    rows = messages(engine)
    assert rows["IN"].state == "expired" and rows["IN"].attempts == 0
    assert rows["IN"].last_error == "stale: not sent on its day, 2026-05-10 (max_lateness_days: 0)"
    assert rows["IR"].state == "sent"
    assert (result.expired, result.sent) == (1, 1) and result.states == {"expired": 1, "sent": 1}
    report = run_report(engine, "birthday", plan.to_dict())  # expired is final: the run reconciles
    assert report["states"] == {"expired": 1, "sent": 1} and report["reconciles"]
    status = campaign_status(engine, cfg, "birthday")["runs"][0]
    assert status["states"] == {"expired": 1, "sent": 1}
    assert {"state": "expired", "error": rows["IN"].last_error, "messages": 1} in status["problems"]


def test_deferred_messages_swept_weeks_later_expire_instead_of_going_out(engine, cfg):
    """The reported incident: deferred birthday mails of 10 May with 14-day coupons sent on 3 December."""
    add_customers(engine, *[{"customer_id": f"C{i}", "email": f"c{i}@example.com", "birthday": date(1990, 5, 10)}
                            for i in range(3)])
    plan = plan_campaign(engine, cfg, campaign(coupon={"value": 15, "valid_days": 14}), AS_OF, RUN_AT, sample=0)
    dead = f"smtp+insecure://127.0.0.1:{free_port()}"
    first = deliver(engine, fast(cfg, dead, retry_seconds=60), "birthday", plan.run_id,
                    clock=running_from(datetime(2026, 5, 10, 6, 0, tzinfo=UTC)))
    assert first.states == {"deferred": 3}
    with SmtpServer() as srv:
        later = deliver(engine, fast(cfg, srv.url), "birthday", None,
                        clock=running_from(datetime(2026, 12, 3, 6, 0, tzinfo=UTC)))
        assert srv.handler.messages == []
    assert later.expired == 3 and later.sent == 0
    assert {r.state for r in messages(engine).values()} == {"expired"}
    # A later run has nothing left to sweep.
    assert deliver(engine, fast(cfg, None), "birthday", None, clock=running_from(datetime(2026, 12, 4, tzinfo=UTC))
                   ).batches == 0


def test_a_coupon_caps_an_offers_lateness_and_an_offer_waits_its_days(engine, cfg):
    add_customers(engine, {"customer_id": "C1", "email": "c1@example.com", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "email": "c2@example.com", "birthday": date(1990, 5, 10)})
    short = campaign(coupon={"value": 10, "valid_days": 1}, max_lateness_days=5)
    assert lateness_limit(short, AS_OF) == (date(2026, 5, 11), "stale: its coupon expired after 2026-05-11")
    long = campaign(coupon={"value": 10, "valid_days": 30}, max_lateness_days=5)
    assert lateness_limit(long, AS_OF) == (
        date(2026, 5, 15), "stale: not sent within 5 days of 2026-05-10 (max_lateness_days: 5)")
    offer = campaign(name="lapsed", kind="segment", trigger=None, audience={"segment": "rfm:champions"})
    assert offer.lateness_days == OFFER_LATENESS_DAYS and campaign().lateness_days == 0
    plan_campaign(engine, cfg, short, AS_OF, RUN_AT, sample=0)
    with SmtpServer() as srv:
        # 11 May, 18:00 in Kolkata: the coupon is valid until the day ends.
        on_time = deliver(engine, fast(cfg, srv.url), "birthday", None,
                          clock=running_from(datetime(2026, 5, 11, 12, 30, tzinfo=UTC)))
    assert on_time.sent == 2


def test_test_messages_never_expire(engine, cfg):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0, test_recipient="qa@example.com")
    assert messages(engine)["C1"].expires_at is None
    with SmtpServer() as srv:
        result = deliver(engine, fast(cfg, srv.url), "birthday", plan.run_id,
                         clock=running_from(datetime(2026, 5, 10, 6, 0, tzinfo=UTC) + timedelta(days=3)))
    assert result.sent == 1 and result.expired == 0
