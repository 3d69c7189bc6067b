"""Business time: the dates a run covers, on schedules, triggers and forms."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from crm_tasks.clock import cleanup_as_of, months_before


def test_segment_dates_follow_the_triggering_run():
    from crm_tasks.clock import segment_dates
    from crm_tasks.errors import ConfigError

    d = date.fromisoformat
    # After ingest: the latest date it loaded.
    assert segment_dates(None, None, ["2026-03-01", "2026-03-02"], None, None) == [d("2026-03-02")]
    # A corrected old partition recomputes today's segments, without undoing recorded history.
    assert segment_dates(None, None, ["2026-02-01"], d("2026-03-02"), None) == [d("2026-03-02")]
    # The trigger form: one date, or a backfill range in order.
    assert segment_dates("2026-01-30", "2026-02-02", [], d("2026-03-02"), None)[1:3] == [
        d("2026-01-31"), d("2026-02-01")]
    # A manual run without dates: the latest loaded partition.
    assert segment_dates(None, None, [], None, d("2026-03-05")) == [d("2026-03-05")]
    with pytest.raises(ConfigError, match="through"):
        segment_dates("2026-03-02", "2026-03-01", [], None, None)
    with pytest.raises(ConfigError, match="nothing has been ingested"):
        segment_dates(None, None, [], None, None)


def test_the_as_of_date_of_a_dag_run_is_the_last_complete_day():
    # Scheduled: the week's interval ends on Monday 04:00 in Kolkata: cleaned as of Sunday.
    end = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)  # Monday 30 March, 04:00 in Kolkata
    assert cleanup_as_of(end, end + timedelta(seconds=5), "Asia/Kolkata") == date(2026, 3, 29)
    # Manual, without an interval: the day before it was triggered.
    assert cleanup_as_of(None, datetime(2026, 4, 2, 12, 0, tzinfo=UTC), "Asia/Kolkata") == date(2026, 4, 1)
    assert months_before(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert months_before(date(2028, 3, 31), 1) == date(2028, 2, 29)
    assert months_before(date(2026, 3, 31), 24) == date(2024, 3, 31)
