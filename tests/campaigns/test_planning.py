"""Campaign planning: who each trigger selects on tricky dates, every exclusion reason, the holdout,
the guardrails, and what a run records (or not) — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update

from crm_tasks.campaigns.coupons import ALPHABET
from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import CampaignBlocked
from crm_tasks.store.models import CampaignPlanRow, CampaignRun, Coupon, Message, Suppression
from tests.factories import add_customers, add_first_purchase, campaign, plan, recipients

MORNING = datetime(2027, 2, 28, 0, 30, tzinfo=UTC)  # 06:00 in Kolkata


def test_send_times_follow_each_time_zone_and_daylight_saving(engine, cfg):
    add_customers(engine,
                  {"customer_id": "LAX", "timezone": "America/Los_Angeles", "birthday": date(1990, 3, 8)},
                  {"customer_id": "KOL", "timezone": "Asia/Kolkata", "birthday": date(1990, 3, 8)},
                  {"customer_id": "KIR", "timezone": "Pacific/Kiritimati", "birthday": date(1990, 3, 8)})
    c = campaign()
    run_at = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata, 20:00 in Kiritimati (UTC+14)
    result = plan(engine, cfg, c, date(2026, 3, 8), run_at)
    by_id = {m.customer_id: m for m in result.sample}
    assert set(by_id) == {"LAX", "KOL"}
    assert result.reasons == {"outside_send_window": 1}  # Kiritimati's 09:00-20:00 has closed
    assert by_id["KOL"].send_at == run_at.isoformat()  # inside the window: now
    # 8 March 2026 is the first day of US daylight saving: 09:00 PDT is 16:00 UTC (17:00 the day before).
    assert by_id["LAX"].send_at == "2026-03-08T16:00:00+00:00"
    assert by_id["LAX"].local_send_at == "2026-03-08T09:00-07:00"
    add_customers(engine, {"customer_id": "LAX2", "timezone": "America/Los_Angeles", "birthday": date(1990, 3, 7)})
    before = plan(engine, cfg, c, date(2026, 3, 7), datetime(2026, 3, 7, 6, 0, tzinfo=UTC))
    assert before.sample[0].send_at == "2026-03-07T17:00:00+00:00"


def test_every_exclusion_reason(engine, cfg, keys):
    day = date(2027, 5, 10)
    bday = date(1990, 5, 10)
    add_customers(
        engine,
        {"customer_id": "OK", "birthday": bday},
        {"customer_id": "NOMAIL", "birthday": bday, "email": None},
        {"customer_id": "BADMAIL", "birthday": bday, "email": "not-an-address"},
        {"customer_id": "NOCONSENT", "birthday": bday, "email_consent": False},
        {"customer_id": "SUPP", "birthday": bday, "email": "Gone@Example.com"},
        {"customer_id": "SENT", "birthday": bday},
        {"customer_id": "BUSY", "birthday": bday},
        {"customer_id": "FAR", "birthday": bday, "timezone": "Pacific/Kiritimati"},
    )
    now = datetime(2027, 5, 9, tzinfo=UTC)
    with engine.begin() as conn:
        # Suppressed by the keyed hash of the address, whatever its case.
        conn.execute(insert(Suppression).values(email_hash=email_hash("gone@example.com", keys.hashing),
                                                reason="unsubscribed", created_at=now))
        base = {"run_id": 0, "state": "sent", "test": False, "recipient": "x@example.com", "locale": "en",
                "template": "offer", "context": {}, "created_at": now, "updated_at": now}
        conn.execute(insert(Message), [
            {**base, "idempotency_key": "birthday:SENT:2027", "campaign": "birthday", "customer_id": "SENT",
             "occurrence": "2027", "send_at": now},
            *({**base, "idempotency_key": f"offer:BUSY:{i}", "campaign": "offer", "customer_id": "BUSY",
               "occurrence": str(i), "send_at": now - timedelta(days=i)} for i in range(3)),
        ])
    run_at = datetime(2027, 5, 10, 3, 0, tzinfo=UTC)  # 08:30 in Kolkata; 17:00 in Kiritimati
    c = campaign(send_window={"start": "09:00", "end": "16:00"})
    result = plan(engine, cfg, c, day, run_at)
    assert recipients(result) == {"OK"}
    assert result.reasons == {"invalid_email": 2, "no_consent": 1, "suppressed": 1, "already_sent": 1,
                              "frequency_cap": 1, "outside_send_window": 1}
    assert result.audience == 8 and result.excluded == 7 and result.recipients == 1
    # A cap of 4 lets the busy customer through.
    assert "BUSY" in recipients(plan(engine, cfg, campaign(frequency_cap={"messages": 4, "days": 7}), day, run_at))


def test_holdout_is_stable_and_about_the_share(engine, cfg):
    add_customers(engine, *({"customer_id": f"C{i:04d}", "birthday": date(1990, 6, 1)} for i in range(2000)))
    c = campaign(holdout_share=0.1)
    first = plan(engine, cfg, c, date(2027, 6, 1), record=True)
    assert 150 <= first.holdout <= 250 and first.recipients + first.holdout == 2000
    with engine.connect() as conn:
        held = set(conn.execute(select(CampaignPlanRow.customer_id).where(CampaignPlanRow.outcome == "holdout"))
                   .scalars())
    again = plan(engine, cfg, c, date(2028, 6, 1), record=True)
    with engine.connect() as conn:
        held_again = set(conn.execute(select(CampaignPlanRow.customer_id).where(
            CampaignPlanRow.outcome == "holdout", CampaignPlanRow.run_id == again.run_id)).scalars())
    assert held == held_again and len(held) == first.holdout
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message)).scalar() == first.recipients + again.recipients
    # Another campaign draws its own control group.
    other = plan(engine, cfg, campaign(name="other", holdout_share=0.1), date(2027, 6, 1), record=True)
    with engine.connect() as conn:
        held_other = set(conn.execute(select(CampaignPlanRow.customer_id).where(
            CampaignPlanRow.outcome == "holdout", CampaignPlanRow.run_id == other.run_id)).scalars())
    assert held_other and held_other != held


def test_guardrails_block_before_anything_is_planned(engine, cfg):
    add_customers(engine, *({"customer_id": f"C{i:03d}", "birthday": date(1990, 7, 1 + i % 2)} for i in range(40)))
    with pytest.raises(CampaignBlocked, match="exceed max_audience 10"):
        plan(engine, cfg, campaign(max_audience=10), date(2027, 7, 1), record=True)
    with engine.connect() as conn:
        run = conn.execute(select(CampaignRun.status, CampaignRun.recipients)).one()
        assert run.status == "blocked" and run.recipients == 20
        assert conn.execute(select(func.count()).select_from(Message)).scalar() == 0
    # The circuit breaker: 20 recipients after a run of 5 is a 4x jump.
    with engine.begin() as conn:
        conn.execute(update(CampaignRun).values(status="planned", recipients=5))
    with pytest.raises(CampaignBlocked, match="more than 3 times the previous run's 5"):
        plan(engine, cfg, campaign(max_growth=3, growth_floor=0), date(2027, 7, 2), record=True)
    ok = plan(engine, cfg, campaign(max_growth=5, growth_floor=0), date(2027, 7, 2), record=True)
    assert ok.recipients == 20 and ok.diff["previous_recipients"] == 5


def test_rerun_replaces_and_keeps_coupon_codes(engine, cfg):
    add_customers(engine, *({"customer_id": f"C{i}", "birthday": date(1990, 8, 1)} for i in range(5)))
    c = campaign(coupon={"type": "percent", "value": 15, "valid_days": 14})
    first = plan(engine, cfg, c, date(2027, 8, 1), record=True)
    with engine.connect() as conn:
        codes = dict(conn.execute(select(Coupon.idempotency_key, Coupon.code)).all())
    assert len(codes) == 5 and all(len(code) == 10 and set(code) <= set(ALPHABET) for code in codes.values())
    second = plan(engine, cfg, c, date(2027, 8, 1), record=True)
    assert second.replaced == 5 and second.recipients == 5
    with engine.connect() as conn:
        assert dict(conn.execute(select(Coupon.idempotency_key, Coupon.code)).all()) == codes
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(Message)).scalar() == 5
        contexts = conn.execute(select(Message.context)).scalars().all()
    assert {ctx["coupon"]["code"] for ctx in contexts} == set(codes.values())
    assert first.run_id != second.run_id
    # Once sent, an occurrence is never planned again.
    with engine.begin() as conn:
        conn.execute(update(Message).values(state="sent"))
    third = plan(engine, cfg, c, date(2027, 8, 1), record=True)
    assert third.recipients == 0 and third.reasons == {"already_sent": 5}


def test_dry_runs_previews_and_test_recipients_do_not_consume_occurrences(engine, cfg):
    add_customers(engine, *({"customer_id": f"C{i}", "birthday": date(1990, 9, 1)} for i in range(8)))
    c = campaign(coupon={"type": "amount", "value": 500, "currency": "INR", "valid_days": 30})
    preview = plan(engine, cfg, c, date(2027, 9, 1))
    dry = plan(engine, cfg, c, date(2027, 9, 1), record=True, dry_run=True)
    test = plan(engine, cfg, c, date(2027, 9, 1), record=True, test_recipient="qa@example.org")
    assert preview.recipients == dry.recipients == 8 and test.recipients == 5
    with engine.connect() as conn:
        msgs = conn.execute(select(Message.idempotency_key, Message.recipient, Message.test)).all()
        assert {r.recipient for r in msgs} == {"qa@example.org"} and all(r.test for r in msgs) and len(msgs) == 5
        assert all(r.idempotency_key.startswith(f"test:{test.run_id}:birthday:") for r in msgs)
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar() == 2  # dry and test
    real = plan(engine, cfg, c, date(2027, 9, 1), record=True)
    assert real.recipients == 8 and real.reasons == {}


def test_messages_are_rendered_in_the_customers_language_with_personalisation(engine, cfg):
    from crm_tasks.messages.render import renderer_for

    add_customers(engine, {"customer_id": "FA", "locale": "fa-IR", "timezone": "Asia/Tehran",
                           "first_name": "<script>x</script>", "birthday": date(1990, 10, 1)},
                  {"customer_id": "XX", "locale": "de-DE", "birthday": date(1990, 10, 1)})
    add_first_purchase(engine, "FA", datetime(2024, 1, 1, tzinfo=UTC), category="electronics")
    result = plan(engine, cfg, campaign(), date(2027, 10, 1), record=True)
    assert {m.locale for m in result.sample} == {"fa", "en"}  # German falls back to English
    with engine.connect() as conn:
        ctx = conn.execute(select(Message.context).where(Message.customer_id == "FA")).scalar_one()
    assert ctx["dir"] == "rtl" and ctx["customer"]["years_as_customer"] == 3
    assert ctx["customer"]["favourite_category"] and ctx["customer"]["favourite_category"] != "electronics"
    assert "@" not in str(ctx)  # the address is the ledger's, never the template's
    html = renderer_for(cfg).render("birthday", ctx).html
    assert "<script>x" not in html and "&lt;script&gt;x" in html and 'dir="rtl"' in html


def test_one_profile_that_breaks_rendering_fails_the_run_before_anything_is_sent(engine, cfg, tmp_path):
    """Every message is rendered at planning, before any is recorded for delivery: one profile a
    template cannot render (here: no first name, which the edited template indexes) stops the run."""
    import shutil

    from crm_tasks.errors import RenderError
    from tests.conftest import REPO

    templates = tmp_path / "email"
    shutil.copytree(REPO / "templates" / "email", templates)
    body = templates / "birthday" / "body.txt"
    body.write_text(body.read_text(encoding="utf-8").replace(
        "{% block content %}", "{% block content %}{{ customer.first_name[0] }}", 1), encoding="utf-8")
    risky = cfg.model_copy(update={"campaigns": cfg.campaigns.model_copy(update={"templates": templates})})
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "birthday": date(1990, 5, 10), "first_name": None})
    with pytest.raises(RenderError, match="campaign birthday, customer C2: .*nothing was planned for sending"):
        plan_campaign(engine, risky, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 0  # nothing to send
        assert conn.execute(select(func.count()).select_from(Coupon)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one() == 0
    # The same template renders everyone who has a first name.
    add_customers(engine, {"customer_id": "C3", "birthday": date(1990, 5, 11)})
    assert plan_campaign(engine, risky, campaign(), date(2026, 5, 11), datetime(2026, 5, 11, 0, 30, tzinfo=UTC)
                         ).recipients == 1


def _renderer_slow_for_slow(cfg, folder):
    """A renderer of the shipped templates whose birthday message never ends for a customer named Slow, stopped
    by the render watchdog after a second. A second, not less: the first message of a language also builds its
    macro module, and on a loaded machine that alone once took more than 0.3 s."""
    import shutil

    from crm_tasks.messages.render import Renderer
    from tests.conftest import REPO

    templates = folder / "email"
    shutil.copytree(REPO / "templates" / "email", templates)
    body = templates / "birthday" / "body.html"
    body.write_text(body.read_text(encoding="utf-8").replace("{% block content %}", (
        "{% block content %}{% if customer.first_name == 'Slow' %}{% for a in range(1000) %}"
        "{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}{% endif %}"), 1),
        encoding="utf-8")
    return Renderer(templates, cfg.campaigns.locales, render_seconds=1.0)


def test_a_message_that_renders_too_long_fails_the_run_naming_campaign_and_template(engine, cfg, tmp_path):
    from crm_tasks.errors import RenderError

    renderer = _renderer_slow_for_slow(cfg, tmp_path)
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "birthday": date(1990, 5, 10), "first_name": "Slow"})
    with pytest.raises(RenderError, match=r"campaign birthday, customer C2: template birthday \(en\): rendering one "
                                          r"message took more than 1 s.*nothing was planned for sending"):
        plan_campaign(engine, cfg, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC),
                      renderer=renderer)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one() == 0


def _on_processes(cfg, processes: int):
    return cfg.model_copy(update={"campaigns": cfg.campaigns.model_copy(update={"render_processes": processes})})


def test_a_plan_rendered_in_forked_processes_records_the_same_messages(engine, cfg, monkeypatch):
    from crm_tasks.messages import slices

    monkeypatch.setattr(slices, "MIN_SLICE", 2)  # a fork for every two messages, instead of every 5,000
    add_customers(engine, *[{"customer_id": f"C{i}", "birthday": date(1990, 5, 10), "first_name": f"N{i}"}
                            for i in range(9)])
    as_of, run_at = date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC)

    def ledger():
        with engine.connect() as conn:
            return conn.execute(select(Message.idempotency_key, Message.context, Message.message_id)
                                .order_by(Message.idempotency_key)).all()

    alone = plan_campaign(engine, _on_processes(cfg, 1), campaign(), as_of, run_at)
    here = ledger()
    forked = plan_campaign(engine, _on_processes(cfg, 3), campaign(), as_of, run_at)  # replaces the first
    assert forked.rendered == alone.rendered >= 7 and ledger() == here
    # Each message carries its own customer's context, not a neighbour's from another slice.
    assert all(key.split(":")[1] == "C" + ctx["customer"]["first_name"][1:] for key, ctx, _ in here)


def test_a_message_that_fails_in_a_forked_process_fails_the_run_naming_the_customer(engine, cfg, tmp_path,
                                                                                   monkeypatch):
    from crm_tasks.errors import RenderError
    from crm_tasks.messages import slices

    monkeypatch.setattr(slices, "MIN_SLICE", 2)
    # The last customer's message never ends: the watchdog of the forked process that renders it stops it.
    renderer = _renderer_slow_for_slow(cfg, tmp_path)
    add_customers(engine, *[{"customer_id": f"C{i}", "birthday": date(1990, 5, 10)} for i in range(5)],
                  {"customer_id": "C9", "birthday": date(1990, 5, 10), "first_name": "Slow"})
    with pytest.raises(RenderError, match=r"campaign birthday, customer C9: template birthday \(en\): rendering one "
                                          r"message took more than 1 s.*nothing was planned for sending"):
        plan_campaign(engine, _on_processes(cfg, 2), campaign(), date(2026, 5, 10),
                      datetime(2026, 5, 10, 0, 30, tzinfo=UTC), renderer=renderer)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 0
