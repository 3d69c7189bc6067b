"""Business time: the dates a run covers, on schedules, triggers and forms."""

from __future__ import annotations

from datetime import date

import pytest


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
