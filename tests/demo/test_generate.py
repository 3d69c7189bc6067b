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
