"""Demo data: deterministic, multi-locale, valid where not deliberately damaged."""

from __future__ import annotations

import hashlib
from datetime import date

import pandas as pd
import phonenumbers

from crm_tasks.demo.generate import generate


def digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.csv")):
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files(tmp_path):
    generate(tmp_path / "a", customers=60, days=5, seed=11, bad_rows=0.05)
    generate(tmp_path / "b", customers=60, days=5, seed=11, bad_rows=0.05)
    generate(tmp_path / "c", customers=60, days=5, seed=12, bad_rows=0.05)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_customers_are_multi_locale_with_valid_contacts(tmp_path):
    generate(tmp_path, customers=600, days=2, start=date(2026, 1, 1), seed=1)
    frame = pd.read_csv(tmp_path / "customers" / "dt=2026-01-01" / "customers.csv", dtype=str,
                        keep_default_na=False)
    assert set(frame["locale"]) == {"en-IN", "hi-IN", "te-IN", "fa-IR", "ur-PK"}
    scripts = {
        "hi-IN": ("\u0900", "\u097f"), "te-IN": ("\u0c00", "\u0c7f"),
        "fa-IR": ("\u0600", "\u06ff"), "ur-PK": ("\u0600", "\u06ff"),
    }
    for loc, (lo, hi) in scripts.items():
        names = frame.loc[frame["locale"] == loc, "first_name"]
        assert all(lo <= ch <= hi for name in names for ch in name), loc
    for phone, country in zip(frame["phone"], frame["country"]):
        if phone:
            assert phonenumbers.is_valid_number(phonenumbers.parse(phone, country)), (phone, country)
    assert (frame["birthday"].str.endswith("-02-29")).any()


def test_habits_are_heavy_tailed(tmp_path):
    generate(tmp_path, customers=500, days=120, start=date(2026, 1, 1), seed=2)
    purchases = pd.concat(pd.read_csv(p, dtype=str) for p in (tmp_path / "purchases").rglob("*.csv"))
    per_customer = purchases.groupby("customer_id").size().sort_values(ascending=False)
    top_tenth = per_customer.head(len(per_customer) // 10).sum()
    assert top_tenth / per_customer.sum() > 0.3  # a few heavy buyers
    assert (purchases["amount"].str.startswith("-")).mean() > 0.005  # refunds exist


def test_the_catalogue_is_named_in_every_language_with_https_links_and_prices(tmp_path):
    summary = generate(tmp_path, customers=50, days=3, start=date(2026, 1, 1), seed=5)
    frame = pd.read_csv(tmp_path / "products" / "dt=2026-01-01" / "products.csv", dtype=str, keep_default_na=False)
    assert summary.products == len(frame) == frame["sku"].nunique() == 200
    assert frame["url"].str.startswith("https://").all() and frame["image_url"].str.startswith("https://").all()
    assert (frame["price"].str.fullmatch(r"\d+\.\d\d")).all() and (frame["currency"] == "INR").all()
    scripts = {"name_hi": ("\u0900", "\u097f"), "name_te": ("\u0c00", "\u0c7f"),
               "name_fa": ("\u0600", "\u06ff"), "name_ur": ("\u0600", "\u06ff")}
    for column, (lo, hi) in scripts.items():
        letters = [ch for name in frame[column] for ch in name if ch.isalpha()]
        assert sum(lo <= ch <= hi for ch in letters) / len(letters) > 0.95, column
    assert {"true", "false"} == set(frame["in_stock"])
    purchases = pd.concat(pd.read_csv(p, dtype=str) for p in (tmp_path / "purchases").rglob("*.csv"))
    assert set(purchases["sku"]) <= set(frame["sku"])  # every sale is of a listed product...
    listed = frame.set_index("sku")["category"]
    assert (purchases["category"].to_numpy() == listed.loc[purchases["sku"]].to_numpy()).all()  # ...of its category


def test_the_catalogue_loads_without_a_quarantined_row(engine, cfg, landing):
    from crm_tasks.ingest.batches import all_dates, ingest_dates

    generate(landing, customers=40, days=3, start=date(2026, 1, 1), seed=5)
    result = ingest_dates(engine, cfg, all_dates(landing))
    products = [b for b in result.to_dict()["batches"] if b["source"] == "products"]
    assert [(b["rows_loaded"], b["rows_quarantined"]) for b in products] == [(200, 0)]


def test_on_the_demo_the_recommender_beats_the_best_sellers(engine, cfg, landing):
    from crm_tasks.analytics.recommendations import evaluate
    from crm_tasks.ingest.batches import all_dates, ingest_dates

    generate(landing, customers=300, days=120, start=date(2025, 12, 1), seed=7)
    ingest_dates(engine, cfg, all_dates(landing))
    result = evaluate(engine, cfg, 30)
    assert result.customers > 50
    assert result.model["hit_rate_at_5"] > result.popularity["hit_rate_at_5"]
    assert result.model["recall_at_10"] > result.popularity["recall_at_10"]
