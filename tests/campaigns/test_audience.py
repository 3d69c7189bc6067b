"""Whom a campaign's trigger selects on a date: leap days, local dates, offsets, segment stays and moves."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tests.factories import add_customers, add_first_purchase, add_membership, campaign, plan, recipients


def test_feb29_birthdays_move_to_feb28_in_common_years(engine, cfg):
    add_customers(engine, {"customer_id": "LEAP", "birthday": date(2000, 2, 29)},
                  {"customer_id": "F28", "birthday": date(1990, 2, 28)},
                  {"customer_id": "M01", "birthday": date(1985, 3, 1)},
                  {"customer_id": "BABY", "birthday": date(2027, 2, 28)})  # born today: no birthday yet
    c = campaign()
    assert recipients(plan(engine, cfg, c, date(2027, 2, 28))) == {"LEAP", "F28"}
    assert recipients(plan(engine, cfg, c, date(2027, 3, 1))) == {"M01"}
    assert recipients(plan(engine, cfg, c, date(2028, 2, 28))) == {"F28", "BABY"}
    assert recipients(plan(engine, cfg, c, date(2028, 2, 29))) == {"LEAP"}
    mar1 = campaign(trigger={"field": "birthday", "recurrence": "yearly", "feb29": "mar1"})
    assert recipients(plan(engine, cfg, mar1, date(2027, 2, 28))) == {"F28"}
    assert recipients(plan(engine, cfg, mar1, date(2027, 3, 1))) == {"LEAP", "M01"}
    # The occurrence is the year: the key names it.
    keys = {m.idempotency_key for m in plan(engine, cfg, c, date(2027, 2, 28)).sample}
    assert keys == {"birthday:LEAP:2027", "birthday:F28:2027"}


def test_first_purchase_is_read_in_the_customers_own_time_zone(engine, cfg):
    # Both bought on 2026-03-01 20:00-ish UTC; in Kolkata that is already 2 March, in Los Angeles still 1 March.
    add_customers(engine, {"customer_id": "KOL", "timezone": "Asia/Kolkata"},
                  {"customer_id": "LAX", "timezone": "America/Los_Angeles", "locale": "en-US"})
    add_first_purchase(engine, "KOL", datetime(2026, 3, 1, 20, 0, tzinfo=UTC))
    add_first_purchase(engine, "LAX", datetime(2026, 3, 2, 5, 0, tzinfo=UTC))  # 21:00 on 1 March in LA
    thanks = campaign(name="thank_you", template="thank_you",
                      trigger={"field": "first_purchase", "offset_days": 1, "recurrence": "once"})
    assert recipients(plan(engine, cfg, thanks, date(2026, 3, 2))) == {"LAX"}
    assert recipients(plan(engine, cfg, thanks, date(2026, 3, 3))) == {"KOL"}
    anniversary = campaign(name="anniversary", template="anniversary",
                           trigger={"field": "first_purchase", "recurrence": "yearly"})
    result = plan(engine, cfg, anniversary, date(2028, 3, 2))
    assert recipients(result) == {"KOL"}
    assert result.sample[0].idempotency_key == "anniversary:KOL:2028"
    assert recipients(plan(engine, cfg, anniversary, date(2026, 3, 2))) == set()  # not its own anniversary


def test_segment_offer_once_per_stay_and_transitions(engine, cfg):
    add_customers(engine, *({"customer_id": c} for c in ("A", "B", "C", "D")))
    add_membership(engine, "lifecycle:at_risk", "A", date(2027, 1, 1))
    add_membership(engine, "lifecycle:at_risk", "B", date(2027, 1, 1), date(2027, 1, 5))
    add_membership(engine, "lifecycle:at_risk", "B", date(2027, 1, 8))
    offer = campaign(name="offer", kind="segment", template="offer", trigger=None,
                     audience={"segment": "lifecycle:at_risk"})
    result = plan(engine, cfg, offer, date(2027, 1, 10))
    assert {m.idempotency_key for m in result.sample} == {"offer:A:2027-01-01", "offer:B:2027-01-08"}
    assert recipients(plan(engine, cfg, offer, date(2027, 1, 6))) == {"A"}
    # Champions who became at risk: C moved on 9 January, D left champions for somewhere else.
    add_membership(engine, "rfm:champions", "C", date(2026, 6, 1), date(2027, 1, 9))
    add_membership(engine, "rfm:at_risk", "C", date(2027, 1, 9))
    add_membership(engine, "rfm:champions", "D", date(2026, 6, 1), date(2027, 1, 9))
    add_membership(engine, "rfm:loyal", "D", date(2027, 1, 9))
    move = campaign(name="win_back", kind="segment_transition", template="win_back", trigger=None,
                    audience={"from_segment": "rfm:champions", "to_segment": "rfm:at_risk", "within_days": 3})
    assert recipients(plan(engine, cfg, move, date(2027, 1, 9))) == {"C"}
    assert recipients(plan(engine, cfg, move, date(2027, 1, 11))) == {"C"}
    assert recipients(plan(engine, cfg, move, date(2027, 1, 12))) == set()
    with pytest.raises(Exception, match="did you mean 'rfm:at_risk'"):
        plan(engine, cfg, campaign(name="x", kind="segment", template="offer", trigger=None,
                                   audience={"segment": "rfm:at_rsk"}), date(2027, 1, 9))


def test_custom_date_attribute_with_offset(engine, cfg):
    add_customers(engine, {"customer_id": "W1", "attributes": {"warranty_end": "2027-04-30"}},
                  {"customer_id": "W2", "attributes": {"warranty_end": "2027-05-01"}},
                  {"customer_id": "W3", "attributes": {"warranty_end": "not a date"}})
    c = campaign(name="warranty_reminder", template="warranty_reminder",
                 trigger={"field": "attributes.warranty_end", "offset_days": -30, "recurrence": "once"})
    result = plan(engine, cfg, c, date(2027, 3, 31))
    assert recipients(result) == {"W1"}
    assert result.sample[0].idempotency_key == "warranty_reminder:W1:2027-04-30"
