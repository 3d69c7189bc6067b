"""Awkward calendar days through planning, the send ledger and a real SMTP server, on SQLite and PostgreSQL:
29 February in years with and without one, and the days clocks change (a 23-hour and a 25-hour local day).

The properties: one message per person per occasion (its idempotency key), on the right local date, sent
from the window's start in the customer's own time zone and stale at the customer's next local midnight;
and nothing is sent twice when the same date, or the date next to it, is planned and delivered again.
The expected instants below are written out in UTC from the published rules of each zone, not computed
with the library's own helpers."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from crm_tasks.campaigns.planning import ALREADY_SENT, plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery.send import deliver
from crm_tasks.store.models import CampaignPlanRow, Message
from tests.factories import add_customers, campaign, recipients
from tests.smtp_servers import SmtpServer

MAR1 = {"field": "birthday", "recurrence": "yearly", "feb29": "mar1"}
HOUR = timedelta(hours=1)


def fast(cfg, url: str | None, **delivery):
    d = {"retry_seconds": 0.05, "retry_factor": 1.0, "inline_retry_seconds": 0, "timeout_seconds": 5, **delivery}
    return cfg.model_copy(update={"smtp_url": url, "delivery": cfg.delivery.model_copy(update=d)})


def ledger(engine) -> dict[str, Message]:
    with engine.connect() as conn:
        return {r.idempotency_key: r for r in conn.execute(select(Message))}


def received(srv: SmtpServer) -> Counter[str]:
    """Messages the SMTP server accepted, per recipient address."""
    return Counter(m["to"].addresses[0].addr_spec for m in srv.handler.parsed())


def run_day(engine, cfg, srv: SmtpServer, c, day: date, at: datetime | None = None):
    """Plan ``c`` for ``day`` (run at 06:00 in Kolkata, as scheduled), then deliver at ``at`` (default:
    noon UTC of that day) to ``srv``. Returns the plan and the delivery result."""
    plan = plan_campaign(engine, cfg, c, day, datetime.combine(day, datetime.min.time(), UTC) + timedelta(minutes=30),
                         sample=1000)
    done = deliver(engine, fast(cfg, srv.url), c.name, plan.run_id,
                   clock=running_from(at or datetime.combine(day, datetime.min.time(), UTC) + 12 * HOUR))
    return plan, done


# --- 29 February ---------------------------------------------------------------------------------------------

PEOPLE = (
    {"customer_id": "LEAP", "email": "leap@example.com", "birthday": date(1992, 2, 29)},
    {"customer_id": "FEB28", "email": "feb28@example.com", "birthday": date(1990, 2, 28)},
    {"customer_id": "MAR1", "email": "mar1@example.com", "birthday": date(1990, 3, 1)},
)


def test_a_29_february_birthday_goes_once_on_28_february_in_a_year_without_one(engine, cfg):
    add_customers(engine, *PEOPLE)
    c = campaign()  # feb29: feb28, the default
    with SmtpServer() as srv:
        plan, done = run_day(engine, cfg, srv, c, date(2027, 2, 28))
        assert recipients(plan) == {"LEAP", "FEB28"} and done.sent == 2
        assert received(srv) == {"leap@example.com": 1, "feb28@example.com": 1}
        row = ledger(engine)["birthday:LEAP:2027"]
        assert (row.state, row.occurrence, row.customer_id) == ("sent", "2027", "LEAP")
        assert row.context["occasion"]["years"] == 35  # 1992 to 2027
        assert row.send_at == datetime(2027, 2, 28, 3, 30, tzinfo=UTC)  # 09:00 in Kolkata
        assert row.expires_at == datetime(2027, 2, 28, 18, 30, tzinfo=UTC)  # midnight in Kolkata

        # 1 March, the day after: LEAP is not selected again (nor excluded: not in the audience at all).
        plan, done = run_day(engine, cfg, srv, c, date(2027, 3, 1))
        assert recipients(plan) == {"MAR1"} and plan.audience == 1 and done.sent == 1
        # 28 February again: nothing more, LEAP and FEB28 already had theirs.
        plan, done = run_day(engine, cfg, srv, c, date(2027, 2, 28))
        assert plan.recipients == 0 and plan.reasons == {ALREADY_SENT: 2} and done.sent == 0
        assert received(srv) == {"leap@example.com": 1, "feb28@example.com": 1, "mar1@example.com": 1}
    rows = ledger(engine)
    assert sorted(rows) == ["birthday:FEB28:2027", "birthday:LEAP:2027", "birthday:MAR1:2027"]
    assert {r.state for r in rows.values()} == {"sent"}
    assert len({r.message_id for r in rows.values()}) == 3


def test_in_a_leap_year_it_goes_on_29_february_and_not_on_28_february(engine, cfg):
    add_customers(engine, *PEOPLE)
    c = campaign()
    with SmtpServer() as srv:
        plan, _ = run_day(engine, cfg, srv, c, date(2028, 2, 28))
        assert recipients(plan) == {"FEB28"} and plan.audience == 1
        assert received(srv) == {"feb28@example.com": 1}

        plan, done = run_day(engine, cfg, srv, c, date(2028, 2, 29))
        assert recipients(plan) == {"LEAP"} and plan.audience == 1 and done.sent == 1
        row = ledger(engine)["birthday:LEAP:2028"]
        assert row.state == "sent" and row.context["occasion"]["years"] == 36
        assert row.send_at == datetime(2028, 2, 29, 3, 30, tzinfo=UTC)
        assert row.expires_at == datetime(2028, 2, 29, 18, 30, tzinfo=UTC)

        plan, _ = run_day(engine, cfg, srv, c, date(2028, 3, 1))
        assert recipients(plan) == {"MAR1"} and plan.audience == 1
        plan, done = run_day(engine, cfg, srv, c, date(2028, 2, 29))  # the same date again
        assert plan.recipients == 0 and plan.reasons == {ALREADY_SENT: 1} and done.sent == 0
        assert received(srv) == {"leap@example.com": 1, "feb28@example.com": 1, "mar1@example.com": 1}
    assert sorted(ledger(engine)) == ["birthday:FEB28:2028", "birthday:LEAP:2028", "birthday:MAR1:2028"]


def test_with_feb29_mar1_it_goes_once_on_1_march_in_a_year_without_29_february(engine, cfg):
    add_customers(engine, *PEOPLE)
    c = campaign(trigger=MAR1)
    with SmtpServer() as srv:
        plan, _ = run_day(engine, cfg, srv, c, date(2027, 2, 28))
        assert recipients(plan) == {"FEB28"} and plan.audience == 1
        plan, done = run_day(engine, cfg, srv, c, date(2027, 3, 1))
        assert recipients(plan) == {"LEAP", "MAR1"} and done.sent == 2
        row = ledger(engine)["birthday:LEAP:2027"]
        assert row.state == "sent" and row.send_at == datetime(2027, 3, 1, 3, 30, tzinfo=UTC)
        assert row.expires_at == datetime(2027, 3, 1, 18, 30, tzinfo=UTC)
        plan, done = run_day(engine, cfg, srv, c, date(2027, 3, 1))
        assert plan.recipients == 0 and plan.reasons == {ALREADY_SENT: 2} and done.sent == 0
        plan, _ = run_day(engine, cfg, srv, c, date(2027, 3, 2))
        assert plan.audience == 0
        # In a leap year the rule changes nothing: 29 February itself.
        plan, _ = run_day(engine, cfg, srv, c, date(2028, 2, 29))
        assert recipients(plan) == {"LEAP"}
        plan, _ = run_day(engine, cfg, srv, c, date(2028, 3, 1))
        assert recipients(plan) == {"MAR1"}
        assert received(srv) == {"leap@example.com": 2, "feb28@example.com": 1, "mar1@example.com": 2}
    assert {k for k in ledger(engine) if ":LEAP:" in k} == {"birthday:LEAP:2027", "birthday:LEAP:2028"}


def test_changing_the_feb29_rule_after_sending_does_not_send_the_occasion_again(engine, cfg):
    """28 February is sent under feb28; the campaign file then says mar1, and 1 March is planned: the same
    person, the same year's birthday, the same key, so it is already sent."""
    add_customers(engine, PEOPLE[0])
    with SmtpServer() as srv:
        plan, done = run_day(engine, cfg, srv, campaign(), date(2027, 2, 28))
        assert recipients(plan) == {"LEAP"} and done.sent == 1
        plan, done = run_day(engine, cfg, srv, campaign(trigger=MAR1), date(2027, 3, 1))
        assert plan.audience == 1 and plan.recipients == 0 and plan.reasons == {ALREADY_SENT: 1}
        assert done.sent == 0
        assert received(srv) == {"leap@example.com": 1}
    assert list(ledger(engine)) == ["birthday:LEAP:2027"]
    with engine.connect() as conn:
        outcomes = conn.execute(select(CampaignPlanRow.reason, CampaignPlanRow.idempotency_key)
                                .where(CampaignPlanRow.customer_id == "LEAP")
                                .order_by(CampaignPlanRow.run_id)).all()
    assert outcomes == [(None, "birthday:LEAP:2027"), (ALREADY_SENT, "birthday:LEAP:2027")]


# --- the days clocks change ----------------------------------------------------------------------------------

# zone, the day; its start, its send time (09:00 local) and its end (the next local midnight) in UTC; the
# local send time as planning writes it; the day's length in hours.
DST_DAYS = [
    pytest.param("America/New_York", date(2026, 3, 8), datetime(2026, 3, 8, 5, 0, tzinfo=UTC),  # 00:00 EST
                 datetime(2026, 3, 8, 13, 0, tzinfo=UTC), datetime(2026, 3, 9, 4, 0, tzinfo=UTC),  # EDT
                 "2026-03-08T09:00-04:00", 23, id="new_york_spring"),
    pytest.param("America/New_York", date(2026, 11, 1), datetime(2026, 11, 1, 4, 0, tzinfo=UTC),  # 00:00 EDT
                 datetime(2026, 11, 1, 14, 0, tzinfo=UTC), datetime(2026, 11, 2, 5, 0, tzinfo=UTC),  # EST
                 "2026-11-01T09:00-05:00", 25, id="new_york_autumn"),
    pytest.param("Europe/London", date(2026, 3, 29), datetime(2026, 3, 29, 0, 0, tzinfo=UTC),  # 00:00 GMT
                 datetime(2026, 3, 29, 8, 0, tzinfo=UTC), datetime(2026, 3, 29, 23, 0, tzinfo=UTC),  # BST
                 "2026-03-29T09:00+01:00", 23, id="london_spring"),
    pytest.param("Europe/London", date(2026, 10, 25), datetime(2026, 10, 24, 23, 0, tzinfo=UTC),  # 00:00 BST
                 datetime(2026, 10, 25, 9, 0, tzinfo=UTC), datetime(2026, 10, 26, 0, 0, tzinfo=UTC),  # GMT
                 "2026-10-25T09:00+00:00", 25, id="london_autumn"),
]


def test_the_expected_days_are_23_and_25_hours_long():
    """The table's own arithmetic: the clocks change between midnight and 09:00, never after."""
    for p in DST_DAYS:
        _zone, _day, start, send_at, end, _local, hours = p.values
        assert end - start == hours * HOUR and end - send_at == 15 * HOUR
        assert send_at - start == (hours - 15) * HOUR  # 8 hours to 09:00 on a 23-hour day, 10 on a 25-hour one


@pytest.mark.parametrize("zone, day, start, send_at, end, local, hours", DST_DAYS)
def test_a_birthday_on_the_day_clocks_change_is_sent_once_at_nine_local(engine, cfg, zone, day, start, send_at,
                                                                        end, local, hours):
    add_customers(engine, {"customer_id": "DST", "email": "dst@example.com", "birthday": day.replace(year=1990),
                           "timezone": zone, "locale": "en-US" if zone.startswith("America") else "en-GB"})
    c = campaign()
    with SmtpServer() as srv:
        plan, done = run_day(engine, cfg, srv, c, day, at=send_at + HOUR)
        assert recipients(plan) == {"DST"} and done.sent == 1 and done.expired == 0
        assert plan.sample[0].send_at == send_at.isoformat() and plan.sample[0].local_send_at == local
        key = f"birthday:DST:{day.year}"
        row = ledger(engine)[key]
        assert (row.state, row.occurrence, row.recipient) == ("sent", str(day.year), "dst@example.com")
        assert row.send_at == send_at and row.expires_at == end  # a day of `hours` hours from `start`
        assert row.expiry_reason == f"stale: not sent on its day, {day} (max_lateness_days: 0)"
        assert send_at <= row.sent_at < end
        with engine.connect() as conn:
            plan_row = conn.execute(select(CampaignPlanRow).where(CampaignPlanRow.run_id == plan.run_id)).one()
        assert (plan_row.send_at, plan_row.local_send_at, plan_row.idempotency_key) == (send_at, local, key)
        assert received(srv) == {"dst@example.com": 1}
        assert srv.handler.parsed()[0]["message-id"] == row.message_id

        # The same date planned and delivered again, then the days either side, then the date once more.
        for again in (day, day - timedelta(days=1), day + timedelta(days=1), day):
            plan, done = run_day(engine, cfg, srv, c, again, at=send_at + HOUR)
            assert plan.recipients == 0 and done.sent == 0
            assert plan.reasons == ({ALREADY_SENT: 1} if again == day else {})
        assert received(srv) == {"dst@example.com": 1}
    assert list(ledger(engine)) == [key]


@pytest.mark.parametrize("before_end, state", [(True, "sent"), (False, "expired")], ids=["23:30", "00:30"])
@pytest.mark.parametrize("zone, day, start, send_at, end, local, hours", DST_DAYS)
def test_the_day_ends_at_the_next_local_midnight_not_24_hours_after_it_began(engine, cfg, zone, day, start,
                                                                             send_at, end, local, hours,
                                                                             before_end, state):
    """Half an hour before the local midnight the message still goes out; half an hour after, it is stale.
    A 25-hour day is not cut short at 24 hours, and a 23-hour day does not run on to 24."""
    add_customers(engine, {"customer_id": "C1", "email": "c1@example.com", "birthday": day.replace(year=1990),
                           "timezone": zone})
    c = campaign()
    plan = plan_campaign(engine, cfg, c, day, start, sample=0)  # planned as the local day begins
    assert plan.recipients == 1
    at = end - HOUR / 2 if before_end else end + HOUR / 2
    # On the 25-hour day 23:30 is past 24 hours; on the 23-hour day 00:30 is not yet 24 hours.
    if (hours, before_end) == (25, True):
        assert at > start + 24 * HOUR
    if (hours, before_end) == (23, False):
        assert at < start + 24 * HOUR
    with SmtpServer() as srv:
        done = deliver(engine, fast(cfg, srv.url), c.name, plan.run_id, clock=running_from(at))
        assert received(srv) == ({"c1@example.com": 1} if state == "sent" else {})
    assert (done.sent, done.expired) == ((1, 0) if state == "sent" else (0, 1))
    row = ledger(engine)[f"birthday:C1:{day.year}"]
    assert row.state == state and row.expires_at == end
    if state == "expired":
        assert row.attempts == 0 and row.last_error == f"stale: not sent on its day, {day} (max_lateness_days: 0)"


def test_one_date_two_zones_each_on_its_own_clock(engine, cfg):
    """8 March 2026: New York springs forward, London does not (its change is three weeks later)."""
    add_customers(engine,
                  {"customer_id": "NY", "email": "ny@example.com", "birthday": date(1985, 3, 8),
                   "timezone": "America/New_York", "locale": "en-US"},
                  {"customer_id": "LDN", "email": "ldn@example.com", "birthday": date(1986, 3, 8),
                   "timezone": "Europe/London", "locale": "en-GB"},
                  {"customer_id": "IN", "email": "in@example.com", "birthday": date(1987, 3, 8)})
    c = campaign()
    with SmtpServer() as srv:
        plan, done = run_day(engine, cfg, srv, c, date(2026, 3, 8), at=datetime(2026, 3, 8, 14, 0, tzinfo=UTC))
        assert recipients(plan) == {"NY", "LDN", "IN"} and done.sent == 3
        plan, done = run_day(engine, cfg, srv, c, date(2026, 3, 8), at=datetime(2026, 3, 8, 14, 0, tzinfo=UTC))
        assert plan.reasons == {ALREADY_SENT: 3} and done.sent == 0
        assert received(srv) == {"ny@example.com": 1, "ldn@example.com": 1, "in@example.com": 1}
    rows = {r.customer_id: r for r in ledger(engine).values()}
    assert {cid: (r.send_at, r.expires_at) for cid, r in rows.items()} == {
        "NY": (datetime(2026, 3, 8, 13, 0, tzinfo=UTC), datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),  # EDT, 23 h
        "LDN": (datetime(2026, 3, 8, 9, 0, tzinfo=UTC), datetime(2026, 3, 9, 0, 0, tzinfo=UTC)),  # GMT, 24 h
        "IN": (datetime(2026, 3, 8, 3, 30, tzinfo=UTC), datetime(2026, 3, 8, 18, 30, tzinfo=UTC)),  # IST
    }
    assert all(r.state == "sent" and r.send_at <= r.sent_at < r.expires_at for r in rows.values())
