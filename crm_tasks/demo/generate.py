"""Deterministic demo data: a multi-locale loyalty customer base and its purchases,
written as landing partitions, optionally with realistic defects.

Habits are realistic enough to segment on later: spend rates are heavy-tailed
(few heavy buyers, many occasional ones), a quarter of customers stop buying at
some point, sales follow the week and the festival season, and each customer
has a favourite category.

The shop sells a catalogue (``products/`` on the first day, named in the five template
languages): per category five kinds of product in five price tiers. What a customer buys
next is often a complement of what they bought last (rice then dal, a phone then its case),
in the tier they usually buy, so that co-purchase recommendations have real structure to
find (``crm recommendations evaluate`` on the demo beats the best sellers).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

LOCALES = {
    # locale: (share, country, time zone, currency, UTC offset used in timestamps)
    "en-IN": (0.35, "IN", "Asia/Kolkata", "INR", "+05:30"),
    "hi-IN": (0.25, "IN", "Asia/Kolkata", "INR", "+05:30"),
    "te-IN": (0.15, "IN", "Asia/Kolkata", "INR", "+05:30"),
    "fa-IR": (0.12, "IR", "Asia/Tehran", "IRR", "+03:30"),
    "ur-PK": (0.13, "PK", "Asia/Karachi", "PKR", "+05:00"),
}
CATEGORIES = {
    # category: typical price in INR
    "grocery": 650, "household": 480, "beauty": 900, "apparel": 1800,
    "electronics": 6500, "toys": 1100, "home": 2400, "sports": 2100,
}
# Rough purchasing-power rates for realistic amounts in each currency.
PER_INR = {"INR": 1.0, "IRR": 500.0, "PKR": 3.3}
MONTH_FACTOR = [0.9, 0.85, 1.0, 0.95, 0.95, 0.9, 0.9, 1.0, 1.05, 1.35, 1.5, 1.2]
WEEKDAY_FACTOR = [0.85, 0.85, 0.9, 0.95, 1.1, 1.3, 1.25]
# Pakistani mobile prefixes that libphonenumber accepts (Jazz, Zong, Warid, Ufone, Telenor).
PK_MOBILE_PREFIXES = ["300", "301", "302", "303", "305", "306", "307", "308", "309", "310", "311", "312",
                      "313", "314", "315", "320", "321", "322", "323", "330", "331", "332", "333", "334",
                      "335", "336", "340", "341", "342", "343", "344", "345", "346", "347"]
DOMAINS = np.array(["example.com", "example.in", "example.org", "mail.example.net"])
KINDS_PER_CATEGORY, TIERS = 5, 5
KIND_WEIGHTS = [0.32, 0.24, 0.18, 0.14, 0.12]  # a category's best seller first
TIER_FACTOR = [0.6, 0.85, 1.0, 1.4, 2.0]  # price of each tier against the kind's
TIER_WEIGHTS = [0.3, 0.3, 0.2, 0.12, 0.08]  # a customer's usual tier
USUAL_TIER = 0.6  # share of purchases in the customer's usual tier
COMPLEMENT = 0.45  # share of a returning customer's purchases that complement their last one
SHOP = "https://shop.example.com"


@dataclass
class GenerateSummary:
    out: str
    customers: int = 0
    purchases: int = 0
    products: int = 0
    files: int = 0
    start: str = ""
    end: str = ""
    bad_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _names() -> dict:
    return json.loads((Path(__file__).parent / "data" / "names.json").read_text(encoding="utf-8"))


def generate(
    out: Path, customers: int = 2000, days: int = 365, start: date = date(2025, 11, 1),
    seed: int = 7, bad_rows: float = 0.0,
) -> GenerateSummary:
    rng = np.random.default_rng(seed)
    out = Path(out)
    summary = GenerateSummary(str(out), start=start.isoformat(), end=(start + timedelta(days=days - 1)).isoformat())
    people = _customers(rng, customers, start, days)
    summary.customers = len(people)
    defects: dict[str, int] = {}

    # Profiles: the existing base lands on the first day, newcomers on their join
    # day, and a trickle of profile updates (consent changes, new phones) after.
    joined_day = people.pop("_join_day")
    updates = rng.random(len(people)) < 0.05
    update_day = rng.integers(1, max(days, 2), len(people))
    for d in range(days):
        day = start + timedelta(days=d)
        rows = people[joined_day == d]
        upd = people[updates & (update_day == d) & (joined_day < d)].copy()
        if len(upd):
            upd["email_consent"] = ~upd["email_consent"]
            upd["updated_at"] = f"{day.isoformat()}T11:00:00+05:30"
        frame = pd.concat([rows, upd])
        if len(frame):
            _write(out / "customers" / f"dt={day.isoformat()}" / "customers.csv", _customer_csv(frame),
                   rng, bad_rows, "customers", defects)
            summary.files += 1

    rate, stop_day, fav, currency, offset = _habits(rng, people, joined_day, days)
    cat_names = np.array(list(CATEGORIES))
    # The catalogue and the choice of products draw from their own stream: the rest of the data keeps its shape.
    prng = np.random.default_rng([seed, 1])
    catalogue = _catalogue(prng, start)
    summary.products = len(catalogue)
    products_csv = out / "products" / f"dt={start.isoformat()}" / "products.csv"
    products_csv.parent.mkdir(parents=True, exist_ok=True)
    products_csv.write_text(catalogue.to_csv(index=False), encoding="utf-8")
    summary.files += 1
    price_inr = catalogue["price"].astype(float).to_numpy()
    skus = catalogue["sku"].to_numpy()
    complements = _complement_table()
    usual_tier = prng.choice(TIERS, len(people), p=TIER_WEIGHTS)
    last = np.full(len(people), -1)  # each customer's last product
    seq = 0
    for d in range(days):
        day = start + timedelta(days=d)
        season = MONTH_FACTOR[day.month - 1] * WEEKDAY_FACTOR[day.weekday()]
        active = (joined_day <= d) & (d < stop_day)
        counts = rng.poisson(rate * season * active)
        who = np.repeat(np.arange(len(people)), counts)
        n = len(who)
        if not n:
            continue
        cat = np.where(rng.random(n) < 0.7, fav[who], rng.integers(0, len(cat_names), n))
        product = _choose(prng, cat, who, usual_tier, last, complements)
        last[who] = product
        cat = product // (KINDS_PER_CATEGORY * TIERS)
        qty = rng.choice([1, 1, 1, 2, 2, 3, 4], n)
        cur = currency[who]
        rate_inr = np.vectorize(PER_INR.get)(cur)
        price = price_inr[product] * rate_inr
        amount = np.where(cur == "INR", np.round(price * qty, 2), np.round(price * qty, 0))
        kind = rng.random(n)
        amount = np.where(kind < 0.02, -amount, amount)  # refunds and returns
        amount = np.where((kind >= 0.02) & (kind < 0.025), 0.0, amount)  # free items
        seconds = rng.integers(9 * 3600, 21 * 3600, n)
        local = pd.Timestamp(day) + pd.to_timedelta(seconds, unit="s")
        stamp = local.strftime("%Y-%m-%dT%H:%M:%S").to_numpy(dtype=object) + offset[who]
        coupon = np.where(rng.random(n) < 0.05, "WELCOME10", "")
        frame = pd.DataFrame({
            "transaction_id": [f"T{day:%Y%m%d}-{seq + i:08d}" for i in range(n)],
            "customer_id": people["customer_id"].to_numpy()[who],
            "purchased_at": stamp,
            "amount": [_money(a, c) for a, c in zip(amount, cur)],
            "currency": cur,
            "store_id": np.char.add("S", (who % 40 + 100).astype(str)),
            "sku": skus[product],
            "category": cat_names[cat],
            "quantity": np.where(amount < 0, -qty, qty),
            "coupon_code": coupon,
        })
        seq += n
        summary.purchases += n
        _write(out / "purchases" / f"dt={day.isoformat()}" / "purchases.csv", frame.to_csv(index=False),
               rng, bad_rows, "purchases", defects)
        summary.files += 1
    summary.bad_rows = defects
    return summary


def _catalogue(prng: np.random.Generator, start: date) -> pd.DataFrame:
    """Every product: category by category, kind by kind, tier by tier (the row is the product's index)."""
    data = json.loads((Path(__file__).parent / "data" / "products.json").read_text(encoding="utf-8"))
    rows = []
    for cat, typical in CATEGORIES.items():
        for k, kind in enumerate(data["kinds"][cat]):
            kind_price = typical * prng.lognormal(0, 0.35)
            brand = data["brands"][int(prng.integers(len(data["brands"])))]
            for t, tier in enumerate(data["tiers"]):
                sku = f"{cat.upper()}-{1000 + k * TIERS + t}"
                names = {lang: f"{kind[lang]} ({tier[lang]})" for lang in ("en", "hi", "te", "fa", "ur")}
                rows.append({
                    "sku": sku, "name": names["en"], "category": cat,
                    "price": f"{round(kind_price * TIER_FACTOR[t], 0):.2f}", "currency": "INR",
                    "url": f"{SHOP}/p/{sku.lower()}", "image_url": f"{SHOP}/img/{sku.lower()}.jpg",
                    "in_stock": "true" if prng.random() > 0.08 else "false",
                    "updated_at": f"{start.isoformat()}T06:00:00+05:30", "brand": brand,
                    **{f"name_{lang}": names[lang] for lang in ("hi", "te", "fa", "ur")},
                })
    return pd.DataFrame(rows)


def _complement_table() -> np.ndarray:
    """Per kind of product (category * 5 + kind), the kinds bought with it, padded with -1."""
    data = json.loads((Path(__file__).parent / "data" / "products.json").read_text(encoding="utf-8"))
    cats = list(CATEGORIES)
    found: dict[int, list[int]] = {}
    for a, i, b, j in data["complements"]:
        x, y = cats.index(a) * KINDS_PER_CATEGORY + i, cats.index(b) * KINDS_PER_CATEGORY + j
        found.setdefault(x, []).append(y)
        found.setdefault(y, []).append(x)
    table = np.full((len(cats) * KINDS_PER_CATEGORY, max(map(len, found.values()))), -1)
    for x, ys in found.items():
        table[x, : len(ys)] = ys
    return table


def _choose(prng, cat: np.ndarray, who: np.ndarray, usual_tier: np.ndarray, last: np.ndarray,
            complements: np.ndarray) -> np.ndarray:
    """The product of each purchase: often a complement of the buyer's last product, else a kind of the
    purchase's category by popularity; in the buyer's usual tier more often than not."""
    n = len(who)
    kind = cat * KINDS_PER_CATEGORY + prng.choice(KINDS_PER_CATEGORY, n, p=KIND_WEIGHTS)
    tier = np.where(prng.random(n) < USUAL_TIER, usual_tier[who], prng.integers(0, TIERS, n))
    before = last[who]
    options = complements[np.maximum(before, 0) // TIERS]
    count = (options >= 0).sum(axis=1)
    pick = options[np.arange(n), (prng.random(n) * np.maximum(count, 1)).astype(int)]
    use = (before >= 0) & (count > 0) & (prng.random(n) < COMPLEMENT)
    kind = np.where(use, pick, kind)
    return kind * TIERS + tier


def _money(amount: float, currency: str) -> str:
    return f"{amount:.2f}" if currency == "INR" or currency == "PKR" else f"{amount:.0f}"


def _customers(rng: np.random.Generator, n: int, start: date, days: int) -> pd.DataFrame:
    names = _names()
    locales = list(LOCALES)
    share = np.array([LOCALES[loc][0] for loc in locales])
    which = rng.choice(len(locales), n, p=share / share.sum())
    first_native, first_latin, last_native, last_latin = [], [], [], []
    for i in which:
        pool = names[locales[i]]
        f = pool["first"][rng.integers(len(pool["first"]))]
        la = pool["last"][rng.integers(len(pool["last"]))]
        first_native.append(f[0])
        first_latin.append(f[1])
        last_native.append(la[0])
        last_latin.append(la[1])
    loc = np.array(locales)[which]
    country = np.array([LOCALES[x][1] for x in loc])
    ids = np.array([f"C{i + 1:07d}" for i in range(n)])
    email = [
        f"{fl}.{ll}{i + 1}@{DOMAINS[i % len(DOMAINS)]}" for i, (fl, ll) in enumerate(zip(first_latin, last_latin))
    ]
    phone = np.empty(n, dtype=object)
    for i, c in enumerate(country):
        style = rng.integers(3)
        if c == "IN":
            digits = f"{rng.integers(6, 10)}{rng.integers(0, 10**9):09d}"
            phone[i] = [f"+91 {digits[:5]} {digits[5:]}", f"0{digits}", digits][style]
        elif c == "IR":
            digits = f"912{rng.integers(0, 10**7):07d}"
            phone[i] = [f"+98 {digits}", f"0{digits[:3]} {digits[3:6]} {digits[6:]}", f"0{digits}"][style]
        else:
            digits = f"{PK_MOBILE_PREFIXES[rng.integers(len(PK_MOBILE_PREFIXES))]}{rng.integers(0, 10**7):07d}"
            phone[i] = [f"+92 {digits[:3]} {digits[3:]}", f"0{digits[:3]} {digits[3:]}", f"0{digits}"][style]
    phone[rng.random(n) < 0.08] = ""  # some customers give no phone
    age_days = rng.integers(18 * 365, 80 * 365, n)
    bday = pd.Timestamp(start) - pd.to_timedelta(age_days, unit="D")
    bday_text = bday.strftime("%Y-%m-%d").to_numpy(dtype=object)
    leap = rng.random(n) < 0.01  # enough Feb 29 birthdays to exercise leap-year rules
    bday_text[leap] = [f"{y - y % 4}-02-29" for y in bday.year[leap]]
    bday_text[rng.random(n) < 0.1] = ""  # birthday is optional
    # 80% joined before the data starts, 20% join during it.
    join_day = np.where(rng.random(n) < 0.8, 0, rng.integers(0, max(days, 1), n))
    created = pd.Timestamp(start) - pd.to_timedelta(np.where(join_day == 0, rng.integers(1, 3 * 365, n), 0), unit="D")
    created = created + pd.to_timedelta(join_day, unit="D")
    created_text = created.strftime("%Y-%m-%dT10:00:00").to_numpy(dtype=object)
    offset = np.array([LOCALES[x][4] for x in loc], dtype=object)
    child = np.where(
        rng.random(n) < 0.2,
        (pd.Timestamp(start) - pd.to_timedelta(rng.integers(200, 20 * 365, n), unit="D")).strftime("%Y-%m-%d"),
        "",
    )
    warranty = np.where(
        rng.random(n) < 0.1,
        (pd.Timestamp(start) + pd.to_timedelta(rng.integers(30, 3 * 365, n), unit="D")).strftime("%Y-%m-%d"),
        "",
    )
    return pd.DataFrame({
        "customer_id": ids,
        "first_name": first_native,
        "last_name": last_native,
        "email": email,
        "phone": phone,
        "birthday": bday_text,
        "locale": loc,
        "timezone": [LOCALES[x][2] for x in loc],
        "country": country,
        "email_consent": rng.random(n) < 0.85,
        "created_at": created_text + offset,
        "updated_at": created_text + offset,
        "child_birthday": child,
        "warranty_end": warranty,
        "_join_day": join_day,
    })


def _habits(rng, people: pd.DataFrame, joined_day: np.ndarray, days: int):
    n = len(people)
    # Heavy-tailed purchase rates: median about one purchase a month.
    rate = rng.lognormal(np.log(1 / 30), 1.0, n)
    stop_day = np.where(rng.random(n) < 0.25, rng.integers(0, max(days, 1), n), days + 1)
    stop_day = np.maximum(stop_day, joined_day + 1)
    fav = rng.integers(0, len(CATEGORIES), n)
    loc = people["locale"].to_numpy()
    currency = np.array([LOCALES[x][3] for x in loc])
    offset = np.array([LOCALES[x][4] for x in loc], dtype=object)
    return rate, stop_day, fav, currency, offset


def _customer_csv(frame: pd.DataFrame) -> str:
    frame = frame.copy()
    frame["email_consent"] = np.where(frame["email_consent"], "true", "false")
    return frame.to_csv(index=False)


_PURCHASE_DEFECTS = ("amount", "currency", "date", "truncated", "duplicate")
_CUSTOMER_DEFECTS = ("email", "date", "truncated")


def _write(path: Path, text: str, rng, share: float, source: str, defects: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if share > 0:
        text = _spoil(text, rng, share, source, defects)
    path.write_text(text, encoding="utf-8")


def _spoil(text: str, rng, share: float, source: str, defects: dict[str, int]) -> str:
    """Damage about ``share`` of the data lines the way real exports go wrong."""
    lines = text.splitlines()
    header, body = lines[0], lines[1:]
    cols = next(csv.reader([header]))
    kinds = _PURCHASE_DEFECTS if source == "purchases" else _CUSTOMER_DEFECTS
    out = [header]
    for line in body:
        if rng.random() >= share:
            out.append(line)
            continue
        kind = kinds[rng.integers(len(kinds))]
        defects[f"{source}:{kind}"] = defects.get(f"{source}:{kind}", 0) + 1
        if kind == "duplicate":
            out.extend([line, line])
            continue
        if kind == "truncated":
            out.append(line[: max(1, len(line) // 3)])
            continue
        fields = next(csv.reader([line]))
        if kind == "amount":
            fields[cols.index("amount")] = rng.choice(["12,50", "abc", "1.234.5", "₹500"])
        elif kind == "currency":
            fields[cols.index("currency")] = rng.choice(["XXY", "RS", "rupees"])
        elif kind == "date":
            col = "purchased_at" if source == "purchases" else "updated_at"
            fields[cols.index(col)] = rng.choice(["31/02/2026", "yesterday", "2026-13-45T10:00:00"])
        elif kind == "email":
            fields[cols.index("email")] = rng.choice(["name@@example.com", "no-at-sign.example.com", "a b@example.com"])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(fields)
        out.append(buf.getvalue())
    return "\n".join(out) + "\n"


__all__ = ["GenerateSummary", "generate"]
