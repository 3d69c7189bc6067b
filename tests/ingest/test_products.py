"""The product catalogue landing contract (products/dt=YYYY-MM-DD), on SQLite and PostgreSQL: reconciliation,
quarantine with line and reason, idempotent re-runs, corrected files, the latest version winning, both file
formats, and purchases of SKUs the catalogue does not list yet."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from crm_tasks.errors import IngestFailed
from crm_tasks.ingest.batches import all_dates, format_report, ingest_dates
from crm_tasks.store.models import IngestBatch, Product, Purchase, QuarantinedRow
from tests.helpers import purchase, rows, write_csv

DAY = "2026-03-01"
D = date(2026, 3, 1)
PRODUCT_HEADER = ["sku", "name", "category", "price", "currency", "url", "image_url", "in_stock", "updated_at",
                  "brand", "name_hi", "name_te", "name_fa", "name_ur"]


def product(sku: str, name: str = "Basmati rice 5 kg", category: str = "grocery", price: str = "499.00",
            currency: str = "INR", url: str = "", image_url: str = "", in_stock: str = "true",
            updated: str = "2026-03-01T08:00:00+05:30", brand: str = "", **names: str) -> dict[str, str]:
    """One catalogue row; links default to the shop's https pages for the SKU."""
    row = dict(zip(PRODUCT_HEADER, [
        sku, name, category, price, currency, url or f"https://shop.example.in/p/{sku}",
        image_url or f"https://cdn.example.in/img/{sku}.jpg", in_stock, updated, brand, "", "", "", ""]))
    row.update(names)
    return row


def load(engine, cfg, days=(D,)):
    """Ingest the catalogue alone (a night with only products/ would otherwise miss its nightly input)."""
    return ingest_dates(engine, cfg, list(days), ["products"])


def products(engine) -> dict:
    """The stored catalogue by SKU (rows with the columns as attributes)."""
    return {p.sku: p for p in rows(engine, Product)}


def count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def quarantine(engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return conn.execute(select(QuarantinedRow.line_no, QuarantinedRow.reason)
                            .order_by(QuarantinedRow.line_no)).all()


def test_a_good_file_loads_and_reconciles(engine, cfg, landing):
    write_csv(landing, "products", DAY, [
        product("SKU-1", brand="Daawat", name_hi="बासमती चावल 5 किलो", name_te="బాస్మతి బియ్యం",
                name_fa="برنج باسماتی", name_ur="باسمتی چاول"),
        product("SKU-2", name="  Steel tiffin  ", category="kitchen", price="1249.5", in_stock="no"),
        product("SKU-3", price="0", currency="usd", in_stock="1", updated="2026-03-01T02:30:00"),
    ])
    (batch,) = load(engine, cfg).batches
    assert (batch.source, batch.status, batch.rows_read, batch.rows_loaded, batch.rows_quarantined,
            batch.rows_duplicate) == ("products", "loaded", 3, 3, 0, 0)
    assert batch.reconciles
    got = products(engine)
    rice, tiffin, free = got["SKU-1"], got["SKU-2"], got["SKU-3"]
    assert (rice.name, rice.brand, rice.name_hi, rice.name_fa, rice.name_ur) == (
        "Basmati rice 5 kg", "Daawat", "बासमती चावल 5 किलो", "برنج باسماتی", "باسمتی چاول")
    assert rice.price == Decimal("499.0000") and rice.currency == "INR" and rice.in_stock is True
    assert rice.url == "https://shop.example.in/p/SKU-1"
    assert rice.updated_at == datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
    assert rice.batch_id == batch.batch_id
    # Trimmed, exact, and optional columns left empty are NULL, not "".
    assert (tiffin.name, tiffin.price, tiffin.in_stock, tiffin.brand, tiffin.name_hi) == (
        "Steel tiffin", Decimal("1249.5000"), False, None, None)
    assert (free.price, free.currency, free.in_stock) == (Decimal("0.0000"), "USD", True)
    assert free.updated_at == datetime(2026, 3, 1, 2, 30, tzinfo=UTC)  # no offset: UTC
    with engine.connect() as conn:
        stored = conn.execute(select(IngestBatch.source, IngestBatch.rows_read, IngestBatch.rows_loaded)).all()
    assert stored == [("products", 3, 3)]


def test_bad_rows_are_quarantined_with_line_and_reason(engine, cfg, landing):
    good = [product(f"G{i}") for i in range(220)]  # enough good rows to stay under the reject threshold
    write_csv(landing, "products", DAY, [
        product("B1", url="http://shop.example.in/p/B1"),  # line 2
        product("B2", name=""),  # line 3
        product("B3", price="-1.00"),  # line 4
        product("B4", currency="RUPEE"),  # line 5
        product("B5", in_stock="maybe"),  # line 6
        product("B6", updated="yesterday"),  # line 7
        product("B7", image_url="https:///no-host.jpg"),  # line 8
        product("B8", price="12,50"),  # line 9
        product("B9", price="10.005"),  # line 10: INR has 2 decimals
        product("", updated=""),  # line 11
        product("B10", url="https://user@evil.example/p/B10"),  # line 12: a host in disguise
    ] + good)
    report = load(engine, cfg)
    (batch,) = report.batches
    assert (batch.rows_read, batch.rows_loaded, batch.rows_quarantined) == (231, 220, 11)
    assert batch.reconciles
    assert quarantine(engine) == [
        (2, "url 'http://shop.example.in/p/B1' is not an https:// URL with a host"),
        (3, "name is missing"),
        (4, "price '-1.00' is negative; a price is 0 or more"),
        (5, "currency 'RUPEE' is not an ISO 4217 code"),
        (6, "in_stock 'maybe' is not true or false"),
        (7, "updated_at 'yesterday' is not an ISO 8601 timestamp"),
        (8, "image_url 'https:///no-host.jpg' is not an https:// URL with a host"),
        (9, "price '12,50' is not a decimal number (use '.' for decimals, no thousands separators)"),
        (10, "price has more decimal places than currency 'INR' allows"),
        (11, "sku is missing; updated_at is missing"),
        (12, "url 'https://user@evil.example/p/B10' is not an https:// URL with a host"),
    ]
    assert set(products(engine)) == {f"G{i}" for i in range(220)}
    # What `crm ingest` prints names the line and the reason, with no product data beyond the offending value.
    assert "line 2: url 'http://shop.example.in/p/B1' is not an https:// URL" in format_report(report.to_dict())


def test_a_file_with_too_many_bad_rows_loads_nothing(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product(f"B{i}", url="ftp://x/y") for i in range(12)]
              + [product("G1")])
    with pytest.raises(IngestFailed, match="products/dt=2026-03-01/products.csv"):
        load(engine, cfg)
    assert count(engine, Product) == 0
    assert count(engine, QuarantinedRow) == 12


def test_a_missing_required_column_makes_the_file_unreadable(engine, cfg, landing):
    write_csv(landing, "products", DAY, [{k: v for k, v in product("SKU-1").items() if k != "image_url"}])
    with pytest.raises(IngestFailed, match="missing required column.*image_url"):
        load(engine, cfg)


def test_undeclared_columns_are_dropped_and_named(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product("SKU-1", supplier_margin="0.31")])
    (batch,) = load(engine, cfg).batches
    assert batch.dropped_columns == ["supplier_margin"]
    assert batch.rows_loaded == 1


def test_running_the_same_file_again_changes_nothing(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product("SKU-1"), product("SKU-2", price="x")])
    first = load(engine, cfg).batches[0]
    before = (products(engine), quarantine(engine), count(engine, IngestBatch))
    again = load(engine, cfg).batches[0]
    assert again.status == "unchanged" and again.batch_id == first.batch_id
    assert (again.rows_read, again.rows_loaded, again.rows_quarantined) == (2, 1, 1)
    after = (products(engine), quarantine(engine), count(engine, IngestBatch))
    assert {k: (p.price, p.batch_id) for k, p in after[0].items()} == {
        k: (p.price, p.batch_id) for k, p in before[0].items()}
    assert after[1:] == before[1:]


def test_a_corrected_file_replaces_its_earlier_version(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product("SKU-1", price="100"), product("SKU-2", currency="??")])
    first = load(engine, cfg).batches[0]
    # Same path, same updated_at, corrected price and currency: the correction wins.
    write_csv(landing, "products", DAY, [product("SKU-1", price="90"), product("SKU-2")])
    second = load(engine, cfg).batches[0]
    assert second.status == "loaded" and second.replaced_batch_id == first.batch_id
    assert (second.rows_read, second.rows_loaded, second.rows_quarantined) == (2, 2, 0)
    got = products(engine)
    assert got["SKU-1"].price == Decimal("90.0000") and "SKU-2" in got
    assert quarantine(engine) == []  # the earlier version's rejects went with it
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(IngestBatch.id, IngestBatch.status)).all())
    assert statuses == {first.batch_id: "replaced", second.batch_id: "loaded"}


def test_the_latest_updated_at_wins_across_nights_and_within_a_file(engine, cfg, landing):
    write_csv(landing, "products", "2026-03-01", [
        product("SKU-1", price="100", updated="2026-03-01T10:00:00Z"),
        product("SKU-2", price="50", updated="2026-03-01T10:00:00Z"),
    ])
    write_csv(landing, "purchases", "2026-03-01", [purchase("T1")])
    # Night two: a newer SKU-1, an older SKU-2 (a late export), and two versions of SKU-3 in one file.
    write_csv(landing, "products", "2026-03-02", [
        product("SKU-1", price="120", updated="2026-03-02T10:00:00Z", in_stock="false"),
        product("SKU-2", price="45", updated="2026-02-28T10:00:00Z"),
        product("SKU-3", price="7", updated="2026-03-02T11:00:00Z"),
        product("SKU-3", price="8", updated="2026-03-02T09:00:00Z"),
    ])
    write_csv(landing, "purchases", "2026-03-02", [purchase("T2", at="2026-03-02T09:00:00Z")])
    report = ingest_dates(engine, cfg, all_dates(landing))
    night_two = next(b for b in report.batches if b.file.startswith("products/dt=2026-03-02"))
    # The stale SKU-2 and the older SKU-3 line are read, counted as duplicates (superseded), not applied.
    assert (night_two.rows_read, night_two.rows_loaded, night_two.rows_duplicate) == (4, 2, 2)
    assert report.reconciles
    got = {sku: (p.price, p.in_stock) for sku, p in products(engine).items()}
    assert got == {"SKU-1": (Decimal("120.0000"), False), "SKU-2": (Decimal("50.0000"), True),
                   "SKU-3": (Decimal("7.0000"), True)}


def test_parquet_and_csv_both_load(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product("CSV-1")], name="a.csv")
    table = pa.table({
        "sku": ["PQ-1", "PQ-2"], "name": ["Kettle", "Mug"], "category": ["kitchen", "kitchen"],
        "price": pa.array([Decimal("1999.00"), Decimal("-3.00")], pa.decimal128(10, 2)),
        "currency": ["INR", "INR"],
        "url": ["https://shop.example.in/p/PQ-1", "https://shop.example.in/p/PQ-2"],
        "image_url": ["https://cdn.example.in/PQ-1.jpg", "https://cdn.example.in/PQ-2.jpg"],
        "in_stock": [True, False],
        "updated_at": pa.array([datetime(2026, 3, 1, 6, 0), datetime(2026, 3, 1, 6, 0)], pa.timestamp("us")),
        "name_te": ["కెటిల్", None],
    })
    path = landing / "products" / f"dt={DAY}" / "b.parquet"
    pq.write_table(table, path)
    report = load(engine, cfg)
    assert [(b.file.rsplit("/", 1)[1], b.rows_read, b.rows_loaded, b.rows_quarantined) for b in report.batches] == [
        ("a.csv", 1, 1, 0), ("b.parquet", 2, 1, 1)]
    got = products(engine)
    assert set(got) == {"CSV-1", "PQ-1"}
    kettle = got["PQ-1"]
    assert (kettle.price, kettle.in_stock, kettle.name_te, kettle.name_hi) == (
        Decimal("1999.0000"), True, "కెటిల్", None)
    assert kettle.updated_at == datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    # A Parquet row is numbered from 1 and kept as JSON of its columns.
    with engine.connect() as conn:
        line, raw, reason = conn.execute(select(QuarantinedRow.line_no, QuarantinedRow.raw_text,
                                                QuarantinedRow.reason)).one()
    assert line == 2 and '"PQ-2"' in raw and reason == "price '-3.00' is negative; a price is 0 or more"


def test_purchases_of_skus_the_catalogue_does_not_list_still_load(engine, cfg, landing):
    write_csv(landing, "products", DAY, [product("SKU-1")])
    write_csv(landing, "purchases", DAY, [
        purchase("T1"),  # the factory's SKU-1, listed
        ["T2", "C1", "2026-03-01T10:00:00+05:30", "10.00", "INR", "S1", "NOT-IN-CATALOGUE", "grocery", "1", ""],
    ])
    report = ingest_dates(engine, cfg, [D])
    assert [(b.source, b.rows_loaded, b.rows_quarantined) for b in report.batches] == [
        ("purchases", 2, 0), ("products", 1, 0)]
    with engine.connect() as conn:
        skus = set(conn.execute(select(Purchase.sku)).scalars())
    assert skus == {"SKU-1", "NOT-IN-CATALOGUE"}


def test_a_night_without_products_is_ordinary_but_products_alone_are_no_night(engine, cfg, landing):
    write_csv(landing, "purchases", DAY, [purchase("T1")])
    assert ingest_dates(engine, cfg, [D]).missing == []  # no catalogue that night: fine
    # A catalogue without purchases or profiles: the night is still missing its nightly input.
    write_csv(landing, "products", "2026-03-02", [product("SKU-1", updated="2026-03-02T08:00:00Z")])
    with pytest.raises(IngestFailed, match="no partition of customers or purchases for 2026-03-02") as caught:
        ingest_dates(engine, cfg, [date(2026, 3, 2)])
    # ... but the catalogue itself loaded, and a call for products alone reports no missing night.
    assert [b.status for b in caught.value.report.batches] == ["loaded"]
    assert ingest_dates(engine, cfg, [date(2026, 3, 2)], ["products"]).missing == []
    assert count(engine, Product) == 1


def test_crm_ingest_loads_the_catalogue_with_the_other_sources(use_settings, engine, landing):
    import json

    from click.testing import CliRunner

    from crm_tasks.cli import main

    write_csv(landing, "purchases", DAY, [purchase("T1")])
    write_csv(landing, "products", DAY, [product("SKU-1"), product("SKU-2", url="http://shop.example.in/")])
    out = CliRunner().invoke(main, ["ingest", "--date", DAY, "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert [(b["source"], b["rows_read"], b["rows_loaded"], b["rows_quarantined"]) for b in payload["batches"]] == [
        ("purchases", 1, 1, 0), ("products", 2, 1, 1)]
    assert payload["reconciles"] is True
    assert set(products(engine)) == {"SKU-1"}
