"""Cleanup: every rule, the guardrail, dry runs, idempotency, reconciliation, restore, purge, merges,
suppression after a re-import, and the freshness record — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.cleanup.archive import format_report, restore, run_cleanup
from crm_tasks.clock import cleanup_as_of, months_before
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import CleanupBlocked, RestoreRefused
from crm_tasks.ingest.batches import ingest_dates
from crm_tasks.store.models import (
    ArchivedCustomer,
    CampaignPlanRow,
    CampaignRun,
    CleanupRun,
    Coupon,
    Customer,
    CustomerCategoryMetrics,
    CustomerMerge,
    CustomerMetrics,
    Message,
    Purchase,
    Suppression,
)
from tests.factories import add_customers, buy, campaign
from tests.helpers import customer, write_csv

AS_OF = date(2026, 3, 31)
RECENT = datetime(2026, 3, 1, tzinfo=UTC)
LONG_AGO = datetime(2023, 6, 1, tzinfo=UTC)  # more than 24 months before AS_OF
OLDISH = datetime(2024, 9, 1, tzinfo=UTC)  # 19 months before: at risk, not stale


def permissive(cfg, **cleanup):
    """Settings whose guardrail lets a small test base be cleaned (a handful is a large share of 10)."""
    return cfg.model_copy(update={"cleanup": cfg.cleanup.model_copy(update={"max_archive_share": 1.0, **cleanup})})


def ids(engine, model=Customer) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(model.customer_id)).scalars())


def archive_rows(engine) -> dict[str, tuple]:
    a = ArchivedCustomer
    with engine.connect() as conn:
        return {r.customer_id: (r.reason, r.status) for r in conn.execute(select(a))}


def hard_bounce(engine, cfg, customer_id: str, address: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Suppression).values(email_hash=email_hash(address, cfg.secret_key),
                                                customer_id=customer_id, reason="hard_bounce",
                                                created_at=RECENT))


@pytest.fixture
def base(engine, cfg):
    """Ten profiles; five of them stale, one for each rule (and one stale by two)."""
    add_customers(
        engine,
        {"customer_id": "ACTIVE", "updated_at": RECENT},
        {"customer_id": "BUYER", "updated_at": LONG_AGO},  # old profile, recent purchase: kept
        {"customer_id": "EDITED", "updated_at": RECENT},  # bought long ago, profile updated lately: kept
        {"customer_id": "SILENT", "updated_at": LONG_AGO, "birthday": date(1990, 3, 31)},  # never bought
        {"customer_id": "GONE", "updated_at": LONG_AGO, "phone": "+919876543210"},  # last bought long ago
        {"customer_id": "BOUNCED", "updated_at": RECENT},  # address bounced, no phone
        {"customer_id": "BOUNCEPH", "updated_at": RECENT, "phone": "+919812345678"},  # bounced but has a phone
        {"customer_id": "MOVED", "updated_at": RECENT, "email": "new@example.com"},  # bounce of an old address
        {"customer_id": "NOBODY", "updated_at": RECENT, "email": None},  # no contact data at all
        {"customer_id": "OLDISH", "updated_at": OLDISH},  # at risk of going stale
    )
    buy(engine, "BUYER", RECENT)
    buy(engine, "EDITED", LONG_AGO)
    buy(engine, "GONE", LONG_AGO, "250")
    buy(engine, "ACTIVE", RECENT, "40")
    hard_bounce(engine, cfg, "BOUNCED", "bounced@example.com")
    hard_bounce(engine, cfg, "BOUNCEPH", "bounceph@example.com")
    hard_bounce(engine, cfg, "MOVED", "old@example.com")
    return engine


STALE = {"SILENT": "inactive", "GONE": "inactive", "BOUNCED": "hard_bounce", "NOBODY": "no_contact"}


def test_each_rule_archives_with_its_reason_and_the_rest_is_kept(base, cfg):
    result = run_cleanup(base, permissive(cfg), AS_OF)
    assert {k: v[0] for k, v in archive_rows(base).items()} == STALE
    assert ids(base) == {"ACTIVE", "BUYER", "EDITED", "BOUNCEPH", "MOVED", "OLDISH"}
    assert result.reasons == {"inactive": 2, "hard_bounce": 1, "no_contact": 1}
    assert result.examples["inactive"] == ["GONE", "SILENT"]
    assert (result.profiles_before, result.kept, result.archived, result.merged) == (10, 6, 4, 0)
    assert result.reconciles and result.recorded
    # The archive holds the whole profile, restorable.
    with base.connect() as conn:
        row = conn.execute(select(ArchivedCustomer).where(ArchivedCustomer.customer_id == "GONE")).one()
    assert (row.email, row.phone, row.status, row.purge_after) == (
        "gone@example.com", "+919876543210", "archived", AS_OF + timedelta(days=30))


def test_archived_profiles_leave_campaign_audiences_at_once(base, cfg):
    birthday = campaign()
    before = plan_campaign(base, cfg, birthday, date(2026, 3, 31), record=False, sample=100)
    assert {m.customer_id for m in before.sample} == {"SILENT"}
    run_cleanup(base, permissive(cfg), AS_OF)
    after = plan_campaign(base, cfg, birthday, date(2026, 3, 31), record=False, sample=100)
    assert after.audience == 0


def test_archived_profiles_leave_their_segments_at_the_next_recompute(base, cfg):
    from crm_tasks.segments import compute as segments
    from crm_tasks.store.models import SegmentMembership

    def open_members(conn):
        return set(conn.execute(select(SegmentMembership.customer_id).where(SegmentMembership.valid_to.is_(None)))
                   .scalars())

    segments.recompute(base, cfg, AS_OF)
    with base.connect() as conn:
        assert set(STALE) <= open_members(conn)
    run_cleanup(base, permissive(cfg), AS_OF)
    result = segments.recompute(base, cfg, AS_OF + timedelta(days=1))
    # Counted as exits in the history; an archived buyer is not a "buyer without profile".
    assert (result.customers, result.buyers_without_profile) == (6, 0)
    with base.connect() as conn:
        assert open_members(conn).isdisjoint(STALE)


def test_each_rule_can_be_switched_off(base, cfg):
    rules = cfg.cleanup.rules.model_copy(update={"inactive": False, "no_contact": False})
    result = run_cleanup(base, permissive(cfg, rules=rules), AS_OF)
    assert result.reasons == {"hard_bounce": 1}


def test_a_dry_run_reports_the_same_and_changes_nothing(base, cfg):
    dry = run_cleanup(base, permissive(cfg), AS_OF, dry_run=True)
    assert ids(base, ArchivedCustomer) == set() and len(ids(base)) == 10
    with base.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CleanupRun)).scalar_one() == 0
    real = run_cleanup(base, permissive(cfg), AS_OF)
    assert dry.dry_run and not dry.recorded
    assert dry.to_dict() | {"dry_run": True, "recorded": True, "seconds": 0, "phases": {}} == \
        real.to_dict() | {"dry_run": True, "recorded": True, "seconds": 0, "phases": {}}


def test_the_guardrail_fails_the_run_with_the_counts_and_changes_nothing(base, cfg):
    with pytest.raises(CleanupBlocked) as exc:
        run_cleanup(base, cfg, AS_OF)  # default: at most 10% of the profiles
    message = str(exc.value)
    assert "would archive 4 and merge away 0 of 10 profiles (40.0%)" in message
    assert "max_archive_share 10%" in message and "inactive 2" in message
    assert len(ids(base)) == 10 and ids(base, ArchivedCustomer) == set()
    # A dry run says so without failing.
    dry = run_cleanup(base, cfg, AS_OF, dry_run=True)
    assert dry.blocked == message


def test_the_same_date_twice_gives_the_same_result(base, cfg):
    first = run_cleanup(base, permissive(cfg), AS_OF)
    state = (ids(base), archive_rows(base))
    second = run_cleanup(base, permissive(cfg), AS_OF)
    assert (ids(base), archive_rows(base)) == state
    ignore = {"seconds": 0, "phases": {}}
    assert first.to_dict() | ignore == second.to_dict() | ignore
    with base.connect() as conn:
        row = conn.execute(select(CleanupRun)).one()
    assert (row.profiles_before, row.kept, row.archived, row.merged) == (10, 6, 4, 0)


def test_freshness_is_recorded_per_run(base, cfg):
    run_cleanup(base, permissive(cfg), AS_OF)
    with base.connect() as conn:
        row = conn.execute(select(CleanupRun)).one()
    # Kept: ACTIVE, BUYER, EDITED, BOUNCEPH, MOVED active; OLDISH silent for 19 months, at risk.
    assert (row.active_share, row.at_risk_share, row.archived_share) == (0.5, 0.1, 0.4)
    assert row.parameters["inactive_months"] == 24


def test_restore_within_the_grace_period_puts_the_profile_back(base, cfg):
    run_cleanup(base, permissive(cfg), AS_OF)
    restored = restore(base, cfg, "GONE", on=AS_OF + timedelta(days=3))
    assert (restored.reason, restored.archived_on) == ("inactive", AS_OF)
    with base.connect() as conn:
        row = conn.execute(select(Customer).where(Customer.customer_id == "GONE")).one()
        archived = conn.execute(select(ArchivedCustomer).where(ArchivedCustomer.customer_id == "GONE")).one()
    assert (row.email, row.phone, row.updated_at) == ("gone@example.com", "+919876543210", LONG_AGO)
    assert (archived.status, archived.email) == ("restored", None)
    # Restored by hand: the next weekly run leaves it alone, and the archive still reconciles.
    later = run_cleanup(base, permissive(cfg), AS_OF + timedelta(days=7))
    assert "GONE" in ids(base)
    assert (later.archived_total, later.restored_total, later.purged_total, later.in_grace) == (4, 1, 0, 3)
    assert later.reconciles
    with pytest.raises(RestoreRefused, match="current profile"):
        restore(base, cfg, "GONE")
    with pytest.raises(RestoreRefused, match="no archived profile"):
        restore(base, cfg, "NEVER")


def test_after_the_grace_period_the_purge_keeps_only_pseudonymous_aggregates(base, cfg):
    def sales(conn):
        return (conn.execute(select(func.sum(Purchase.amount))).scalar_one(),
                conn.execute(select(func.sum(CustomerMetrics.revenue))).scalar_one(),
                conn.execute(select(func.count()).select_from(Purchase)).scalar_one())

    with base.connect() as conn:
        before = sales(conn)
    run_cleanup(base, permissive(cfg), AS_OF)
    purge_day = AS_OF + timedelta(days=30)
    dry = run_cleanup(base, permissive(cfg), purge_day, dry_run=True)  # what would be purged, by reason
    assert "purged, inactive: 2  e.g. GONE, SILENT" in format_report(dry.to_dict())
    assert archive_rows(base)["GONE"] == ("inactive", "archived")
    result = run_cleanup(base, permissive(cfg), purge_day)
    assert result.to_dict() | {"dry_run": 1, "recorded": 1, "seconds": 0, "phases": {}} == \
        dry.to_dict() | {"dry_run": 1, "recorded": 1, "seconds": 0, "phases": {}}
    assert result.purged == 4
    assert result.reasons == {"purged:inactive": 2, "purged:hard_bounce": 1, "purged:no_contact": 1}
    assert result.examples["purged:inactive"] == ["GONE", "SILENT"]
    assert (result.archived_total, result.restored_total, result.purged_total, result.in_grace) == (4, 0, 4, 0)
    assert result.reconciles
    with base.connect() as conn:
        assert sales(conn) == before  # sales figures and history unchanged
        gone = conn.execute(select(ArchivedCustomer).where(ArchivedCustomer.customer_id == "GONE")).one()
        assert (gone.status, gone.email, gone.first_name, gone.phone, gone.purged_on) == (
            "purged", None, None, None, purge_day)
        assert conn.execute(select(CustomerMetrics.revenue).where(CustomerMetrics.customer_id == "GONE")
                            ).scalar_one() == Decimal("250.0000")
        reasons = dict(conn.execute(select(Suppression.email_hash, Suppression.reason)).all())
    assert reasons[email_hash("gone@example.com", cfg.secret_key)] == "purged:inactive"
    assert reasons[email_hash("bounced@example.com", cfg.secret_key)] == "hard_bounce"  # kept as it was
    with pytest.raises(RestoreRefused, match="purged on 2026-04-30.*cannot be restored"):
        restore(base, cfg, "GONE")
    if base.dialect.name == "sqlite":  # not even the file keeps a copy of the purged address
        assert b"gone@example.com" not in Path(base.url.database).read_bytes()


def test_a_purged_person_imported_again_is_not_mailed(base, cfg, landing):
    """The suppression hash outlives the purge: a later import does not silently re-subscribe them."""
    run_cleanup(base, permissive(cfg), AS_OF)
    run_cleanup(base, permissive(cfg), AS_OF + timedelta(days=30))
    # The same person comes back through the nightly profile file, consenting, with a new id.
    write_csv(landing, "customers", "2026-06-01", [
        customer("AGAIN", email="silent@example.com", birthday="1990-03-31", consent="true",
                 updated="2026-06-01T09:00:00+05:30")])
    ingest_dates(base, cfg, [date(2026, 6, 1)], ["customers"])
    assert "AGAIN" in ids(base)
    result = plan_campaign(base, cfg, campaign(), date(2027, 3, 31), record=False)
    assert (result.audience, result.recipients, result.reasons) == (1, 0, {"suppressed": 1})


def test_profiles_that_come_back_are_restored(base, cfg):
    run_cleanup(base, permissive(cfg), AS_OF)
    add_customers(base, {"customer_id": "SILENT", "updated_at": datetime(2026, 4, 2, tzinfo=UTC)})  # loaded again
    buy(base, "GONE", datetime(2026, 4, 3, tzinfo=UTC))  # bought again
    result = run_cleanup(base, permissive(cfg), AS_OF + timedelta(days=7))
    assert result.restored == 2 and {"SILENT", "GONE"} <= ids(base)
    assert archive_rows(base)["SILENT"] == ("inactive", "restored")
    with base.connect() as conn:
        gone = conn.execute(select(Customer).where(Customer.customer_id == "GONE")).one()
    assert gone.phone == "+919876543210"
    assert (result.profiles_before, result.kept, result.archived) == (8, 8, 0) and result.reconciles


def test_duplicates_are_merged_into_one_survivor_with_everything_re_pointed(engine, cfg):
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    add_customers(
        engine,
        {"customer_id": "OLD", "email": "asha@example.com", "updated_at": early, "phone": "+919800000001"},
        {"customer_id": "NEW", "email": "asha@example.com", "updated_at": late, "first_name": "Asha R."},
        {"customer_id": "PH1", "email": "p1@example.com", "phone": "+919800000002", "updated_at": late},
        {"customer_id": "PH2", "email": "p2@example.com", "phone": "+919800000002", "updated_at": late},
        *({"customer_id": f"SHARED{i:02d}", "email": "info@example.com", "updated_at": late} for i in range(11)),
    )
    buy(engine, "OLD", datetime(2025, 5, 1, tzinfo=UTC), "300")
    buy(engine, "NEW", datetime(2026, 2, 2, tzinfo=UTC), "100")
    # OLD has ledger history, a coupon and a plan row; NEW has a plan row in the same run.
    with engine.begin() as conn:
        run_id = conn.execute(insert(CampaignRun).values(
            campaign="birthday", as_of=AS_OF, run_at=RECENT, dry_run=False, test_run=False, status="planned",
            audience=2, recipients=1, holdout=0, excluded=1, reasons={}, diff={}, parameters={}, created_at=RECENT,
        ).returning(CampaignRun.id)).scalar_one()
        for cid in ("OLD", "NEW"):
            conn.execute(insert(CampaignPlanRow).values(
                run_id=run_id, customer_id=cid, outcome="send", occurrence="2026", idempotency_key=f"k:{cid}",
                locale="en", template="birthday"))
        conn.execute(insert(Message).values(
            idempotency_key="birthday:OLD:2025", campaign="birthday", customer_id="OLD", run_id=run_id,
            occurrence="2025", state="sent", test=False, recipient="asha@example.com", locale="en",
            template="birthday", send_at=RECENT, context={"customer": {"first_name": "Asha"}}, created_at=RECENT,
            updated_at=RECENT))
        conn.execute(insert(Coupon).values(
            code="K1", idempotency_key="birthday:OLD:2025", campaign="birthday", customer_id="OLD", value=15,
            value_type="percent", issued_on=AS_OF, expires_on=AS_OF, run_id=run_id))

    result = run_cleanup(engine, permissive(cfg), AS_OF)
    assert result.reasons == {"duplicate_email": 1, "duplicate_phone": 1}
    assert result.skipped_groups == 1  # eleven profiles on info@: a shared address, not one person
    assert result.examples["duplicate_email"] == ["OLD -> NEW"]
    assert result.examples["duplicate_phone"] == ["PH2 -> PH1"]  # same update time: the lowest id survives
    assert (result.profiles_before, result.kept, result.merged, result.archived) == (15, 13, 2, 0)
    assert result.reconciles
    assert {"OLD", "PH2"}.isdisjoint(ids(engine)) and {"NEW", "PH1", "SHARED00"} <= ids(engine)
    with engine.connect() as conn:
        survivor = conn.execute(select(Customer).where(Customer.customer_id == "NEW")).one()
        assert (survivor.first_name, survivor.phone) == ("Asha R.", "+919800000001")  # its own name, OLD's phone
        assert conn.execute(select(Purchase.customer_id).distinct().where(Purchase.amount == 300)).scalar_one() \
            == "NEW"
        (orders, revenue, first) = conn.execute(select(CustomerMetrics.orders, CustomerMetrics.revenue,
                                                       CustomerMetrics.first_purchase_at)
                                                .where(CustomerMetrics.customer_id == "NEW")).one()
        assert (orders, revenue, first) == (2, Decimal("400.0000"), datetime(2025, 5, 1, tzinfo=UTC))
        for model in (CustomerMetrics, CustomerCategoryMetrics):
            assert conn.execute(select(func.count()).select_from(model).where(model.customer_id == "OLD")
                                ).scalar_one() == 0
        assert conn.execute(select(Message.customer_id)).scalar_one() == "NEW"
        assert conn.execute(select(Coupon.customer_id)).scalar_one() == "NEW"
        # NEW already had a row in that run: OLD's stays under its id, traceable through the merge record.
        assert set(conn.execute(select(CampaignPlanRow.customer_id)).scalars()) == {"OLD", "NEW"}
        merges = conn.execute(select(CustomerMerge.merged_id, CustomerMerge.survivor_id, CustomerMerge.rule,
                                     CustomerMerge.merged_on).order_by(CustomerMerge.merged_id)).all()
    assert merges == [("OLD", "NEW", "duplicate_email", AS_OF), ("PH2", "PH1", "duplicate_phone", AS_OF)]
    again = run_cleanup(engine, permissive(cfg), AS_OF)
    assert again.to_dict() | {"seconds": 0, "phases": {}} == result.to_dict() | {"seconds": 0, "phases": {}}


def test_the_as_of_date_of_a_dag_run_is_the_last_complete_day():
    # Scheduled: the week's interval ends on Monday 04:00 in Kolkata: cleaned as of Sunday.
    end = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # Monday 30 March, 04:00 in Kolkata
    assert cleanup_as_of(end, end + timedelta(seconds=5), "Asia/Kolkata") == date(2026, 3, 29)
    # Manual, without an interval: the day before it was triggered.
    assert cleanup_as_of(None, datetime(2026, 4, 2, 12, 0, tzinfo=UTC), "Asia/Kolkata") == date(2026, 4, 1)
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2028, 3, 31), 1) == date(2028, 2, 29)
    assert months_before(date(2026, 3, 31), 24) == date(2024, 3, 31)


def test_the_cleanup_commands_print_the_report_and_one_json_object(base, use_settings, monkeypatch, tmp_path):
    import json

    from click.testing import CliRunner

    from crm_tasks.cli import main

    runner = CliRunner()
    blocked = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31"])
    assert blocked.exit_code == 1 and "max_archive_share 10%" in blocked.output
    dry = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31", "--dry-run"])
    assert dry.exit_code == 0 and "a real run would fail" in dry.output
    monkeypatch.setenv("CRM_CONFIG", _config_with_share(tmp_path / "crm.yaml"))
    from crm_tasks.settings import settings

    settings.cache_clear()
    out = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["reasons"] == {"inactive": 2, "hard_bounce": 1, "no_contact": 1} and payload["reconciles"]
    assert payload["examples"]["no_contact"] == ["NOBODY"]
    text = runner.invoke(main, ["cleanup", "--as-of", "2026-03-31"]).output
    assert "profiles before 10 = kept 6 + archived 4 + merged away 0" in text
    assert "archived, inactive: 2  e.g. GONE, SILENT" in text
    restored = runner.invoke(main, ["cleanup", "restore", "GONE", "--json"])
    assert json.loads(restored.output)["customer_id"] == "GONE"
    again = runner.invoke(main, ["cleanup", "restore", "GONE"])
    assert again.exit_code == 1 and "current profile" in again.output
    assert runner.invoke(main, ["cleanup"]).exit_code == 2


def _config_with_share(path) -> str:
    """A copy of crm.yaml with the guardrail opened (the CLI reads its settings from the file)."""
    import yaml

    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "crm.yaml").read_text(encoding="utf-8"))
    data["cleanup"] = {**(data.get("cleanup") or {}), "max_archive_share": 1.0}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# --- the crm_cleanup DAG -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cleanup_dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    return DagBag(dag_folder=str(REPO / "dags" / "crm_cleanup.py"))


def test_the_dag_runs_weekly_as_of_the_last_day_of_its_interval(cleanup_dag_bag):
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    dag = cleanup_dag_bag.dags["crm_cleanup"]
    assert cleanup_dag_bag.import_errors == {} and dag.catchup is False and "cleanup" in dag.tags
    assert dag.params["dry_run"] is True and dag.params.get_param("dry_run").schema["type"] == "boolean"
    timetable = decode_timetable(encode_timetable(dag.timetable))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.datetime(2026, 3, 25, tz="UTC"), latest=None, catchup=True))
    assert info.run_after == datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # Monday 30 March, 04:00 in Kolkata
    assert info.data_interval.end - info.data_interval.start == timedelta(days=7)
    assert cleanup_as_of(info.data_interval.end, info.run_after, "Asia/Kolkata") == date(2026, 3, 29)


@pytest.fixture
def cleanup_dag(cleanup_dag_bag, airflow_db, use_settings, monkeypatch):
    dag = cleanup_dag_bag.dags["crm_cleanup"]
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)  # dag.test() would wait out the retry delay
    return dag


@pytest.mark.airflow
def test_the_dag_cleans_for_real_and_a_blocked_run_fails(cleanup_dag, base, monkeypatch, tmp_path):
    from crm_tasks.settings import settings

    # The default guardrail (10%) blocks this small base: the run fails and nothing changes.
    run = cleanup_dag.test(run_conf={"dry_run": False})
    assert run.state == "failed"
    assert len(ids(base)) == 10 and ids(base, ArchivedCustomer) == set()
    # A manual dry run succeeds and stores nothing.
    assert cleanup_dag.test(run_conf={"dry_run": True}).state == "success"
    with base.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CleanupRun)).scalar_one() == 0
    monkeypatch.setenv("CRM_CONFIG", _config_with_share(tmp_path / "crm.yaml"))
    settings.cache_clear()
    run = cleanup_dag.test(run_conf={"dry_run": False})
    assert run.state == "success"
    with base.connect() as conn:
        (as_of,) = conn.execute(select(CleanupRun.as_of)).one()
    assert as_of == cleanup_as_of(None, run.run_after, "Asia/Kolkata")
    assert {"SILENT", "GONE", "BOUNCED", "NOBODY"} <= ids(base, ArchivedCustomer)
