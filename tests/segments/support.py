"""What the segment tests share: a day of landing files loaded, and memberships read back."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from crm_tasks.ingest.batches import ingest_dates
from crm_tasks.store.models import Segment, SegmentMembership
from tests.helpers import write_csv


def members(engine, name: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(
            select(SegmentMembership.customer_id).join(Segment, Segment.id == SegmentMembership.segment_id)
            .where(Segment.name == name, SegmentMembership.valid_to.is_(None))).scalars())


def load_day(engine, cfg, landing, purchases, profiles):
    write_csv(landing, "customers", "2026-04-02", profiles)
    write_csv(landing, "purchases", "2026-04-02", purchases)
    report = ingest_dates(engine, cfg, [date(2026, 4, 2)])
    assert report.totals["rows_quarantined"] == 0


def assert_sizes_are_counts(engine, result):
    """Recorded sizes (kept from the previous run plus the day's moves) equal a plain count."""
    for seg in result.segments:
        assert seg.size == len(members(engine, seg.name)), seg.name


def membership_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(SegmentMembership.segment_id, SegmentMembership.customer_id,
                                          SegmentMembership.valid_from, SegmentMembership.valid_to)).all())
