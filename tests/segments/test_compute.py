"""Segments against an independent pandas computation on the same transactions,
plus hand-made timelines for the exact boundaries, the stages and the history."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from crm_tasks.demo.generate import generate
from crm_tasks.errors import ConfigError
from crm_tasks.ingest.batches import all_dates, ingest_dates
from crm_tasks.segments import compute as segments
from crm_tasks.store.models import Customer, CustomerScore, Purchase, SegmentRun
from tests.helpers import customer, purchase
from tests.segments.support import assert_sizes_are_counts, load_day, members

AS_OF = date(2026, 3, 31)  # cutoff: 2026-04-01 00:00 Asia/Kolkata = 2026-03-31T18:30Z


def _with(cfg, **segment_settings):
    return cfg.model_copy(update={"segments": cfg.segments.model_copy(update=segment_settings)})


# --- the independent computation ------------------------------------------------------------

def expected_scores(engine, cfg, as_of: date) -> pd.DataFrame:
    """RFM, lifecycle and value tier as the README defines them, with pandas."""
    seg = cfg.segments
    cutoff = segments.cutoff_for(as_of, cfg.timezone)
    cut = int(cutoff.timestamp())
    with engine.connect() as conn:
        p = pd.DataFrame(conn.execute(select(Purchase.customer_id, Purchase.currency, Purchase.purchased_at,
                                             Purchase.amount)).all())
        c = pd.DataFrame(conn.execute(select(Customer.customer_id, Customer.created_at)).all())
    c = c[c["created_at"] < cutoff].set_index("customer_id")
    p = p[p["purchased_at"] < cutoff].copy()
    window = cutoff - timedelta(days=seg.window_days) if seg.window_days else None
    p["order"] = p["amount"] >= 0
    p["in_window"] = True if window is None else p["purchased_at"] >= window
    p["sec"] = [math.floor(t.timestamp()) for t in p["purchased_at"]]
    rows = {}
    for cid in c.index:
        mine = p[p["customer_id"] == cid]
        orders = mine[mine["order"]]
        monetary = Decimal(0)
        for cur, g in mine[mine["in_window"]].groupby("currency"):
            monetary += (sum(g["amount"], Decimal(0)) * seg.exchange_rates[cur]).quantize(
                Decimal("0.0001"), rounding=ROUND_HALF_UP)
        freq = int((orders["in_window"]).sum())
        row = {"orders": len(orders), "frequency": freq, "monetary": monetary}
        if len(orders):
            secs = sorted(orders["sec"])
            # The day an instant falls in: [cutoff - (N+1) days, cutoff - N days) is N days ago.
            row["recency_days"] = (cut - 1 - secs[-1]) // 86400
            row["tenure_days"] = (cut - 1 - secs[0]) // 86400
            row["gap"] = (secs[-1] - secs[0]) / 86400 / (len(secs) - 1) if len(secs) > 1 else None
            row["previous_gap_days"] = (secs[-1] - secs[-2]) // 86400 if len(secs) > 1 else None
        if freq:
            units = monetary / freq
            row["avg_basket"] = units.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        rows[cid] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    scored = df[df["frequency"] > 0].copy()
    n = len(scored)
    for col, key, ascending in (("r_score", "recency_days", False), ("f_score", "frequency", True),
                                ("m_score", "monetary", True)):
        rank = scored[key].astype(float).rank(method="min", ascending=ascending)
        scored[col] = [1 + 5 * (int(r) - 1) // n for r in rank]
    scored["rfm_segment"] = [
        segments.RFM_GRID[r][(f + m + 1) // 2 - 1] for r, f, m in zip(scored.r_score, scored.f_score, scored.m_score)]
    df = df.join(scored[["r_score", "f_score", "m_score", "rfm_segment"]])
    life = seg.lifecycle

    def stage(r):
        if r.orders == 0:
            return "prospect"
        if r.tenure_days < life.new_days:
            return "new"
        if r.recency_days < life.new_days and r.previous_gap_days is not None and not pd.isna(r.previous_gap_days) \
                and r.previous_gap_days >= life.churn_days:
            return "reactivated"
        if r.recency_days >= life.churn_days:
            return "churned"
        gap = life.single_order_gap_days if r.gap is None or pd.isna(r.gap) else r.gap
        if r.recency_days > life.at_risk_min_days and r.recency_days > life.at_risk_factor * gap:
            return "at_risk"
        return "active"

    df["lifecycle"] = df.apply(stage, axis=1)
    top = scored["monetary"].astype(float).rank(method="min", ascending=False)
    high = set(top[top <= math.ceil(seg.high_value_share * n)].index) if n else set()
    med_basket = scored["avg_basket"].astype(float).median() if n else None
    med_freq = scored["frequency"].median() if n else None

    def tier(r):
        if r.name in high:
            return "high_value"
        growing = r.lifecycle in ("new", "reactivated") or r.rfm_segment in ("potential_loyalists", "promising")
        if r.frequency > 0 and growing and (float(r.avg_basket) > med_basket or r.frequency > med_freq):
            return "high_potential"
        return "other"

    df["value_tier"] = df.apply(tier, axis=1)
    return df.sort_index()


def stored_scores(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(select(CustomerScore)).all()).set_index("customer_id").sort_index()


def assert_scores_match(engine, cfg, as_of):
    want, got = expected_scores(engine, cfg, as_of), stored_scores(engine)
    assert list(got.index) == list(want.index)
    for col in ("orders", "frequency", "monetary", "avg_basket", "recency_days", "tenure_days", "r_score",
                "f_score", "m_score", "rfm_segment", "lifecycle", "value_tier"):
        a = [None if pd.isna(v) else v for v in got[col]]
        b = [None if pd.isna(v) else v for v in want[col]]
        assert a == b, col


# --- generated data: everything at once ------------------------------------------------------

def test_scores_match_pandas_on_generated_data(engine, seg_cfg, landing):
    generate(landing, customers=300, days=120, start=date(2025, 12, 1), seed=11)
    ingest_dates(engine, seg_cfg, all_dates(landing))
    # A few nights in a row, then the last generated day: each night's history diff and
    # sizes must leave exactly the memberships the scores say.
    for day in (date(2026, 3, 10), date(2026, 3, 20), date(2026, 3, 25)):
        nightly = segments.recompute(engine, seg_cfg, day)
        assert_sizes_are_counts(engine, nightly)
    as_of = date(2026, 3, 30)  # the last generated day
    result = segments.recompute(engine, seg_cfg, as_of)
    assert result.source == "metrics"
    assert_scores_match(engine, seg_cfg, as_of)
    assert_sizes_are_counts(engine, result)
    scores = stored_scores(engine)
    for family, column in (("rfm", "rfm_segment"), ("lifecycle", "lifecycle"), ("value", "value_tier")):
        for value in scores[column].dropna().unique():
            assert members(engine, f"{family}:{value}") == set(scores.index[scores[column] == value])
    families = {}
    for s in result.segments:
        families[s.family] = families.get(s.family, 0) + s.size
    # Every profile is in exactly one lifecycle stage and one value tier; scored ones in one RFM segment.
    assert families["lifecycle"] == families["value"] == result.customers
    assert families["rfm"] == result.scored
    assert {s.name for s in result.segments if s.family == "lifecycle" and s.size} >= {
        "lifecycle:new", "lifecycle:active", "lifecycle:prospect"}

    # Looking back: a rescan of purchases up to an earlier cutoff, checked the same way.
    earlier = date(2026, 2, 15)
    back = segments.recompute(engine, seg_cfg, earlier, dry_run=True)
    assert back.source == "purchases"


def test_both_sources_and_a_window_agree_with_pandas(engine, seg_cfg, landing):
    generate(landing, customers=120, days=60, start=date(2026, 1, 1), seed=4)
    ingest_dates(engine, seg_cfg, all_dates(landing))
    as_of = date(2026, 3, 1)
    segments.recompute(engine, seg_cfg, as_of, source="metrics")
    from_metrics = stored_scores(engine)
    segments.recompute(engine, seg_cfg, as_of, source="purchases")
    pd.testing.assert_frame_equal(stored_scores(engine), from_metrics)

    earlier = date(2026, 1, 31)
    segments.recompute(engine, seg_cfg, earlier)
    assert_scores_match(engine, seg_cfg, earlier)

    windowed = _with(seg_cfg, window_days=21)
    result = segments.recompute(engine, windowed, as_of)
    assert result.source == "purchases"
    assert_scores_match(engine, windowed, as_of)


# --- hand-made timelines: exact boundaries ------------------------------------------------------

def test_quintile_boundaries_and_ties(engine, seg_cfg, landing):
    # Ten customers with monetary 10..100, two of them tied at 50; all bought on the same day.
    amounts = [10, 20, 30, 40, 50, 50, 70, 80, 90, 100]
    ids = [f"Q{i:02d}" for i in range(10)]
    load_day(engine, seg_cfg, landing,
          [purchase(f"T{i}", cid, "2026-03-20T10:00:00+05:30", f"{a}.00") for i, (cid, a) in enumerate(zip(ids, amounts))],
          [customer(cid) for cid in ids])
    segments.recompute(engine, seg_cfg, AS_OF)
    got = stored_scores(engine)
    # rank (ties share the lowest): 1,2,3,4,5,5,7,8,9,10 -> 1 + 5*(rank-1)//10
    assert list(got.loc[ids, "m_score"]) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Everyone tied on recency and frequency: one score for all, the lowest.
    assert set(got["r_score"]) == {1} and set(got["f_score"]) == {1}
    # Top 10% by monetary: one customer.
    assert list(got.index[got["value_tier"] == "high_value"]) == ["Q09"]
    assert_scores_match(engine, seg_cfg, AS_OF)


def test_refunds_currencies_and_one_time_buyers(engine, seg_cfg, landing):
    load_day(engine, seg_cfg, landing, [
        purchase("A1", "ONE", "2026-03-30T23:59:59+05:30", "100.00"),  # the day before
        purchase("B1", "REF", "2026-03-10T10:00:00+05:30", "-40.00"),  # a refund only: not a buyer
        purchase("C1", "MIX", "2026-03-01T10:00:00+05:30", "1000.00", currency="PKR"),  # 300 INR at 0.30
        purchase("C2", "MIX", "2026-03-05T10:00:00+05:30", "50.00"),
        purchase("C3", "MIX", "2026-03-06T10:00:00+05:30", "-20.00"),  # refunds lower monetary
        purchase("D1", "NET", "2026-03-31T00:00:00+05:30", "0.00"),  # a free item; first second of the day
        purchase("E1", "LATE", "2026-04-01T00:00:00+05:30", "10.00"),  # after the cutoff: not counted
    ], [customer(c) for c in ("ONE", "REF", "MIX", "NET", "LATE", "NONE")])
    # A rule's day count and the recency score count days the same way.
    (seg_cfg.segments.folder / "yesterday.yaml").write_text(
        "name: bought_yesterday\nrule: {field: last_purchase_at, days_ago: {eq: 1}}\n")
    result = segments.recompute(engine, seg_cfg, AS_OF)
    assert result.source == "purchases"  # a purchase after the cutoff: the totals are rescanned
    got = stored_scores(engine)
    assert got.loc["MIX", "monetary"] == Decimal("330.0000")
    assert got.loc["MIX", "frequency"] == 2
    assert got.loc["MIX", "avg_basket"] == Decimal("165.0000")
    assert got.loc["REF", "lifecycle"] == "prospect" and pd.isna(got.loc["REF", "r_score"])
    assert got.loc["REF", "monetary"] == Decimal("-40.0000")
    assert got.loc["NONE", "lifecycle"] == "prospect" and got.loc["NONE", "value_tier"] == "other"
    assert got.loc["NET", "recency_days"] == 0 and got.loc["ONE", "recency_days"] == 1
    assert got.loc["LATE", "lifecycle"] == "prospect"
    assert result.customers == 6 and result.scored == 3  # ONE, MIX and NET
    assert members(engine, "bought_yesterday") == set(got.index[got["recency_days"] == 1]) == {"ONE"}
    assert_scores_match(engine, seg_cfg, AS_OF)


def test_lifecycle_stages(engine, seg_cfg, landing):
    # Defaults: new_days 30, churn_days 180, at risk beyond max(30, 2 usual gaps), one order: gap 60.
    d = lambda n: (datetime(2026, 3, 31, 12, tzinfo=UTC) - timedelta(days=n)).isoformat()  # n days before AS_OF
    load_day(engine, seg_cfg, landing, [
        purchase("N1", "NEW", d(29)),  # first order 29 days ago: new
        purchase("O1", "OLDNEW", d(30)),  # 30 days ago, one order: active (not yet at risk)
        purchase("W1", "WEEKLY", d(70)), purchase("W2", "WEEKLY", d(63)), purchase("W3", "WEEKLY", d(56)),
        purchase("W4", "WEEKLY", d(49)), purchase("W5", "WEEKLY", d(42)),  # usual gap 7, silent 42: at risk
        purchase("S1", "SINGLE", d(121)),  # one order 121 days ago: > 2 x 60: at risk
        purchase("S2", "SINGLE2", d(120)),  # 120 days: not more than 2 x 60: active
        purchase("G1", "GONE", d(180)),  # 180 days: churned
        purchase("R1", "BACK", d(400)), purchase("R2", "BACK", d(200)), purchase("R3", "BACK", d(10)),  # reactivated
        purchase("X1", "NOTBACK", d(300)), purchase("X2", "NOTBACK", d(130)), purchase("X3", "NOTBACK", d(5)),
    ], [customer(c) for c in ("NEW", "OLDNEW", "WEEKLY", "SINGLE", "SINGLE2", "GONE", "BACK", "NOTBACK", "PROS")])
    segments.recompute(engine, seg_cfg, AS_OF)
    got = stored_scores(engine)["lifecycle"].to_dict()
    assert got == {
        "NEW": "new", "OLDNEW": "active", "WEEKLY": "at_risk", "SINGLE": "at_risk", "SINGLE2": "active",
        "GONE": "churned", "BACK": "reactivated", "NOTBACK": "active", "PROS": "prospect",
    }
    assert_scores_match(engine, seg_cfg, AS_OF)
    assert members(engine, "lifecycle:reactivated") == {"BACK"}


def test_missing_exchange_rate_names_the_currency(engine, seg_cfg, landing):
    load_day(engine, seg_cfg, landing, [purchase("U1", "C1", currency="USD")], [customer("C1")])
    with pytest.raises(ConfigError, match=r"USD \(1 customers\).*segments.exchange_rates"):
        segments.recompute(engine, seg_cfg, AS_OF)
    with engine.connect() as conn:
        assert conn.execute(select(SegmentRun)).first() is None


# --- history ----------------------------------------------------------------------------------------

def test_a_broken_definition_does_not_stop_the_others(engine, seg_cfg, landing):
    folder: Path = seg_cfg.segments.folder
    (folder / "big.yaml").write_text(
        "name: big_spenders\ndescription: Spent 150 or more\nrule: {field: monetary, gte: 150}\n")
    (folder / "new.yaml").write_text("name: new_ones\nrule: {in_segment: \"lifecycle:new\"}\n")
    (folder / "champs.yaml").write_text(
        "name: big_recent\nrule:\n  all:\n    - in_segment: big_spenders\n    - {field: recency_days, lte: 10}\n")
    load_day(engine, seg_cfg, landing, [
        purchase("A1", "AMY", "2026-03-30T10:00:00+05:30", "200.00"),
        purchase("B1", "BEN", "2026-01-01T10:00:00+05:30", "500.00"),
        purchase("C1", "CAL", "2026-03-30T10:00:00+05:30", "20.00"),
    ], [customer("AMY"), customer("BEN"), customer("CAL")])
    first = segments.recompute(engine, seg_cfg, AS_OF)
    assert first.problems == []
    assert members(engine, "big_spenders") == {"AMY", "BEN"}
    assert members(engine, "big_recent") == {"AMY"}
    assert members(engine, "new_ones") == members(engine, "lifecycle:new") == {"AMY", "CAL"}

    # Break the first file: its membership (and that of the segment built on it) is carried
    # forward unchanged, the run reports the file, and the built-ins are still computed.
    (folder / "big.yaml").write_text("name: big_spenders\nrule: {field: monetry, gte: 150}\n")
    second = segments.recompute(engine, seg_cfg, AS_OF + timedelta(days=1))
    assert any("big.yaml" in p and "monetary" in p for p in second.problems)
    assert members(engine, "big_spenders") == {"AMY", "BEN"}
    assert members(engine, "big_recent") == {"AMY"}
    assert members(engine, "lifecycle:new") == {"AMY", "CAL"}
    assert_sizes_are_counts(engine, second)
    status = {s.name: s.status for s in second.segments}
    assert status["big_spenders"] == "invalid" and status["big_recent"] == "invalid"


def test_an_unreadable_file_keeps_its_segment_and_a_bad_name_stops_nothing(engine, seg_cfg, landing):
    folder: Path = seg_cfg.segments.folder
    (folder / "big.yaml").write_text("name: big_spenders\nrule: {field: monetary, gte: 150}\n")
    load_day(engine, seg_cfg, landing, [purchase("A1", "AMY", "2026-03-30T10:00:00+05:30", "200.00")],
          [customer("AMY")])
    segments.recompute(engine, seg_cfg, AS_OF)
    assert members(engine, "big_spenders") == {"AMY"}
    # Not even YAML any more, and a second file with a name too long for any column.
    (folder / "big.yaml").write_text("name: [big_spenders\nrule: {")
    (folder / "long.yaml").write_text(f"name: {'x' * 80}\nrule: {{field: monetary, gte: 1}}\n")
    later = segments.recompute(engine, seg_cfg, AS_OF + timedelta(days=1))
    assert members(engine, "big_spenders") == {"AMY"}  # carried forward, not retired
    assert {s.name: s.status for s in later.segments}["big_spenders"] == "invalid"
    assert any("long.yaml" in p for p in later.problems) and any("big.yaml" in p for p in later.problems)


def test_conversion_is_exact_and_the_same_on_both_dialects(engine, seg_cfg, landing):
    # 7.00 PKR at 0.33335 is 2.33345 INR exactly: half a unit of 1/10000, which binary
    # floating point cannot hold; rounded away from zero on both dialects.
    cfg = _with(seg_cfg, exchange_rates={"INR": Decimal(1), "PKR": Decimal("0.33335")})
    load_day(engine, cfg, landing, [purchase("P1", "PAK", "2026-03-30T10:00:00+05:30", "7.00", currency="PKR"),
                                 purchase("P2", "NEG", "2026-03-30T10:00:00+05:30", "-7.00", currency="PKR")],
          [customer("PAK"), customer("NEG")])
    segments.recompute(engine, cfg, AS_OF)
    got = stored_scores(engine)
    assert got.loc["PAK", "monetary"] == Decimal("2.3335")
    assert got.loc["NEG", "monetary"] == Decimal("-2.3335")


def test_two_recomputes_at_once_are_serialised(engine, seg_cfg, landing, db_url):
    from concurrent.futures import ThreadPoolExecutor

    load_day(engine, seg_cfg, landing, [purchase("A1", "AMY", "2026-03-30T10:00:00+05:30")], [customer("AMY")])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: segments.recompute(engine, seg_cfg, AS_OF), range(2)))
    assert [r.customers for r in results] == [1, 1]
    with engine.connect() as conn:
        assert conn.execute(select(SegmentRun.as_of)).scalars().all() == [AS_OF]
    assert_sizes_are_counts(engine, results[-1])


def _scans_per_row(node: dict, table: str) -> list[str]:
    """The sequential scans of ``table`` that a nested loop repeats for every outer row: on its inner
    side, not under a Materialize or Hash (those read the table once)."""
    def inner_scans(n: dict) -> list[str]:
        if n["Node Type"] in ("Materialize", "Hash"):
            return []
        here = [f"Seq Scan on {table}"] if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == table else []
        return here + [x for c in n.get("Plans", []) for x in inner_scans(c)]

    found = []
    for child in node.get("Plans", []):
        if node["Node Type"] == "Nested Loop" and child.get("Parent Relationship") == "Inner":
            found += inner_scans(child)
        found += _scans_per_row(child, table)
    return found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_history_write_is_planned_as_a_scan_per_row_on_a_fresh_postgresql(engine, seg_cfg, landing):
    """A fresh database's first recompute once ran 24 minutes at 200k customers: the history insert's
    probe of open memberships became a nested loop over the (growing, index-less) history table. Every
    statement that writes the history is explained at the moment it runs, first night and next."""
    from sqlalchemy import event

    (seg_cfg.segments.folder / "big.yaml").write_text("name: big_spenders\nrule: {field: monetary, gte: 150}\n")
    load_day(engine, seg_cfg, landing, [purchase(f"T{i}", f"C{i}", "2026-03-30T10:00:00+05:30", f"{100 + i}.00")
                                        for i in range(40)], [customer(f"C{i}") for i in range(40)])
    plans: list[tuple[str, list]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith(("INSERT INTO segment_memberships", "UPDATE segment_memberships")):
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plans.append((" ".join(statement.split())[:120], cursor.fetchone()[0][0]["Plan"]))

    segments.recompute(engine, seg_cfg, AS_OF)
    first = len(plans)
    segments.recompute(engine, seg_cfg, AS_OF + timedelta(days=1))
    assert first >= 2 and len(plans) > first  # built-in and custom writes, on both nights
    bad = [(what, _scans_per_row(plan, "segment_memberships")) for what, plan in plans]
    assert [b for b in bad if b[1]] == [], "\n".join(f"{w}: {s}" for w, s in bad if s)
