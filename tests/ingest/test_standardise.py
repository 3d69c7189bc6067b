"""Standardisation of every field: cleaned values, a reason for each bad one, typed custom attributes, money exact to the currency."""

from __future__ import annotations

from datetime import date

import pytest

from crm_tasks.ingest.batches import ingest_dates
from crm_tasks.store.models import Customer, QuarantinedRow
from tests.helpers import customer, purchase, rows, write_csv

DAY = "2026-03-01"
D = date(2026, 3, 1)


def test_customers_are_standardised(engine, cfg, landing):
    write_csv(landing, "customers", DAY, [
        customer("C1", email="  Asha.Rao@Example.COM ", phone="098765 43210", locale="hi-in",
                 first="  Asha ", birthday="1990-02-28"),
        customer("C2", phone="0300 1234567", country="pk", tz="Asia/Karachi", locale="ur-PK", consent="NO",
                 first="e\u0301mile"),
        customer("C3", email="", phone="", locale="", tz=""),
    ])
    ingest_dates(engine, cfg, [D])
    got = {r.customer_id: r for r in rows(engine, Customer)}
    assert got["C1"].email == "asha.rao@example.com" and got["C1"].phone == "+919876543210"
    assert got["C1"].locale == "hi-IN" and got["C1"].first_name == "Asha" and got["C1"].email_consent is True
    assert got["C1"].birthday == date(1990, 2, 28)
    assert got["C2"].phone == "+923001234567" and got["C2"].country == "PK" and got["C2"].email_consent is False
    assert got["C2"].first_name == "\u00e9mile"  # NFC: e + combining accent becomes é
    # Empty locale and timezone take the configured defaults.
    assert (got["C3"].locale, got["C3"].timezone) == ("en-IN", "Asia/Kolkata")
    assert got["C3"].updated_at.tzinfo is not None


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("email", "a@@example.com", "email is not a valid address"),
        ("phone", "12345", "phone is not a valid number for country IN"),
        ("birthday", "2027-01-01", "birthday is in the future"),
        ("birthday", "1890-05-01", "birthday is more than 120 years ago"),
        ("birthday", "01/05/1990", "birthday is not a date in YYYY-MM-DD form"),
        ("locale", "klingon", "locale 'klingon' is not a known BCP 47 locale"),
        ("timezone", "Mars/Olympus", "timezone 'Mars/Olympus' is not an IANA time zone"),
        ("country", "XX", "country 'XX' is not an ISO 3166-1 alpha-2 code"),
        ("email_consent", "maybe", "email_consent 'maybe' is not true or false"),
        ("updated_at", "soon", "updated_at 'soon' is not an ISO 8601 timestamp"),
        ("child_birthday", "2020-13-01", "child_birthday is not a date in YYYY-MM-DD form"),
    ],
)
def test_each_bad_customer_field_has_a_reason(engine, cfg, landing, field, value, reason):
    bad = customer("C9", child_birthday="", warranty_end="")
    bad[field] = value
    write_csv(landing, "customers", DAY, [customer("C1", child_birthday="", warranty_end=""), bad])
    ingest_dates(engine, cfg, [D])
    (q,) = rows(engine, QuarantinedRow)
    assert q.line_no == 3 and reason in q.reason
    assert [r.customer_id for r in rows(engine, Customer)] == ["C1"]


def test_custom_attributes_are_typed_and_undeclared_columns_dropped(engine, cfg, landing):
    write_csv(landing, "customers", DAY, [
        customer("C1", child_birthday="2005-06-01", warranty_end="", shoe_size="42"),
    ])
    (batch,) = ingest_dates(engine, cfg, [D]).batches
    assert batch.dropped_columns == ["shoe_size"]
    assert rows(engine, Customer)[0].attributes == {"child_birthday": "2005-06-01"}
    # A later file without the column keeps the value; an empty value clears it.
    write_csv(landing, "customers", "2026-03-02",
              [customer("C1", updated="2026-03-02T00:00:00Z", warranty_end="2027-01-31")])
    ingest_dates(engine, cfg, [date(2026, 3, 2)])
    assert rows(engine, Customer)[0].attributes == {"child_birthday": "2005-06-01", "warranty_end": "2027-01-31"}
    write_csv(landing, "customers", "2026-03-03",
              [customer("C1", updated="2026-03-03T00:00:00Z", child_birthday="")])
    ingest_dates(engine, cfg, [date(2026, 3, 3)])
    assert rows(engine, Customer)[0].attributes == {"warranty_end": "2027-01-31"}


def test_amount_precision_follows_the_currency(engine, cfg, landing):
    write_csv(landing, "purchases", DAY, [purchase("T1", amount="1500.5", currency="IRR"),
                                          purchase("T2", amount="1500.00", currency="IRR"),
                                          purchase("T3", amount="0.005", currency="INR")]
              + [purchase(f"G{i}") for i in range(50)])
    ingest_dates(engine, cfg, [D])
    reasons = sorted(r.reason for r in rows(engine, QuarantinedRow))
    assert reasons == ["amount has more decimal places than currency 'INR' allows",
                       "amount has more decimal places than currency 'IRR' allows"]


def test_a_time_without_offset_is_utc_even_after_a_zoned_one_in_the_same_file(engine, cfg, landing):
    # pandas alone gives a naive value the offset of the first zoned value it saw in the array.
    from crm_tasks.store.models import Purchase

    write_csv(landing, "purchases", DAY, [
        purchase("T1", at="2026-03-01T10:00:00+05:30"),
        purchase("T2", at="2026-03-01T10:00:00"),
        purchase("T3", at="2026-03-01"),
    ])
    ingest_dates(engine, cfg, [D])
    got = {r.transaction_id: r.purchased_at.isoformat() for r in rows(engine, Purchase)}
    assert got == {"T1": "2026-03-01T04:30:00+00:00", "T2": "2026-03-01T10:00:00+00:00",
                   "T3": "2026-03-01T00:00:00+00:00"}
