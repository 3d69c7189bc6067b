"""Segment history: moves between segments, re-runs and backfills, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from crm_tasks.segments import compute as segments
from crm_tasks.segments import history
from crm_tasks.store.models import SegmentSize
from tests.helpers import customer, purchase
from tests.segments.support import assert_sizes_are_counts, load_day, members, membership_rows


def test_history_transitions_reruns_and_backfills(engine, seg_cfg, landing):
    load_day(engine, seg_cfg, landing, [
        purchase("A1", "AMY", "2026-03-01T10:00:00+05:30"),
        purchase("B1", "BEN", "2025-06-01T10:00:00+05:30"), purchase("B2", "BEN", "2025-07-01T10:00:00+05:30"),
    ], [customer("AMY"), customer("BEN")])
    day1, day2 = date(2026, 3, 20), date(2026, 4, 5)
    first = segments.recompute(engine, seg_cfg, day1)
    assert "AMY" in members(engine, "lifecycle:new")
    second = segments.recompute(engine, seg_cfg, day2)  # AMY's first order is now 35 days old
    assert members(engine, "lifecycle:active") == {"AMY"}
    assert members(engine, "lifecycle:new") == set()
    new = next(s for s in second.segments if s.name == "lifecycle:new")
    assert (new.size, new.exited, new.previous, new.change) == (0, 1, 1, -1)
    assert second.entered >= 1 and second.exited >= 1

    # The transition, as one query over the history.
    moved = history.transitions(engine, since=day2)
    pair = next(t for t in moved.pairs if t.from_segment == "lifecycle:new")
    assert (pair.to_segment, pair.customers) == ("lifecycle:active", 1)

    # Re-running a date changes nothing; a dry run stores nothing.
    before = membership_rows(engine)
    again = segments.recompute(engine, seg_cfg, day2)
    assert membership_rows(engine) == before
    assert_sizes_are_counts(engine, again)
    assert [(s.name, s.size, s.entered, s.exited) for s in again.segments] == \
        [(s.name, s.size, s.entered, s.exited) for s in second.segments]
    segments.recompute(engine, seg_cfg, date(2026, 6, 1), dry_run=True)
    assert membership_rows(engine) == before

    # Recomputing an earlier date undoes the later one and says so.
    back = segments.recompute(engine, seg_cfg, day1)
    assert back.cleared_dates == [day2]
    assert_sizes_are_counts(engine, back)
    assert members(engine, "lifecycle:new") == {"AMY"}
    with engine.connect() as conn:
        assert conn.execute(select(SegmentSize.as_of).distinct()).scalars().all() == [day1]
    assert [(s.name, s.size) for s in back.segments] == [(s.name, s.size) for s in first.segments]
