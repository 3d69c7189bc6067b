"""Restore: by hand within the grace period, refused after the purge, and for profiles that came back — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from crm_tasks.cleanup.archive import run_cleanup
from crm_tasks.cleanup.restore import restore
from crm_tasks.errors import RestoreRefused
from crm_tasks.store.models import (
    ArchivedCustomer,
    Customer,
)
from tests.cleanup.support import AS_OF, LONG_AGO, archive_rows, ids, permissive
from tests.factories import add_customers, buy


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
