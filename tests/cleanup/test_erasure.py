"""Erasure on request: a person seeded everywhere the CRM keeps data, erased, then searched for in every
table and in the project's data folders — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, inspect, select, text

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.cleanup.erasure import erase
from crm_tasks.clock import running_from
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.messages.preview import preview_message
from crm_tasks.store.models import (
    ArchivedCustomer,
    Base,
    Coupon,
    CustomerMetrics,
    IngestBatch,
    Message,
    Purchase,
    QuarantinedRow,
    Suppression,
)
from tests.factories import add_customers, buy, campaign

EMAIL = "zara.quill@example.org"
NEEDLES = (EMAIL, "Zarathustra", "Quillfeather", "9876543210")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def quarantine(engine, *lines: str) -> None:
    with engine.begin() as conn:
        batch = conn.execute(insert(IngestBatch).values(
            source="customers", partition_date=date(2026, 1, 1), file_path="customers/dt=2026-01-01/c.csv",
            checksum="0" * 64, file_size=1, status="loaded", started_at=T0).returning(IngestBatch.id)).scalar_one()
        conn.execute(insert(QuarantinedRow), [
            {"batch_id": batch, "file_path": "customers/dt=2026-01-01/c.csv", "line_no": i + 2, "raw_text": line,
             "reason": "birthday: not a date"} for i, line in enumerate(lines)])


@pytest.fixture
def person(engine, cfg, tmp_path):
    """Zarathustra Quillfeather, in every place personal data lives, next to another customer."""
    add_customers(engine,
                  {"customer_id": "ZQ1", "first_name": "Zarathustra", "last_name": "Quillfeather", "email": EMAIL,
                   "phone": "+919876543210", "birthday": date(1990, 5, 4)},
                  {"customer_id": "OTHER", "birthday": date(1991, 5, 4)})
    with engine.begin() as conn:  # an older duplicate, archived by an earlier cleanup
        conn.execute(insert(ArchivedCustomer).values(
            customer_id="ZQ0", reason="inactive", status="archived", archived_on=date(2026, 4, 1),
            purge_after=date(2026, 5, 1), first_name="Zarathustra", last_name="Quillfeather", email=EMAIL,
            phone="+919876543210", locale="en-IN", timezone="Asia/Kolkata", country="IN", email_consent=True,
            attributes={}, created_at=T0, updated_at=T0, batch_id=1))
    quarantine(engine,
               "ZQ1,Zarathustra,Quillfeather,zara.quill@example.org,,1990-13-04,en-IN,,IN,true,,2026-01-01",
               "ZQ7,Zara,Q.,ZARA.QUILL@EXAMPLE.ORG,,bad,en-IN,,IN,true,,2026-01-01",  # the address, upper-cased
               "ZQ8,Zarathustra,,,098765 43210,bad,en-IN,,IN,true,,2026-01-01",  # the phone, written nationally
               "ZQ10,Ravi,Kumar,ravi@example.com,,bad,en-IN,,IN,true,,2026-01-01")  # someone else: ZQ1 is no prefix
    buy(engine, "ZQ1", datetime(2026, 2, 1, tzinfo=UTC), "120")
    plan_campaign(engine, cfg, campaign(coupon={"type": "percent", "value": 15, "valid_days": 14}),
                  date(2026, 5, 4))
    previews = tmp_path / "var" / "preview"
    for cid in ("ZQ1", "OTHER"):
        preview_message(engine, cfg, "birthday", cid, previews, as_of=date(2026, 5, 4))
    with engine.connect() as conn:
        assert conn.execute(select(Message.recipient).where(Message.customer_id == "ZQ1")).scalar_one() == EMAIL
        assert conn.execute(select(func.count()).select_from(Coupon)).scalar_one() == 2
    return previews


def _all_text(engine) -> dict[str, list[str]]:
    """Every value of every table, as text (JSON as its JSON text)."""
    tables = inspect(engine).get_table_names()
    assert set(Base.metadata.tables) <= set(tables)
    out = {}
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            out[table] = [json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict | list) else str(v)
                          for row in rows for v in row]
    return out


def test_a_person_is_erased_from_every_table_and_data_folder(person, engine, cfg, tmp_path, landing, keys):
    values = _all_text(engine)
    assert any(EMAIL in v for v in values["messages"]) and any("Zarathustra" in v for v in values["quarantine"])
    # Delivered to the local sink (crm smtp-sink), as the demo does: the person's .eml must go too.
    from aiosmtpd.controller import Controller

    from crm_tasks.delivery.send import deliver
    from crm_tasks.delivery.smtp import SinkHandler
    from tests.smtp_servers import free_port

    mail = tmp_path / "var" / "mail"
    port = free_port()
    sink = Controller(SinkHandler(mail), hostname="127.0.0.1", port=port)
    sink.start()
    try:
        sent = deliver(engine, cfg.model_copy(update={"smtp_url": f"smtp+insecure://127.0.0.1:{port}"}),
                       "birthday", None, clock=running_from(datetime(2026, 5, 4, 6, 0, tzinfo=UTC)))
    finally:
        sink.stop()
    assert sent.sent == 2 and len(list(mail.glob("*.eml"))) == 2
    result = erase(engine, cfg, email="Zara.Quill@Example.org", preview_dir=person, mail_dir=mail)
    assert result.customer_ids == ["ZQ0", "ZQ1"]
    assert result.removed == {"customers": 1, "archived_customers": 1, "quarantine": 3, "messages": 1,
                              "previews": 2, "sink mail": 1}
    assert len(list(mail.glob("*.eml"))) == 1  # the other customer's message stays
    assert result.kept == {"campaign_plan": 1, "coupons": 1, "purchases": 1}
    assert result.suppressed == 1

    for table, found in _all_text(engine).items():
        for needle in NEEDLES:
            assert not [v for v in found if needle.lower() in v.lower()], f"{needle} still in {table}"
    # The project's data folders too (the landing folder is input, not ours to edit). On SQLite this
    # includes the database file itself: secure_delete leaves no copy of the old rows in it.
    for path in tmp_path.rglob("*"):
        if path.is_file() and landing not in path.parents:
            data = path.read_bytes().lower()
            for needle in NEEDLES:
                assert needle.lower().encode() not in data, f"{needle} in {path}"

    with engine.connect() as conn:
        # Pseudonymous aggregates stay: sales do not change.
        assert conn.execute(select(Purchase.amount).where(Purchase.customer_id == "ZQ1")).scalar_one() == \
            Decimal("120.0000")
        assert conn.execute(select(CustomerMetrics.orders).where(CustomerMetrics.customer_id == "ZQ1")
                            ).scalar_one() == 1
        assert conn.execute(select(Suppression.reason).where(
            Suppression.email_hash == email_hash(EMAIL, keys.hashing))).scalar_one() == "erased"
        lines = conn.execute(select(QuarantinedRow.raw_text).order_by(QuarantinedRow.line_no)).scalars().all()
        assert lines[:3] == ["[erased]"] * 3 and lines[3].startswith("ZQ10,Ravi")
        # The other customer's message, coupon and preview are untouched.
        assert conn.execute(select(Message.recipient).where(Message.customer_id == "OTHER")).scalar_one() \
            == "other@example.com"
    assert [p.name for p in person.iterdir()] and all("OTHER" in p.name for p in person.iterdir())
    # The person cannot come back as mailable through a new import: the next plan excludes them.
    add_customers(engine, {"customer_id": "ZQ9", "email": EMAIL, "birthday": date(1990, 5, 4)})
    again = plan_campaign(engine, cfg, campaign(), date(2027, 5, 4), record=False)
    assert again.reasons == {"suppressed": 1}


def test_erasing_by_customer_id_and_the_command(person, engine, use_settings):
    from click.testing import CliRunner

    from crm_tasks.cli import main

    out = CliRunner().invoke(main, ["erase", "--customer", "ZQ1", "--preview-dir", str(person),
                                    "--mail-dir", str(person.parent / "mail")])
    assert out.exit_code == 0, out.output
    assert "erased ZQ1:" in out.output and "customers" in out.output and "quarantine" in out.output
    assert "suppressions" in out.output and EMAIL not in out.output
    with engine.connect() as conn:
        # By id alone: the profile's own address and phone are found and erased with it.
        assert conn.execute(select(func.count()).select_from(QuarantinedRow)
                            .where(QuarantinedRow.raw_text == "[erased]")).scalar_one() == 3
    again = CliRunner().invoke(main, ["erase", "--email", EMAIL, "--json", "--preview-dir", str(person),
                                      "--mail-dir", str(person.parent / "mail")])
    payload = json.loads(again.output)
    assert payload["removed"]["customers"] == 0 and payload["removed"]["archived_customers"] == 1  # ZQ0
    assert CliRunner().invoke(main, ["erase"]).exit_code == 2
