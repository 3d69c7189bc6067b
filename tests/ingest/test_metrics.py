"""Customer metrics against an independent pandas computation on the same purchases."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import select

from crm_tasks.demo.generate import generate
from crm_tasks.ingest import metrics
from crm_tasks.ingest.batches import all_dates, ingest_dates
from crm_tasks.store.models import CustomerMetrics, Purchase
from tests.helpers import purchase, write_csv


def expected_metrics(engine) -> pd.DataFrame:
    """The metrics the README defines, computed with a plain pandas groupby."""
    with engine.connect() as conn:
        p = pd.DataFrame(conn.execute(select(
            Purchase.customer_id, Purchase.currency, Purchase.purchased_at, Purchase.amount,
            Purchase.quantity, Purchase.category,
        )).all())
    p["is_order"] = p["amount"] >= 0
    orders = p[p["is_order"]]
    g = p.groupby(["customer_id", "currency"])
    out = pd.DataFrame({
        "orders": g["is_order"].sum().astype(int),
        "refunds": (~p["is_order"]).groupby([p["customer_id"], p["currency"]]).sum().astype(int),
        "revenue": g["amount"].apply(lambda s: sum(s, Decimal(0))),
    })
    og = orders.groupby(["customer_id", "currency"])
    out["items"] = og["quantity"].sum().reindex(out.index).fillna(0).astype(int)
    out["first_purchase_at"] = og["purchased_at"].min().reindex(out.index)
    out["last_purchase_at"] = og["purchased_at"].max().reindex(out.index)
    cat = orders.groupby(["customer_id", "currency", "category"]).agg(
        n=("amount", "size"), rev=("amount", lambda s: sum(s, Decimal(0)))).reset_index()
    cat = cat.sort_values(["customer_id", "currency", "n", "rev", "category"],
                          ascending=[True, True, False, False, True])
    fav = cat.drop_duplicates(["customer_id", "currency"]).set_index(["customer_id", "currency"])["category"]
    out["favourite_category"] = fav.reindex(out.index)
    out["avg_basket"] = [
        (r / o).quantize(Decimal("0.0001"), rounding="ROUND_HALF_UP") if o else None
        for r, o in zip(out["revenue"], out["orders"])
    ]
    return out.sort_index()


def stored_metrics(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        m = pd.DataFrame(conn.execute(select(CustomerMetrics)).all())
    return m.set_index(["customer_id", "currency"]).sort_index()


def assert_metrics_match(engine) -> None:
    want, got = expected_metrics(engine), stored_metrics(engine)
    assert list(got.index) == list(want.index)
    for col in ("orders", "refunds", "items", "revenue", "favourite_category", "avg_basket",
                "first_purchase_at", "last_purchase_at"):
        a = [None if pd.isna(v) else v for v in got[col]]
        b = [None if pd.isna(v) else v for v in want[col]]
        assert a == b, col


def test_metrics_match_pandas_on_generated_nights(engine, cfg, landing):
    generate(landing, customers=150, days=40, start=date(2026, 1, 1), seed=3, bad_rows=0.0)
    # Night by night, as the DAG runs: metrics are maintained incrementally.
    ingest_dates(engine, cfg, all_dates(landing))
    assert_metrics_match(engine)
    with engine.connect() as conn:
        revenue = conn.execute(select(CustomerMetrics.revenue)).scalars().all()
        currencies = set(conn.execute(select(CustomerMetrics.currency)).scalars())
    assert currencies == {"INR", "IRR", "PKR"}
    assert all(isinstance(r, Decimal) for r in revenue)


def test_incremental_equals_full_rebuild_after_a_correction(engine, cfg, landing):
    generate(landing, customers=80, days=10, start=date(2026, 1, 1), seed=5)
    ingest_dates(engine, cfg, all_dates(landing))
    # A corrected file for day 3: every amount halved, one purchase removed.
    day3 = landing / "purchases" / "dt=2026-01-03" / "purchases.csv"
    frame = pd.read_csv(day3, dtype=str, keep_default_na=False)
    frame["amount"] = [str((Decimal(a) / 2).quantize(Decimal(1))) for a in frame["amount"]]
    frame.iloc[1:].to_csv(day3, index=False)
    ingest_dates(engine, cfg, [date(2026, 1, 3)])
    incremental = stored_metrics(engine)
    with engine.begin() as conn:
        metrics.mark_all_for_rebuild(conn)
        metrics.refresh(conn)
    pd.testing.assert_frame_equal(incremental, stored_metrics(engine))
    assert_metrics_match(engine)


def test_refunds_free_items_ties_and_exact_sums(engine, cfg, landing):
    day = date(2026, 3, 1)
    write_csv(landing, "purchases", day.isoformat(), [
        purchase("T1", amount="0.10", category="toys", at="2026-03-01T10:00:00Z"),
        purchase("T2", amount="0.20", category="books", at="2026-03-01T11:00:00Z"),
        purchase("T3", amount="0", category="books", at="2026-03-01T09:00:00Z"),  # free item: an order
        purchase("T4", amount="-0.05", category="toys", at="2026-03-01T12:00:00Z", quantity="-1"),  # refund
        purchase("T5", amount="10", currency="PKR", category="toys"),
        purchase("R1", customer="C2", amount="-5.00", category="toys"),  # only a refund
    ])
    ingest_dates(engine, cfg, [day])
    m = stored_metrics(engine)
    c1 = m.loc[("C1", "INR")]
    assert (c1["orders"], c1["refunds"], c1["items"]) == (3, 1, 3)
    assert c1.revenue == Decimal("0.25")  # 0.10 + 0.20 + 0 - 0.05, exactly
    assert c1.avg_basket == Decimal("0.0833")  # 0.25 / 3, half away from zero
    assert c1.favourite_category == "books"  # 2 orders against toys' 1
    assert c1.first_purchase_at.hour == 9 and c1.last_purchase_at.hour == 11  # refunds are not purchases
    assert m.loc[("C1", "PKR")].revenue == Decimal(10)
    c2 = m.loc[("C2", "INR")]
    assert c2.orders == 0 and pd.isna(c2.first_purchase_at) and c2.avg_basket is None
    assert_metrics_match(engine)


def test_average_basket_rounds_half_away_from_zero(engine, cfg, landing):
    # BHD has 3 decimals: 0.001 over 4 orders is 0.00025, exactly half a unit of the 4th decimal.
    write_csv(landing, "purchases", "2026-03-01", [
        purchase("A1", amount="0.001", currency="BHD"),
        *[purchase(f"A{i}", amount="0", currency="BHD") for i in range(2, 5)],
        *[purchase(f"B{i}", customer="C2", amount="0", currency="BHD") for i in range(4)],
        purchase("B9", customer="C2", amount="-0.001", currency="BHD", quantity="-1"),
    ])
    ingest_dates(engine, cfg, [date(2026, 3, 1)])
    m = stored_metrics(engine)
    assert m.loc[("C1", "BHD")].avg_basket == Decimal("0.0003")
    assert m.loc[("C2", "BHD")].avg_basket == Decimal("-0.0003")
    assert_metrics_match(engine)


def test_duplicates_fall_back_to_an_exact_rebuild(engine, cfg, landing):
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1", amount="10"), purchase("T2", amount="20")])
    ingest_dates(engine, cfg, [date(2026, 3, 1)])
    # T2 again (already loaded) and T3 twice: the chunk's delta would double count.
    write_csv(landing, "purchases", "2026-03-02", [
        purchase("T2", amount="20"), purchase("T3", amount="5", category="toys"),
        purchase("T3", amount="5", category="toys"), purchase("T4", customer="C2", amount="7"),
    ])
    (batch,) = ingest_dates(engine, cfg, [date(2026, 3, 2)]).batches
    assert (batch.rows_loaded, batch.rows_duplicate) == (2, 2)
    m = stored_metrics(engine)
    assert m.loc[("C1", "INR")]["orders"] == 3 and m.loc[("C1", "INR")]["revenue"] == Decimal(35)
    assert_metrics_match(engine)


def test_a_bulk_load_gets_the_same_metrics_as_pandas(engine, cfg, landing, monkeypatch):
    """A bulk load (secondary indexes dropped and rebuilt, purchases straight through COPY on PostgreSQL)
    over profiles that already had metrics: exact, on both dialects, with a duplicate inside."""
    from crm_tasks.ingest import batches as ingest

    write_csv(landing, "purchases", "2026-03-01", [purchase(f"A{i}", customer=f"C{i % 5}", amount="10.50")
                                                   for i in range(12)])
    ingest_dates(engine, cfg, [date(2026, 3, 1)])
    monkeypatch.setattr(ingest._PurchaseLoader, "BULK_MIN_ROWS", 1)
    monkeypatch.setattr(ingest._PurchaseLoader, "BYTES_PER_ROW", 1)
    bulk = [purchase(f"B{i}", customer=f"C{i % 9}", amount=f"{i}.25", at="2026-03-02T10:00:00+05:30")
            for i in range(60)]
    write_csv(landing, "purchases", "2026-03-02", [*bulk, purchase("B3", customer="C3", amount="999")])
    (batch,) = ingest_dates(engine, cfg, [date(2026, 3, 2)]).batches
    assert (batch.rows_loaded, batch.rows_duplicate) == (60, 1)
    assert_metrics_match(engine)


@pytest.mark.parametrize("hold_keys", [8_000_000, 5], ids=["held to the end", "written on the way"])
def test_a_first_bulk_load_gets_the_same_metrics_as_pandas_and_as_sql(engine, cfg, landing, monkeypatch, hold_keys):
    """A first load into empty metrics (PostgreSQL derives customer metrics from the whole delta before
    writing it, instead of in SQL; or, past HOLD_KEYS, upserts on the way and derives in SQL): ties,
    refunds only, free items, half-way averages, several currencies, deltas merged across chunks. The
    stored metrics equal both pandas' and an exact rebuild in SQL."""
    from crm_tasks.ingest import batches as ingest

    monkeypatch.setattr(ingest._PurchaseLoader, "HOLD_KEYS", hold_keys)
    monkeypatch.setattr(ingest._PurchaseLoader, "BULK_MIN_ROWS", 1)
    monkeypatch.setattr(ingest._PurchaseLoader, "BYTES_PER_ROW", 1)
    monkeypatch.setattr(ingest._PurchaseLoader, "MERGE_EVERY", 2)
    cfg = cfg.model_copy(update={"chunk_rows": 1000})  # three chunks, merged on the way
    rows = [purchase(f"B{i}", customer=f"C{i % 9}", amount=f"{i}.25", category=("toys", "books", "Äpfel")[i % 3],
                     at=f"2026-03-0{1 + i % 2}T10:{i % 60:02d}:00+05:30") for i in range(2400)]
    rows += [
        purchase("T1", customer="TIE", amount="5", category="zebra"),  # a tie: orders and revenue equal,
        purchase("T2", customer="TIE", amount="5", category="Zebra"),  # the first by code point wins
        purchase("R1", customer="REF", amount="-5.00", category="toys", quantity="-1"),  # only a refund
        purchase("F1", customer="FREE", amount="0", category="toys"),  # a free item is an order
        purchase("H1", customer="HALF", amount="0.001", currency="BHD"),  # 0.00025: half away from zero
        *[purchase(f"H{i}", customer="HALF", amount="0", currency="BHD") for i in range(2, 5)],
        *[purchase(f"N{i}", customer="NEG", amount="0", currency="BHD") for i in range(4)],
        purchase("N9", customer="NEG", amount="-0.001", currency="BHD", quantity="-1"),
        purchase("P1", customer="C1", amount="10", currency="PKR", category="books"),
    ]
    write_csv(landing, "purchases", "2026-03-02", rows)
    (batch,) = ingest_dates(engine, cfg, [date(2026, 3, 2)]).batches
    # (No duplicate: its customers' metrics would be rebuilt in SQL; test_a_bulk_load... covers that.)
    assert (batch.rows_loaded, batch.rows_duplicate) == (len(rows), 0)
    assert_metrics_match(engine)
    m = stored_metrics(engine)
    assert m.loc[("TIE", "INR")].favourite_category == "Zebra"
    assert m.loc[("HALF", "BHD")].avg_basket == Decimal("0.0003")
    assert m.loc[("NEG", "BHD")].avg_basket == Decimal("-0.0003")
    assert pd.isna(m.loc[("REF", "INR")].favourite_category) and m.loc[("REF", "INR")].avg_basket is None
    loaded = stored_metrics(engine)
    with engine.begin() as conn:
        metrics.mark_all_for_rebuild(conn)
        metrics.refresh(conn)
    pd.testing.assert_frame_equal(loaded, stored_metrics(engine))
    from crm_tasks.store.models import CustomerDaysDirty
    with engine.connect() as conn:
        queued = set(conn.execute(select(CustomerDaysDirty.customer_id)).scalars())
    assert queued == {c for c, _ in m.index}
