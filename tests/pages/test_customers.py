"""The customer page and a segment's members: found by id, e-mail or phone through a POST, shown to Admin and
Op users only, every view, export, erase and restore audited, and erase and restore behind a CSRF-safe
confirmation — on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select

from crm_tasks.cleanup.archive import run_cleanup
from crm_tasks.cli import main
from crm_tasks.pages import customers, data
from crm_tasks.pages.data import _cell
from crm_tasks.store.models import (
    Customer,
    CustomerRecordAudit,
    Message,
    Purchase,
    QuarantinedRow,
    Segment,
    SegmentMembership,
    Suppression,
)
from tests.cleanup.support import AS_OF, permissive, stale_base
from tests.cleanup.test_erasure import quarantine
from tests.factories import add_customers, add_membership, buy
from tests.pages.conftest import Values, _app, browser, number


def _audit(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(CustomerRecordAudit.username, CustomerRecordAudit.customer_id,
                                                      CustomerRecordAudit.action).order_by(CustomerRecordAudit.id))]


def _hrefs(html: str) -> list[str]:
    return re.findall(r'(?:href|action)="([^"]*)"', html)


# --- reading a record (the scenario of tests/pages/scenario.py, per dialect) -------------------------------


def test_an_op_finds_a_customer_by_id_email_or_phone_with_no_personal_data_in_any_url(crm, staff_client):
    engine, client = crm.engine, staff_client
    with engine.connect() as conn:
        email, phone = conn.execute(select(Customer.email, Customer.phone).where(Customer.customer_id == "C3")).one()
    assert email
    before = _audit(engine)
    for q in ("C3", email.upper(), f"  {email} "):
        response = client.post("/customers", data={"q": q})
        assert response.status_code == 200
        page = Values(response.text)
        assert page.get("data-customer=C3", "customer_id") == "C3" and page.get("data-customer=C3", "status") == \
            "current"
        # Results link to the opaque id only; the form posts to the page itself.
        assert _hrefs(response.text) and all("@" not in h and "%40" not in h for h in _hrefs(response.text))
        assert "customers/C3" in _hrefs(response.text)
    # Nothing of a record is shown by a search: no audit row.
    assert _audit(engine) == before
    assert Values(client.post("/customers", data={"q": "nobody@example.com"}).text).get("matches").startswith(
        "No customer found")
    # A phone, in any notation, finds its profile.
    add = "+91 98765 43210"
    with engine.begin() as conn:
        conn.execute(Customer.__table__.update().where(Customer.customer_id == "C4").values(phone="+919876543210"))
    try:
        for q in (add, "098765 43210"):
            assert Values(client.post("/customers", data={"q": q}).text).get("data-customer=C4", "customer_id") == \
                "C4"
    finally:
        with engine.begin() as conn:
            conn.execute(Customer.__table__.update().where(Customer.customer_id == "C4").values(phone=phone))


def test_a_record_shows_profile_purchases_segments_messages_and_is_audited(crm, staff_client, tokens, monkeypatch):
    engine, client = crm.engine, staff_client
    with engine.connect() as conn:
        # A customer of the measured campaign with a message that failed for good.
        kid = conn.execute(select(Message.customer_id).where(Message.state == "failed")
                           .order_by(Message.customer_id).limit(1)).scalar_one()
        states = dict(conn.execute(select(Message.run_id, Message.state).where(Message.customer_id == kid)).all())
        bought = set(conn.execute(select(Purchase.transaction_id).where(Purchase.customer_id == "C1")).scalars())
        memberships = conn.execute(select(Segment.name, SegmentMembership.valid_from, SegmentMembership.valid_to)
                                   .join(Segment, Segment.id == SegmentMembership.segment_id)
                                   .where(SegmentMembership.customer_id == "C1")).all()
        email = conn.execute(select(Customer.email).where(Customer.customer_id == "C1")).scalar_one()
    before = _audit(engine)

    page = Values(client.get(f"/customers/{kid}").text)
    for run_id, state in states.items():
        assert page.get(f"data-run={run_id}", "state") == state
    assert "failed" in states.values()

    # Purchases one per page: every purchase once over the pages.
    monkeypatch.setattr(customers, "PURCHASES_PAGE_SIZE", 1)
    first = client.get("/customers/C1")
    shown = Values(first.text)
    assert shown.get("profile:email") == email and shown.get("consent") == "given"
    assert number(shown.get("purchases_total")) == len(bought) >= 2
    seen = []
    for n in range(1, len(bought) + 1):
        html = client.get("/customers/C1", params={"page": n}).text
        seen += re.findall(r'data-key="transaction_id">([^<]+)<', html)
    assert sorted(seen) == sorted(bought)
    for name, since, until in memberships:
        assert shown.get(f"data-segment={name}", f"data-period={since.isoformat()}", "valid_to") == \
            (until.isoformat() if until else "now")
    assert memberships

    # One audit row per opening: who, which customer, what; nothing else is in the table.
    opened = 2 + len(bought)
    assert _audit(engine)[len(before):] == [("op", kid, "view")] + [("op", "C1", "view")] * (opened - 1)
    assert {c["name"] for c in inspect(engine).get_columns("customer_record_audit")} == \
        {"id", "at", "username", "customer_id", "action"}

    # Every purchase in the customer's CSV, and one export row in the audit.
    export = client.get("/customers/C1/purchases.csv")
    assert export.status_code == 200 and export.headers["cache-control"] == "no-store"
    assert sorted(r["transaction_id"] for r in csv.DictReader(io.StringIO(export.text))) == sorted(bought)
    assert _audit(engine)[-1] == ("op", "C1", "export")
    opened += 1

        # Whatever a profile holds is text on the page, never markup.
    with engine.begin() as conn:
        conn.execute(Customer.__table__.update().where(Customer.customer_id == "C2")
                     .values(first_name="<script>alert(1)</script>"))
    try:
        html = client.get("/customers/C2").text
        assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    finally:
        with engine.begin() as conn:
            conn.execute(Customer.__table__.update().where(Customer.customer_id == "C2").values(first_name="Asha"))
    assert _audit(engine)[-1] == ("op", "C2", "view")
    opened += 1

    # A viewer is refused and leaves no audit row; an unknown id is a 404 without one.
    viewer = browser(_app(crm.cfg, engine), tokens["viewer"])
    assert viewer.get("/customers/C1").status_code == 403
    assert viewer.get("/customers/C1/purchases.csv").status_code == 403
    assert viewer.post("/customers", data={"q": "C1"}).status_code == 403
    assert client.get("/customers/NOT-A-CUSTOMER").status_code == 404
    assert len(_audit(engine)) == len(before) + opened


def test_a_segments_members_are_paged_searchable_and_exported_as_audited_csv(crm, staff_client, tokens,
                                                                             monkeypatch):
    engine, client = crm.engine, staff_client
    with engine.connect() as conn:
        name, size = conn.execute(
            select(Segment.name, func.count()).join(SegmentMembership, SegmentMembership.segment_id == Segment.id)
            .where(SegmentMembership.valid_to.is_(None)).group_by(Segment.name)
            .order_by(func.count().desc(), Segment.name).limit(1)).one()
        members = set(conn.execute(select(SegmentMembership.customer_id).join(
            Segment, Segment.id == SegmentMembership.segment_id)
            .where(Segment.name == name, SegmentMembership.valid_to.is_(None))).scalars())
        emails = dict(conn.execute(select(Customer.customer_id, Customer.email)
                                   .where(Customer.customer_id.in_(members))).all())
    assert size == len(members) >= 3
    monkeypatch.setattr(data, "MEMBERS_PAGE_SIZE", 2)
    first = client.get("/segments/members", params={"segment": name})
    assert number(Values(first.text).get("size")) == size
    seen = []
    for n in range(1, -(-size // 2) + 1):
        html = client.get("/segments/members", params={"segment": name, "page": n}).text
        seen += re.findall(r'<tr class="member"><th scope="row"><a href="[^"]*">([^<]+)</a>', html)
    assert sorted(seen) == sorted(members)
    # Searching by id starts the list there.
    pick = sorted(members)[len(members) // 2]
    found = client.get("/segments/members", params={"segment": name, "start": pick}).text
    assert Values(found).get("found") == f"{pick} is a member."
    assert re.findall(r'<tr class="member"><th scope="row"><a href="[^"]*">([^<]+)</a>', found)[0] == pick
    assert client.get("/segments/members", params={"segment": "no:such"}).status_code == 404
    # A search counts the members ahead of it only so far: beyond that, the pager says so.
    monkeypatch.setattr(data, "MEMBERS_COUNTED", 2)
    ahead = client.get("/segments/members", params={"segment": name, "start": sorted(members)[0]}).text
    assert "Page 1 of 1 or more" in ahead and len(members) > 2

    # The export: every member once with their profile, a header first; one audit row naming the segment.
    before = _audit(engine)
    real = data.export_rows
    # The real export in batches of two: its keyset paging over ids is exercised.
    monkeypatch.setattr(data, "export_rows", lambda eng, seg: real(eng, seg, batch=2))
    export = client.get("/segments/members.csv", params={"segment": name})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(r["customer_id"] for r in rows) == sorted(members)
    assert emails and all(r["email"] == (emails.get(r["customer_id"]) or "") for r in rows)
    assert _audit(engine)[len(before):] == [("op", f"segment:{name}", "export")]
    viewer = browser(_app(crm.cfg, engine), tokens["viewer"])
    assert viewer.get("/segments/members.csv", params={"segment": name}).status_code == 403
    assert viewer.get("/segments/members", params={"segment": name}).status_code == 403
    assert len(_audit(engine)) == len(before) + 1


def test_a_csv_cell_that_looks_like_a_formula_is_text():
    from decimal import Decimal

    assert [_cell(v) for v in ("=1+1", "+91", "-3", "@SUM(A1)", "Asha", None, Decimal("-40.00"), 3)] == \
        ["'=1+1", "'+91", "'-3", "'@SUM(A1)", "Asha", "", "-40.00", "3"]


# --- erase and restore (a database per test) ---------------------------------------------------------------


def _twins(engine) -> None:
    """Two people with records of the same shape: one erased through the page, one through the CLI."""
    add_customers(engine, {"customer_id": "PA", "email": "pa@example.org", "phone": "+919800000001"},
                  {"customer_id": "PB", "email": "pb@example.org", "phone": "+919800000002"})
    for cid in ("PA", "PB"):
        buy(engine, cid, datetime(2026, 3, 1, 9, tzinfo=UTC), "120")
        add_membership(engine, "rfm:champions", cid, AS_OF)
    quarantine(engine, "PA,Asha,Rao,pa@example.org,,1990-13-04,en-IN,,IN,true,,2026-01-01",
               "PB,Asha,Rao,pb@example.org,,1990-13-04,en-IN,,IN,true,,2026-01-01")


def _form(client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text[:300]
    [token] = re.findall(r'name="token" value="([^"]+)"', page.text)
    return token


def test_erase_through_the_page_is_csrf_safe_audited_and_equals_the_cli(engine, cfg, use_settings, tokens,
                                                                         airflow_db):
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    _twins(engine)
    app = _app(cfg, engine)
    admin = browser(app, tokens["admin"])
    token = _form(admin, "/customers/PA/erase")

    # Refused: from another site, with no origin, marked cross-site by the browser, a forged or expired
    # token, a token of another login, an Op user; none leaves an audit row or erases anything.
    evil = TestClient(app, cookies={"_token": tokens["admin"]})
    assert evil.post("/customers/PA/erase", data={"token": token},
                     headers={"Origin": "https://evil.example"}).status_code == 403
    assert evil.post("/customers/PA/erase", data={"token": token},
                     headers={"Referer": "https://testserver.evil.example/x"}).status_code == 403
    assert evil.post("/customers/PA/erase", data={"token": token}).status_code == 403  # no Origin, no Referer
    assert admin.post("/customers/PA/erase", data={"token": token},
                      headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    assert admin.post("/customers/PA/erase", data={"token": token[:-2] + "xx"}).status_code == 403
    assert admin.post("/customers/PA/erase", data={"token": "1." + token.split(".", 1)[1]}).status_code == 403
    assert admin.post("/customers/PB/erase", data={"token": token}).status_code == 403  # for another customer
    other = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin2", role="admin"))
    assert browser(app, other).post("/customers/PA/erase", data={"token": token}).status_code == 403
    assert browser(app, tokens["op"]).post("/customers/PA/erase", data={"token": token}).status_code == 403
    assert _audit(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Customer)).scalar_one() == 2

    # Erased through the page, from its own origin, with the token of this login.
    done = admin.post("/customers/PA/erase", data={"token": token},
                      headers={"Referer": "http://testserver/customers/PA/erase", "Origin": "http://testserver"})
    assert done.status_code == 200, done.text[:500]
    shown = Values(done.text)
    cli = CliRunner().invoke(main, ["erase", "--customer", "PB", "--json"])
    assert cli.exit_code == 0, cli.output
    by_cli = json.loads(cli.output)
    assert shown.get("customer_ids") == "PA" and by_cli["customer_ids"] == ["PB"]
    assert {k: int(number(shown.get(f"removed:{k}"))) for k in by_cli["removed"]} == by_cli["removed"]
    assert by_cli["removed"]["customers"] == 1 and by_cli["removed"]["quarantine"] == 1
    assert int(shown.get("suppressed")) == by_cli["suppressed"] == 1
    # Both leave the database in the same state for their person.
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Customer)).scalar_one() == 0
        assert conn.execute(select(QuarantinedRow.raw_text)).scalars().all() == ["[erased]", "[erased]"]
        assert sorted(conn.execute(select(Suppression.customer_id, Suppression.reason)).all()) == \
            [("PA", "erased"), ("PB", "erased")]
        assert conn.execute(select(func.count()).select_from(Purchase)).scalar_one() == 2
    assert _audit(engine) == [("admin", "PA", "erase")]
    # The erased record: no profile left, its purchases under the pseudonymous id.
    after = Values(admin.get("/customers/PA").text)
    assert after.get("status") == "no profile" and after.get("suppressed").startswith("yes: erased")


def test_restore_through_the_page_puts_an_archived_profile_back_once(engine, cfg, tokens):
    stale_base(engine, cfg)
    run_cleanup(engine, permissive(cfg), AS_OF)
    app = _app(cfg, engine)
    admin = browser(app, tokens["admin"])
    found = Values(admin.post("/customers", data={"q": "GONE"}).text)
    assert found.get("data-customer=GONE", "status") == "archived"
    record = admin.get("/customers/GONE").text
    assert Values(record).get("status") == "archived" and 'href="GONE/restore"' in record

    token = _form(admin, "/customers/GONE/restore")
    assert TestClient(app, cookies={"_token": tokens["admin"]}).post(
        "/customers/GONE/restore", data={"token": token}, headers={"Origin": "http://evil.example"}).status_code == 403
    done = admin.post("/customers/GONE/restore", data={"token": token})
    assert done.status_code == 200, done.text[:500]
    with engine.connect() as conn:
        assert conn.execute(select(Customer.phone).where(Customer.customer_id == "GONE")).scalar_one() == \
            "+919876543210"
    # Twice: the library refuses, and the page says why.
    again = admin.post("/customers/GONE/restore", data={"token": token})
    assert again.status_code == 409 and "current profile" in Values(again.text).get("refused")
    assert _audit(engine) == [("admin", "GONE", "view"), ("admin", "GONE", "restore"), ("admin", "GONE", "restore")]

