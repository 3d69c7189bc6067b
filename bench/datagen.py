"""Vectorised generation of large landing files for the benchmarks (not the demo's generator:
that one models habits in detail; this one only has to be realistic in shape and fast)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = np.array(["grocery", "household", "beauty", "apparel", "electronics", "toys", "home", "sports"])
LOCALES = np.array(["en-IN", "hi-IN", "te-IN", "fa-IR", "ur-PK"])
COUNTRY = {"en-IN": "IN", "hi-IN": "IN", "te-IN": "IN", "fa-IR": "IR", "ur-PK": "PK"}
TZ = {"IN": "Asia/Kolkata", "IR": "Asia/Tehran", "PK": "Asia/Karachi"}
CURRENCY = {"IN": "INR", "IR": "IRR", "PK": "PKR"}
FIRST = np.array(["Aarav", "आरव", "శ్రీనివాస్", "علی", "احمد", "Ananya", "प्रिया", "లక్ష్మి", "زهرا", "عائشہ"])
LAST = np.array(["Sharma", "वर्मा", "రెడ్డి", "محمدی", "خان", "Iyer", "गुप्ता", "నాయుడు", "احمدی", "ملک"])


def customers_frame(n: int, day: date, seed: int = 1, start_id: int = 0, updated: str | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.arange(start_id, start_id + n)
    loc = LOCALES[rng.integers(0, len(LOCALES), n)]
    country = pd.Series(loc).map(COUNTRY).to_numpy()
    mobile = rng.integers(10**9, 2 * 10**9, n) % 10**9
    phone = np.where(country == "IN", "+919", np.where(country == "IR", "+98912", "+92300")).astype(object)
    digits = pd.Series(mobile).astype(str).str.zfill(9)
    phone = phone + np.where(country == "IN", digits, digits.str.slice(0, 7))
    stamp = updated or f"{day.isoformat()}T10:00:00+05:30"
    return pd.DataFrame({
        "customer_id": pd.Series(ids).map("C{:08d}".format),
        "first_name": FIRST[rng.integers(0, len(FIRST), n)],
        "last_name": LAST[rng.integers(0, len(LAST), n)],
        "email": pd.Series(ids).map("customer{}@example.com".format),
        "phone": phone,
        "birthday": (pd.Timestamp("1950-01-01") + pd.to_timedelta(rng.integers(0, 18000, n), unit="D")).strftime("%Y-%m-%d"),
        "locale": loc,
        "timezone": pd.Series(country).map(TZ).to_numpy(),
        "country": country,
        "email_consent": np.where(rng.random(n) < 0.85, "true", "false"),
        "created_at": "2024-01-01T10:00:00+05:30",
        "updated_at": stamp,
    })


def purchases_frame(n: int, customers: int, first_day: date, days: int, seed: int = 2, prefix: str = "H") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Heavy-tailed: a Pareto weight per customer, so a few buy often.
    who = np.minimum((rng.pareto(1.2, n) * customers / 20).astype(np.int64), customers - 1)
    who = rng.permutation(customers)[who]
    country = np.array(["IN", "IN", "IN", "IR", "PK"])[who % 5]
    cur = np.where(country == "IN", "INR", np.where(country == "IR", "IRR", "PKR"))
    seconds = rng.integers(0, days * 86400, n)
    ts = pd.Timestamp(first_day, tz="UTC") + pd.to_timedelta(np.sort(seconds), unit="s")
    amount = np.round(rng.lognormal(6.5, 0.8, n), 0)
    amount[rng.random(n) < 0.02] *= -1
    cat = rng.integers(0, len(CATEGORIES), n)
    return pd.DataFrame({
        "transaction_id": pd.Series(np.arange(n)).map((prefix + "{:09d}").format),
        "customer_id": pd.Series(who).map("C{:08d}".format),
        "purchased_at": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "amount": amount.astype(np.int64),
        "currency": cur,
        "store_id": pd.Series(who % 200).map("S{:03d}".format),
        "sku": pd.Series(cat * 1000 + rng.integers(0, 1000, n)).map("SKU-{:05d}".format),
        "category": CATEGORIES[cat],
        "quantity": rng.integers(1, 4, n),
        "coupon_code": np.where(rng.random(n) < 0.03, "WELCOME10", ""),
    })


def write(frame: pd.DataFrame, path: Path, chunk: int = 1_000_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for i in range(0, len(frame), chunk):
            frame.iloc[i:i + chunk].to_csv(fh, index=False, header=i == 0)


__all__ = ["customers_frame", "purchases_frame", "write"]
