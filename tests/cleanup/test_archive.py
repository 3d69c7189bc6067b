"""Cleanup: every rule, the guardrail, dry runs, idempotency, reconciliation, restore, purge, merges,
suppression after a re-import, and the freshness record — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.cleanup.archive import format_report, run_cleanup
from crm_tasks.cleanup.restore import restore
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import CleanupBlocked, RestoreRefused
from crm_tasks.ingest.batches import ingest_dates
from crm_tasks.store.models import (
    ArchivedCustomer,
    CleanupRun,
    CustomerMetrics,
    Purchase,
    Suppression,
)
from tests.cleanup.support import AS_OF, STALE, archive_rows, ids, permissive
from tests.factories import campaign
from tests.helpers import customer, write_csv


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


def test_after_the_grace_period_the_purge_keeps_only_pseudonymous_aggregates(base, cfg, keys):
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
    assert reasons[email_hash("gone@example.com", keys.hashing)] == "purged:inactive"
    assert reasons[email_hash("bounced@example.com", keys.hashing)] == "hard_bounce"  # kept as it was
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


# --- the crm_cleanup DAG -------------------------------------------------------------------------


