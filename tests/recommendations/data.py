"""Generated shop data for the recommendation tests, written straight into the store, and an independent
pandas computation of the same statistics and lists (crm_tasks/analytics/recommendations.py's docstring is the
specification both follow)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
from sqlalchemy import insert, select

from crm_tasks.analytics.recommendations import recommendations_for
from crm_tasks.clock import cutoff_for
from crm_tasks.settings import RecommendationSettings
from crm_tasks.store.models import (
    Customer,
    Product,
    ProductPair,
    Purchase,
    RecommendationImpression,
)
from tests.factories import add_customers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def add_products(engine, *rows: dict) -> None:
    """Catalogue rows with defaults: INR, in stock, https links for the SKU."""
    with engine.begin() as conn:
        conn.execute(insert(Product), [{
            "name": f"Product {r['sku']}", "category": "grocery", "price": Decimal(100), "currency": "INR",
            "url": f"https://shop.example.in/p/{r['sku']}", "image_url": f"https://cdn.example.in/{r['sku']}.jpg",
            "in_stock": True, "updated_at": T0, "batch_id": 1, **r} for r in rows])


def add_purchases(engine, rows: list[tuple], start: int = 1) -> None:
    """(customer, sku, UTC instant, amount) purchases."""
    with engine.begin() as conn:
        conn.execute(insert(Purchase), [
            {"transaction_id": f"R{i}", "customer_id": cid, "purchased_at": at, "amount": Decimal(amount),
             "currency": "INR", "store_id": "S1", "sku": sku, "category": "any", "quantity": 1,
             "coupon_code": None, "batch_id": 1, "line_no": i}
            for i, (cid, sku, at, amount) in enumerate(rows, start=start)])


def add_impressions(engine, rows: list[tuple]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(RecommendationImpression),
                     [{"customer_id": c, "sku": s, "shown_on": d} for c, s, d in rows])


@dataclass
class Shop:
    as_of: date
    customers: list[str]


def generate(engine, as_of: date, seed: int = 3, customers: int = 160, themes: int = 8) -> Shop:
    """Customers buying within themes of complementary products (four per theme, across categories), some
    noise, refunds and old orders outside a short window, buyers without a profile, products out of stock or
    missing from the catalogue, and impressions old and recent."""
    rng = np.random.default_rng(seed)
    cats = ["grocery", "home", "beauty"]
    skus = [f"P{t:02d}{k}" for t in range(themes) for k in "abcd"]
    add_products(engine, *(
        {"sku": s, "category": cats[i % 3], "price": Decimal(int(rng.integers(50, 900))),
         "in_stock": bool(rng.random() > 0.12)} for i, s in enumerate(skus) if s != "P01d"))  # P01d: not listed
    profiled = [f"C{i:03d}" for i in range(customers)]
    add_customers(engine, *({"customer_id": c} for c in profiled))
    rows = []
    for i, cid in enumerate(profiled[:-12] + [f"X{i:02d}" for i in range(10)]):  # 12 without orders, 10 unprofiled
        theme = int(rng.integers(themes))
        for k in rng.choice(4, int(rng.integers(1, 5)), replace=False):
            ago = int(rng.integers(0, 150))
            rows.append((cid, f"P{theme:02d}{'abcd'[k]}", T0 + timedelta(days=120 - ago, hours=int(rng.integers(24))),
                         "-20" if rng.random() < 0.04 else "120"))
        if rng.random() < 0.6:
            rows.append((cid, skus[int(rng.integers(len(skus)))], T0 + timedelta(days=int(rng.integers(0, 120))), "80"))
    add_purchases(engine, rows)
    recent = as_of - timedelta(days=3)
    add_impressions(engine, [(profiled[i], skus[(i * 7) % len(skus)], recent) for i in range(0, 60, 2)]
                    + [(profiled[i], skus[(i * 5) % len(skus)], as_of - timedelta(days=90)) for i in range(0, 60, 3)])
    return Shop(as_of, profiled)


# --- the independent computation ----------------------------------------------------------------------------


def _frame(engine, model) -> pd.DataFrame:
    with engine.connect() as conn:  # the columns named, so that an empty table (no catalogue) still has them
        return pd.DataFrame([dict(r._mapping) for r in conn.execute(select(model.__table__))],
                            columns=[c.name for c in model.__table__.columns])


def reference(engine, rules: RecommendationSettings, tz: str, as_of: date, customers: list[str],
              exclude_shown: bool = True) -> tuple[pd.DataFrame, dict[str, list[tuple]]]:
    """The pairs (sku, other_sku, support, confidence, lift) and each customer's list of
    (sku, kind, source_sku, customers), computed in pandas and Python from the stored rows."""
    purchases, products = _frame(engine, Purchase), _frame(engine, Product)
    impressions = _frame(engine, RecommendationImpression)
    start = cutoff_for(as_of - timedelta(days=rules.window_days), tz)
    end = cutoff_for(as_of, tz)
    at = pd.to_datetime(purchases["purchased_at"], utc=True)
    window = purchases[(at >= start) & (at < end) & (purchases["amount"] >= 0)]
    baskets = window[["customer_id", "sku"]].drop_duplicates()
    buyers = baskets.groupby("sku").size()
    n_buyers = baskets["customer_id"].nunique()
    both = baskets.merge(baskets, on="customer_id", suffixes=("", "_o"))
    both = both[both["sku"] != both["sku_o"]]
    pairs = both.groupby(["sku", "sku_o"]).size().rename("support").reset_index()
    pairs = pairs[pairs["support"] >= rules.min_support].rename(columns={"sku_o": "other_sku"})
    pairs = pairs[pairs["other_sku"].isin(set(products["sku"]))]  # B in the catalogue
    a, b = buyers.loc[pairs["sku"]].to_numpy(), buyers.loc[pairs["other_sku"]].to_numpy()
    pairs["confidence"] = pairs["support"].to_numpy().astype(float) / a
    pairs["lift"] = pairs["support"].to_numpy().astype(float) * n_buyers / (a.astype(float) * b)

    in_stock = set(products.loc[products["in_stock"].astype(bool), "sku"])
    catalogue = products.set_index("sku")
    bought = baskets.groupby("customer_id")["sku"].apply(set).to_dict()
    shown: dict[str, set] = {}
    if exclude_shown and rules.recent_days and len(impressions):
        since = as_of - timedelta(days=rules.recent_days)
        recent = impressions[(impressions["shown_on"] > since) & (impressions["shown_on"] <= as_of)]
        shown = recent.groupby("customer_id")["sku"].apply(set).to_dict()
    neighbours: dict[str, list] = {}
    for r in pairs[pairs["other_sku"].isin(in_stock)].itertuples():
        neighbours.setdefault(r.sku, []).append((-r.confidence, -r.support, r.other_sku))
    neighbours = {k: sorted(v)[: rules.pool] for k, v in neighbours.items()}
    stocked = [(s, int(buyers[s])) for s in buyers.index if s in in_stock]
    popular = sorted(stocked, key=lambda t: (-t[1], t[0]))[: rules.pool]
    by_cat: dict[str, list] = {}
    for s, n in sorted(stocked, key=lambda t: (-t[1], t[0])):
        by_cat.setdefault(catalogue.loc[s, "category"], []).append((s, n))
    by_cat = {k: v[: rules.pool] for k, v in by_cat.items()}

    lists = {}
    for cid in customers:
        mine = bought.get(cid, set())
        banned = mine | shown.get(cid, set())
        best: dict[str, tuple] = {}
        for s in mine:
            for neg_conf, neg_sup, other in neighbours.get(s, []):
                if other not in banned:
                    key = (neg_conf, neg_sup, s)
                    if other not in best or key < best[other]:
                        best[other] = key
        cross = sorted(((k[0], k[1], o, k[2]) for o, k in best.items()))[: rules.per_customer]
        cross_skus = {c[2] for c in cross}
        refs: dict[tuple, tuple] = {}
        for s in mine:
            if s in catalogue.index:
                p = catalogue.loc[s]
                key = (p["category"], p["currency"])
                if key not in refs or (-p["price"], s) < (-refs[key][1], refs[key][0]):
                    refs[key] = (s, p["price"])
        ups = []
        for (cat, cur), (ref, price) in refs.items():
            for s, n in by_cat.get(cat, []):
                p = catalogue.loc[s]
                if p["currency"] == cur and p["price"] > price and s not in banned and s not in cross_skus:
                    ups.append((-n, p["price"], s, ref, n))
        ups = sorted(ups)[: rules.up_sell]
        head = rules.per_customer - rules.up_sell
        chosen = ([(o, "cross_sell", src, -int(neg_sup)) for _, neg_sup, o, src in cross[:head]]
                  + [(s, "up_sell", ref, n) for _, _, s, ref, n in ups]
                  + [(o, "cross_sell", src, -int(neg_sup)) for _, neg_sup, o, src in cross[head:]])
        if len(cross) + len(ups) < rules.per_customer:
            taken = {c[0] for c in chosen}
            chosen += [(s, "popular", None, n) for s, n in popular if s not in banned and s not in taken]
        lists[cid] = chosen[: rules.per_customer]
    return pairs.reset_index(drop=True), {c: v for c, v in lists.items() if v}


def stored(engine) -> tuple[pd.DataFrame, dict[str, list[tuple]]]:
    """The refresh's pairs and every profiled customer's list as ``recommendations_for`` reads it (a list of
    their own, else the shop-wide one), in the reference's shapes."""
    pairs = _frame(engine, ProductPair)
    with engine.connect() as conn:
        everyone = conn.execute(select(Customer.customer_id)).scalars().all()
    lists = {cid: [(r.sku, r.kind, r.source_sku, r.customers) for r in lines]
             for cid, lines in recommendations_for(engine, everyone).items()}
    return pairs, lists


def reference_evaluation(engine, rules: RecommendationSettings, tz: str, as_of: date, cut: date,
                         customers: list[str]) -> dict:
    """Hit rate at 5 and recall at 10 of the reference lists trained up to ``cut`` and of the best sellers,
    on each customer's products new to them bought after the cut."""
    rules = rules.model_copy(update={"per_customer": max(10, rules.per_customer)})
    _, lists = reference(engine, rules, tz, cut, customers, exclude_shown=False)
    purchases, products = _frame(engine, Purchase), _frame(engine, Product)
    at = pd.to_datetime(purchases["purchased_at"], utc=True)
    train = purchases[(at >= cutoff_for(cut - timedelta(days=rules.window_days), tz))
                      & (at < cutoff_for(cut, tz)) & (purchases["amount"] >= 0)]
    bought = train.groupby("customer_id")["sku"].apply(set).to_dict()
    after = purchases[(at >= cutoff_for(cut, tz)) & (at < cutoff_for(as_of, tz)) & (purchases["amount"] >= 0)
                      & purchases["customer_id"].isin(customers)]
    truth: dict[str, set] = {}
    for cid, sku in after[["customer_id", "sku"]].itertuples(index=False):
        if sku not in bought.get(cid, set()):
            truth.setdefault(cid, set()).add(sku)
    buyers = train[["customer_id", "sku"]].drop_duplicates().groupby("sku").size()
    in_stock = set(products.loc[products["in_stock"].astype(bool), "sku"])
    popular = [s for s, _ in sorted(((s, int(n)) for s, n in buyers.items() if s in in_stock),
                                    key=lambda t: (-t[1], t[0]))[: rules.pool]]

    def score(ranked: dict[str, list[str]]) -> dict:
        hits = [bool(set(ranked.get(c, [])[:5]) & t) for c, t in truth.items()]
        recall = [len(set(ranked.get(c, [])[:10]) & t) / len(t) for c, t in truth.items()]
        return {"hit_rate_at_5": float(np.mean(hits)), "recall_at_10": float(np.mean(recall))}

    baseline = {c: [s for s in popular if s not in bought.get(c, set())][:10] for c in truth}
    return {"customers": len(truth), "model": score({c: [line[0] for line in v] for c, v in lists.items()}),
            "popularity": score(baseline)}
