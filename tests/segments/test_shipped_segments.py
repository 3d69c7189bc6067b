"""The example custom segments shipped in segments/: they load without problems and
compute on generated data, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from crm_tasks.demo.generate import generate
from crm_tasks.ingest.batches import all_dates, ingest_dates
from crm_tasks.segments import compute as segments
from crm_tasks.segments import rules
from crm_tasks.settings import load_settings
from crm_tasks.store.models import Customer, CustomerScore, Segment, SegmentMembership
from tests.conftest import REPO

SHIPPED = REPO / "segments"
EXPECTED = {"birthday_next_7_days", "lapsed_high_spenders", "new_telugu_hindi", "valuable_slipping_away",
            "warranty_ending_30_days"}


@pytest.fixture
def shipped_cfg(landing, db_url):
    return load_settings(REPO / "crm.yaml", env={
        "CRM_LANDING_DIR": str(landing), "CRM_DATABASE_URL": db_url, "CRM_SEGMENTS_DIR": str(SHIPPED)})


def test_shipped_definitions_load_without_problems():
    cfg = load_settings(REPO / "crm.yaml", env={})
    assert cfg.segments.folder == SHIPPED  # the shipped configuration reads this folder
    definitions, problems = rules.load_definitions(SHIPPED, segments.rule_fields(cfg),
                                                   segments.builtin_segments().keys())
    assert [str(p) for p in problems] == []
    assert {d.name for d in definitions} == EXPECTED
    for d in definitions:
        # One file per segment, named after it, with a description marketing can read.
        assert d.source == f"segments/{d.name}.yaml"
        assert len(d.description) > 20


def test_shipped_segments_compute_on_generated_data(engine, shipped_cfg, landing):
    generate(landing, customers=300, days=120, start=date(2025, 12, 1), seed=11)
    ingest_dates(engine, shipped_cfg, all_dates(landing))
    result = segments.recompute(engine, shipped_cfg, date(2026, 3, 30))  # the last generated day
    assert result.problems == []
    computed = {s.name: s for s in result.segments if s.family == "custom"}
    assert set(computed) == EXPECTED
    assert all(s.status == "active" for s in computed.values())
    assert any(s.size > 0 for s in computed.values())

    # Two definitions against a plain query over the stored profiles and scores.
    with engine.connect() as conn:
        def members(name):
            return set(conn.execute(
                select(SegmentMembership.customer_id).join(Segment, Segment.id == SegmentMembership.segment_id)
                .where(Segment.name == name, SegmentMembership.valid_to.is_(None))).scalars())

        new_te_hi = set(conn.execute(
            select(Customer.customer_id).join(CustomerScore, CustomerScore.customer_id == Customer.customer_id)
            .where(Customer.locale.in_(["te-IN", "hi-IN"]), CustomerScore.lifecycle == "new")).scalars())
        lapsed = set(conn.execute(
            select(CustomerScore.customer_id).where(
                (CustomerScore.value_tier == "high_value") | (CustomerScore.rfm_segment == "cant_lose_them"),
                CustomerScore.recency_days >= 60)).scalars())
        assert members("new_telugu_hindi") == new_te_hi and new_te_hi
        assert members("lapsed_high_spenders") == lapsed and lapsed
