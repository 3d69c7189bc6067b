"""Product recommendations, computed in the database every night: item-to-item co-purchase statistics
(``product_pairs``) and each customer's list (``customer_recommendations``), every line with its reason.

Over the orders (amount >= 0) of the ``window_days`` business days up to the as-of date, a customer's
*basket* is the set of products they bought. For two products A and B:

- support(A, B): customers who bought both; pairs below ``min_support`` are noise and are not kept;
- confidence(A -> B) = support / buyers of A;
- lift(A -> B) = confidence / (buyers of B / buyers in the window).

Each customer (``customers``) gets at most ``per_customer`` in-stock catalogue products they did not buy in
the window and were not shown in the last ``recent_days`` (``recommendation_impressions``):

1. cross-sell: the complements of what they bought, each product's ``pool`` best by confidence; a product
   reached from several of the customer's products keeps the source with the highest confidence
   ("bought with X by N customers"). Ranked by confidence, then support, then SKU;
2. up-sell: for each category and currency they buy, the dearest catalogue product they bought there is
   the reference, and the category's ``pool`` best sellers in stock priced above it are candidates
   ("a step up from X, bought by N customers"), best seller first; at most ``up_sell`` of them. A product
   already a cross-sell candidate stays a cross-sell;
3. the list: the first ``per_customer - up_sell`` cross-sells, then the up-sells, then the remaining
   cross-sells; a list still short is filled with the shop's ``pool`` best sellers in stock (popular),
   which is the whole list of a customer without orders in the window.

Ties break by SKU in byte order on both dialects. A refresh replaces both tables whole and records its run
under its as-of date, so re-running a date gives the same tables. ``evaluate`` trains the same model up to a
cut and scores it against a popularity baseline on what customers bought after it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Integer, delete, func, select
from sqlalchemy import Date as SaDate

from crm_tasks.clock import cutoff_for
from crm_tasks.errors import CrmError
from crm_tasks.settings import RecommendationSettings, Settings
from crm_tasks.store import sql
from crm_tasks.store.models import (
    CustomerRecommendation,
    Product,
    ProductPair,
    Purchase,
    RecommendationEvaluation,
    RecommendationRun,
)
from crm_tasks.store.types import UtcDateTime

log = logging.getLogger(__name__)

CROSS_SELL, UP_SELL, POPULAR = "cross_sell", "up_sell", "popular"
KINDS = (CROSS_SELL, UP_SELL, POPULAR)

# --- the statements, in the order a refresh runs them -------------------------------------------------------

# Each customer's distinct products ordered in the window (refunds are not purchases); reads the window as a
# range of ix_purchases_time.
_BASKETS = """
INSERT INTO rec_baskets (customer_id, sku)
SELECT DISTINCT customer_id, sku FROM purchases
WHERE purchased_at >= :start AND purchased_at < :end AND amount >= 0
"""

_ITEMS = "INSERT INTO rec_items (sku, buyers) SELECT sku, COUNT(*) FROM rec_baskets GROUP BY sku"

# Both directions of every pair with the minimum support: a self-join of the baskets on the customer
# (rec_baskets' primary key), grouped by pair. The floats are computed as the pandas check computes them.
_PAIRS = """
INSERT INTO rec_pairs (sku, other_sku, support, confidence, lift)
SELECT c.sku, c.other_sku, c.support, CAST(c.support AS DOUBLE PRECISION) / ia.buyers,
       CAST(c.support AS DOUBLE PRECISION) * :buyers / (CAST(ia.buyers AS DOUBLE PRECISION) * ib.buyers)
FROM (SELECT a.sku, b.sku AS other_sku, COUNT(*) AS support
      FROM rec_baskets a JOIN rec_baskets b ON b.customer_id = a.customer_id AND b.sku <> a.sku
      GROUP BY a.sku, b.sku HAVING COUNT(*) >= :min_support) c
JOIN rec_items ia ON ia.sku = c.sku
JOIN rec_items ib ON ib.sku = c.other_sku
"""

# Products recently shown to a customer: not recommended again yet.
_SHOWN = """
INSERT INTO rec_shown (customer_id, sku)
SELECT DISTINCT customer_id, sku FROM recommendation_impressions WHERE shown_on > :since AND shown_on <= :as_of
"""

# Each product's best in-stock complements: what bounds the cross-sell candidates per basket line.
_NEIGHBOURS = """
INSERT INTO rec_neigh (sku, other_sku, support, confidence)
SELECT sku, other_sku, support, confidence FROM (
  SELECT p.sku, p.other_sku, p.support, p.confidence,
         ROW_NUMBER() OVER (PARTITION BY p.sku ORDER BY p.confidence DESC, p.support DESC, p.other_sku{c}) AS rn
  FROM rec_pairs p JOIN products d ON d.sku = p.other_sku AND d.in_stock = {true}) r
WHERE rn <= :pool
"""

# The shop's best sellers in stock (the popularity fill and baseline), and each category's (up-sell).
_POPULAR = """
INSERT INTO rec_popular (sku, buyers, p_rank)
SELECT sku, buyers, p_rank FROM (
  SELECT i.sku, i.buyers, ROW_NUMBER() OVER (ORDER BY i.buyers DESC, i.sku{c}) AS p_rank
  FROM rec_items i JOIN products d ON d.sku = i.sku AND d.in_stock = {true}) r
WHERE p_rank <= :pool
"""
_CATEGORY_TOP = """
INSERT INTO rec_cat_top (sku, category, currency, buyers)
SELECT sku, category, currency, buyers FROM (
  SELECT d.sku, d.category, d.currency, i.buyers,
         ROW_NUMBER() OVER (PARTITION BY d.category ORDER BY i.buyers DESC, d.sku{c}) AS rn
  FROM products d JOIN rec_items i ON i.sku = d.sku WHERE d.in_stock = {true}) r
WHERE rn <= :pool
"""

_NEW_TO = """NOT EXISTS (SELECT 1 FROM rec_baskets y WHERE y.customer_id = {who} AND y.sku = {what})
  AND NOT EXISTS (SELECT 1 FROM rec_shown s WHERE s.customer_id = {who} AND s.sku = {what})"""

# Cross-sell: every complement of every product in a profiled customer's basket that is new to them, the
# source with the best confidence kept; only the first per_customer can reach a list.
_CROSS = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT customer_id, other_sku, 'cross_sell', confidence, support, sku, k_rn FROM (
  SELECT customer_id, other_sku, confidence, support, sku,
         ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY confidence DESC, support DESC, other_sku{c}) AS k_rn
  FROM (SELECT x.customer_id, n.other_sku, n.confidence, n.support, n.sku,
               ROW_NUMBER() OVER (PARTITION BY x.customer_id, n.other_sku
                                  ORDER BY n.confidence DESC, n.support DESC, n.sku{c}) AS rn
        FROM rec_baskets x JOIN customers k ON k.customer_id = x.customer_id
        JOIN rec_neigh n ON n.sku = x.sku
        WHERE {new}) s
  WHERE rn = 1) r
WHERE k_rn <= :n
"""

# Up-sell: per category and currency a customer buys, the dearest catalogue product they bought is the
# reference; the category's best sellers priced above it are candidates, best seller first, then cheapest.
_UP = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT customer_id, sku, 'up_sell', buyers, buyers, source_sku, k_rn FROM (
  SELECT r.customer_id, t.sku, t.buyers, r.sku AS source_sku,
         ROW_NUMBER() OVER (PARTITION BY r.customer_id ORDER BY t.buyers DESC, dt.price, t.sku{c}) AS k_rn
  FROM (SELECT customer_id, sku, category, currency, price FROM (
          SELECT b.customer_id, d.sku, d.category, d.currency, d.price,
                 ROW_NUMBER() OVER (PARTITION BY b.customer_id, d.category, d.currency
                                    ORDER BY d.price DESC, d.sku{c}) AS rn
          FROM rec_baskets b JOIN customers k ON k.customer_id = b.customer_id
          JOIN products d ON d.sku = b.sku) f
        WHERE rn = 1) r
  JOIN rec_cat_top t ON t.category = r.category AND t.currency = r.currency
  JOIN products dt ON dt.sku = t.sku AND dt.price > r.price
  WHERE {new}
    AND NOT EXISTS (SELECT 1 FROM rec_cand c WHERE c.customer_id = r.customer_id AND c.sku = t.sku)) u
WHERE k_rn <= :up_sell
"""

# Popular: every profiled customer with a basket or a recent impression whose candidates cannot fill a list
# gets the best sellers new to them; the candidates are counted into rec_have first (its key is what each
# customer's count is looked up by). A customer with neither gets the best sellers as they rank (_PLAIN).
_HAVE = "INSERT INTO rec_have (customer_id, have) SELECT customer_id, COUNT(*) FROM rec_cand GROUP BY customer_id"
_FILL = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT customer_id, sku, 'popular', buyers, buyers, NULL, k_rn FROM (
  SELECT k.customer_id, p.sku, p.buyers, ROW_NUMBER() OVER (PARTITION BY k.customer_id ORDER BY p.p_rank) AS k_rn
  FROM customers k
  LEFT JOIN rec_have h ON h.customer_id = k.customer_id
  CROSS JOIN rec_popular p
  WHERE COALESCE(h.have, 0) < :n AND {new}
    AND NOT EXISTS (SELECT 1 FROM rec_cand c WHERE c.customer_id = k.customer_id AND c.sku = p.sku)
    AND (EXISTS (SELECT 1 FROM rec_baskets b WHERE b.customer_id = k.customer_id)
         OR EXISTS (SELECT 1 FROM rec_shown s WHERE s.customer_id = k.customer_id))) q
WHERE k_rn <= :n
"""

# The list: the reserved up-sell slots after the first cross-sells, the other cross-sells after them, then
# popular products.
_LIST = """
INSERT INTO {target} (customer_id, rank, sku, kind, source_sku, customers, score, as_of)
SELECT customer_id, rnk, sku, kind, source_sku, customers, score, :as_of FROM (
  SELECT c.customer_id, c.sku, c.kind, c.source_sku, c.customers, c.score,
         ROW_NUMBER() OVER (PARTITION BY c.customer_id ORDER BY
           CASE WHEN c.kind = 'cross_sell' AND c.k_rn <= :n - :up_sell THEN 1 WHEN c.kind = 'up_sell' THEN 2
                WHEN c.kind = 'cross_sell' THEN 3 ELSE 4 END, c.k_rn) AS rnk
  FROM rec_cand c) r
WHERE rnk <= :n
"""
# ...and the customers without orders in the window or recent impressions: half the customers of a shop, and
# the same list for each, written without ranking anything.
_PLAIN = """
INSERT INTO {target} (customer_id, rank, sku, kind, source_sku, customers, score, as_of)
SELECT k.customer_id, p.p_rank, p.sku, 'popular', NULL, p.buyers, p.buyers, :as_of
FROM customers k CROSS JOIN rec_popular p
WHERE p.p_rank <= :n AND NOT EXISTS (SELECT 1 FROM rec_baskets b WHERE b.customer_id = k.customer_id)
  AND NOT EXISTS (SELECT 1 FROM rec_shown s WHERE s.customer_id = k.customer_id)
"""

_SCRATCH = {
    "rec_baskets": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_items": "sku VARCHAR(64) PRIMARY KEY, buyers INTEGER",
    "rec_pairs": "sku VARCHAR(64), other_sku VARCHAR(64), support INTEGER, confidence DOUBLE PRECISION, "
                 "lift DOUBLE PRECISION, PRIMARY KEY (sku, other_sku)",
    "rec_shown": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_neigh": "sku VARCHAR(64), other_sku VARCHAR(64), support INTEGER, confidence DOUBLE PRECISION, "
                 "PRIMARY KEY (sku, other_sku)",
    "rec_popular": "sku VARCHAR(64) PRIMARY KEY, buyers INTEGER, p_rank INTEGER",
    "rec_cat_top": "sku VARCHAR(64) PRIMARY KEY, category VARCHAR(64), currency VARCHAR(3), buyers INTEGER",
    "rec_cand": "customer_id VARCHAR(64), sku VARCHAR(64), kind VARCHAR(16), score DOUBLE PRECISION, "
                "customers INTEGER, source_sku VARCHAR(64), k_rn INTEGER, PRIMARY KEY (customer_id, sku)",
    "rec_have": "customer_id VARCHAR(64) PRIMARY KEY, have INTEGER",
}
# Up-sell looks a category's best sellers up by category and currency.
_SCRATCH_INDEXES = {"rec_cat_top": "CREATE INDEX IF NOT EXISTS ix_rec_cat_top ON rec_cat_top (category, currency)"}


@dataclass
class RefreshResult:
    as_of: date
    window_start: date
    buyers: int = 0
    pairs: int = 0
    customers: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    short_lists: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "window_start": self.window_start.isoformat(),
                "buyers": self.buyers, "pairs": self.pairs, "customers": self.customers, **self.by_kind,
                "short_lists": self.short_lists, "seconds": round(self.seconds, 3), "phases": self.phases}


def window_start(rules: RecommendationSettings, as_of: date) -> date:
    """The first business day whose orders the statistics of ``as_of`` read."""
    return as_of - timedelta(days=rules.window_days - 1)


def refresh_recommendations(engine: Engine, cfg: Settings, as_of: date) -> RefreshResult:
    """Recompute the co-purchase statistics and every customer's list as of the end of ``as_of``, replacing
    the previous ones, in one transaction; returns the counts."""
    started = time.perf_counter()
    rules = cfg.recommendations
    result = RefreshResult(as_of, window_start(rules, as_of))
    with engine.begin() as conn:
        result.buyers, result.phases = _model(conn, cfg, rules, as_of, exclude_shown=True)
        mark = time.perf_counter()
        conn.execute(delete(ProductPair))
        result.pairs = sql.execute(conn, "INSERT INTO product_pairs (sku, other_sku, as_of, support, confidence, lift) "
                                         "SELECT sku, other_sku, :as_of, support, confidence, lift FROM rec_pairs",
                                   {"as_of": as_of}, as_of=SaDate()).rowcount
        conn.execute(delete(CustomerRecommendation))
        _list(conn, rules, as_of, "customer_recommendations")
        result.phases["store"] = round(time.perf_counter() - mark, 3)
        for kind, n in conn.execute(select(CustomerRecommendation.kind, func.count())
                                    .group_by(CustomerRecommendation.kind)):
            result.by_kind[kind] = n
        sizes = (select(func.count().label("n")).select_from(CustomerRecommendation)
                 .group_by(CustomerRecommendation.customer_id).subquery())
        result.customers, result.short_lists = conn.execute(
            select(func.count(), func.coalesce(func.sum((sizes.c.n < rules.per_customer).cast(Integer)), 0))).one()
        result.seconds = time.perf_counter() - started
        conn.execute(delete(RecommendationRun).where(RecommendationRun.as_of == as_of))
        conn.execute(RecommendationRun.__table__.insert().values(
            as_of=as_of, window_start=result.window_start, buyers=result.buyers, pairs=result.pairs,
            customers=result.customers, cross_sell=result.by_kind[CROSS_SELL], up_sell=result.by_kind[UP_SELL],
            popular=result.by_kind[POPULAR], short_lists=result.short_lists, seconds=result.seconds,
            computed_at=datetime.now(UTC)))
    log.info("recommendations as of %s: %d pairs, %d customers (%s), %d short lists (%.1f s)", as_of, result.pairs,
             result.customers, ", ".join(f"{k} {n}" for k, n in result.by_kind.items()), result.short_lists,
             result.seconds)
    return result


def _analyze(conn: Connection, *tables: str) -> None:
    # Temporary tables have no statistics until analysed: PostgreSQL would plan the joins as if empty.
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {table}")


def _model(conn: Connection, cfg: Settings, rules: RecommendationSettings, as_of: date, *,
           exclude_shown: bool) -> tuple[int, dict[str, float]]:
    """Fill the scratch tables up to the candidates (``rec_pairs``, ``rec_popular``, ``rec_cand``) as of the end
    of ``as_of``; returns the window's buyers and the seconds per step."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        conn.exec_driver_sql("SET LOCAL jit = off")  # one-off statements: compiling costs more than it saves
    for name, columns in _SCRATCH.items():
        sql.scratch(conn, name, columns, *filter(None, [_SCRATCH_INDEXES.get(name)]))
    c, true = sql.byte_order(conn), sql.true(conn)
    params = {"start": cutoff_for(window_start(rules, as_of) - timedelta(days=1), cfg.timezone),
              "end": cutoff_for(as_of, cfg.timezone), "as_of": as_of, "since": as_of - timedelta(days=rules.recent_days),
              "min_support": rules.min_support, "pool": rules.pool, "n": rules.per_customer, "up_sell": rules.up_sell}
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()

    sql.execute(conn, _BASKETS, params, start=UtcDateTime(), end=UtcDateTime())
    conn.exec_driver_sql(_ITEMS)
    _analyze(conn, "rec_baskets", "rec_items")
    params["buyers"] = sql.count(conn, "SELECT COUNT(DISTINCT customer_id) FROM rec_baskets")
    step("baskets")
    sql.execute(conn, _PAIRS, params)
    _analyze(conn, "rec_pairs")
    step("pairs")
    if exclude_shown and rules.recent_days:
        sql.execute(conn, _SHOWN, params, since=SaDate(), as_of=SaDate())
    for statement in (_NEIGHBOURS, _POPULAR, _CATEGORY_TOP):
        sql.execute(conn, statement.format(c=c, true=true), params)
    _analyze(conn, "rec_shown", "rec_neigh", "rec_popular", "rec_cat_top")
    sql.execute(conn, _CROSS.format(c=c, new=_NEW_TO.format(who="x.customer_id", what="n.other_sku")), params)
    step("cross_sell")
    sql.execute(conn, _UP.format(c=c, new=_NEW_TO.format(who="r.customer_id", what="t.sku")), params)
    _analyze(conn, "rec_cand")
    step("up_sell")
    conn.exec_driver_sql(_HAVE)
    _analyze(conn, "rec_have")
    sql.execute(conn, _FILL.format(new=_NEW_TO.format(who="k.customer_id", what="p.sku")), params)
    step("popular")
    return params["buyers"], phases


def _list(conn: Connection, rules: RecommendationSettings, as_of: date, target: str) -> int:
    """Rank the candidates into each customer's list in ``target``; returns the lines written."""
    params = {"as_of": as_of, "n": rules.per_customer, "up_sell": rules.up_sell}
    return sum(sql.execute(conn, statement.format(target=target), params, as_of=SaDate()).rowcount
               for statement in (_LIST, _PLAIN))


# --- offline evaluation ---------------------------------------------------------------------------------------

# What each profiled customer bought after the cut that was new to them (not in their training basket): the
# only purchases a list that never repeats a basket could predict.
_TRUTH = """
INSERT INTO rec_truth (customer_id, sku)
SELECT DISTINCT p.customer_id, p.sku FROM purchases p JOIN customers k ON k.customer_id = p.customer_id
WHERE p.purchased_at >= :cut_end AND p.purchased_at < :end AND p.amount >= 0
  AND NOT EXISTS (SELECT 1 FROM rec_baskets b WHERE b.customer_id = p.customer_id AND b.sku = p.sku)
"""

# The baseline: the shop's best sellers in stock, those each customer did not buy before the cut.
_BASELINE = """
INSERT INTO rec_baseline (customer_id, rank, sku)
SELECT customer_id, rnk, sku FROM (
  SELECT t.customer_id, p.sku, ROW_NUMBER() OVER (PARTITION BY t.customer_id ORDER BY p.p_rank) AS rnk
  FROM (SELECT DISTINCT customer_id FROM rec_truth) t CROSS JOIN rec_popular p
  WHERE NOT EXISTS (SELECT 1 FROM rec_baskets b WHERE b.customer_id = t.customer_id AND b.sku = p.sku)) r
WHERE rnk <= :n
"""

# Per evaluated customer: a hit in the first 5, and the share of their new products in the first 10.
_SCORE = """
SELECT COUNT(*), SUM(CASE WHEN COALESCE(h.h5, 0) > 0 THEN 1 ELSE 0 END),
       SUM(CAST(COALESCE(h.h10, 0) AS DOUBLE PRECISION) / t.n)
FROM (SELECT customer_id, COUNT(*) AS n FROM rec_truth GROUP BY customer_id) t
LEFT JOIN (SELECT r.customer_id, SUM(CASE WHEN r.rank <= 5 THEN 1 ELSE 0 END) AS h5,
                  SUM(CASE WHEN r.rank <= 10 THEN 1 ELSE 0 END) AS h10
           FROM {ranked} r JOIN rec_truth x ON x.customer_id = r.customer_id AND x.sku = r.sku
           GROUP BY r.customer_id) h ON h.customer_id = t.customer_id
"""


@dataclass
class Evaluation:
    as_of: date
    cut: date
    holdout_days: int
    customers: int  # profiled customers who bought a product new to them after the cut
    model: dict[str, float | None]
    popularity: dict[str, float | None]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "cut": self.cut.isoformat(), "holdout_days": self.holdout_days,
                "customers": self.customers, "model": self.model, "popularity": self.popularity,
                "seconds": round(self.seconds, 3)}

    def lines(self) -> list[str]:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        out = [(f"trained up to {self.cut}, scored on {self.customers} customers' new products in "
               f"{self.cut + timedelta(days=1)} .. {self.as_of} ({self.holdout_days} days)"),
               f"{'':<12}{'hit rate@5':>12}{'recall@10':>12}"]
        for name, m in (("model", self.model), ("popularity", self.popularity)):
            out.append(f"{name:<12}{pct(m['hit_rate_at_5']):>12}{pct(m['recall_at_10']):>12}")
        return out


def latest_purchase_day(engine: Engine, cfg: Settings) -> date:
    """The business day of the latest order; raises when there is none to evaluate on."""
    with engine.connect() as conn:
        last = conn.execute(select(func.max(Purchase.purchased_at)).where(Purchase.amount >= 0)).scalar()
    if last is None:
        raise CrmError("no purchases to evaluate recommendations on: ingest some first (crm ingest --all)")
    return last.astimezone(ZoneInfo(cfg.timezone)).date()


def evaluate(engine: Engine, cfg: Settings, holdout_days: int, as_of: date | None = None) -> Evaluation:
    """Train the recommender on the orders up to ``holdout_days`` before ``as_of`` (default: the latest order's
    day) and score its lists and the best sellers' on what each customer bought after that cut; the result
    is stored under (as_of, holdout_days), replacing an earlier one. Recently shown products are not
    excluded: the impressions of the past say nothing about the lists of the cut."""
    started = time.perf_counter()
    as_of = as_of or latest_purchase_day(engine, cfg)
    cut = as_of - timedelta(days=holdout_days)
    rules = cfg.recommendations.model_copy(update={"per_customer": max(10, cfg.recommendations.per_customer)})
    with engine.begin() as conn:
        _model(conn, cfg, rules, cut, exclude_shown=False)
        sql.scratch(conn, "rec_final", "customer_id VARCHAR(64), rank INTEGER, sku VARCHAR(64), kind VARCHAR(16), "
                                       "source_sku VARCHAR(64), customers INTEGER, score DOUBLE PRECISION, "
                                       "as_of DATE, PRIMARY KEY (customer_id, rank)")
        sql.scratch(conn, "rec_truth", "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)")
        sql.scratch(conn, "rec_baseline", "customer_id VARCHAR(64), rank INTEGER, sku VARCHAR(64), "
                                          "PRIMARY KEY (customer_id, rank)")
        _list(conn, rules, cut, "rec_final")
        sql.execute(conn, _TRUTH, {"cut_end": cutoff_for(cut, cfg.timezone), "end": cutoff_for(as_of, cfg.timezone)},
                    cut_end=UtcDateTime(), end=UtcDateTime())
        _analyze(conn, "rec_final", "rec_truth")
        sql.execute(conn, _BASELINE, {"n": 10})
        scores = {name: _score(conn, ranked) for name, ranked in (("model", "rec_final"),
                                                                  ("popularity", "rec_baseline"))}
        customers = scores["model"].pop("customers")
        scores["popularity"].pop("customers")
        result = Evaluation(as_of, cut, holdout_days, customers, scores["model"], scores["popularity"],
                            time.perf_counter() - started)
        conn.execute(delete(RecommendationEvaluation).where(RecommendationEvaluation.as_of == as_of,
                                                            RecommendationEvaluation.holdout_days == holdout_days))
        conn.execute(RecommendationEvaluation.__table__.insert().values(
            as_of=as_of, holdout_days=holdout_days, cut=cut, customers=customers,
            model_hit_rate_at_5=result.model["hit_rate_at_5"], model_recall_at_10=result.model["recall_at_10"],
            popularity_hit_rate_at_5=result.popularity["hit_rate_at_5"],
            popularity_recall_at_10=result.popularity["recall_at_10"], computed_at=datetime.now(UTC)))
    log.info("recommendations evaluated as of %s (cut %s): %d customers, model %s, popularity %s", as_of, cut,
             customers, result.model, result.popularity)
    return result


def _score(conn: Connection, ranked: str) -> dict:
    n, hits, recall = sql.execute(conn, _SCORE.format(ranked=ranked)).one()
    n = int(n or 0)
    if not n:
        return {"customers": 0, "hit_rate_at_5": None, "recall_at_10": None}
    return {"customers": n, "hit_rate_at_5": round(int(hits) / n, 6), "recall_at_10": round(float(recall) / n, 6)}


# --- reading the lists ----------------------------------------------------------------------------------------

LOCALISED_NAMES = ("hi", "te", "fa", "ur")  # the catalogue's name_<language> columns


def reason(kind: str, source_name: str | None, customers: int) -> str:
    """Why a product is recommended, as one English sentence (templates may phrase ``kind`` in their language)."""
    who = f"{customers} customer{'' if customers == 1 else 's'}"
    if kind == CROSS_SELL:
        return f"bought with {source_name} by {who}"
    if kind == UP_SELL:
        return f"a step up from {source_name}, bought by {who}"
    return f"a best seller, bought by {who}"


@dataclass(frozen=True)
class Recommendation:
    """One line of a customer's list with the catalogue's description of the product and of its source."""

    customer_id: str
    rank: int
    sku: str
    kind: str
    source_sku: str | None
    source_name: str | None
    customers: int
    name: str
    names: dict[str, str]  # language -> the catalogue's name in it, where given
    category: str
    price: Decimal
    currency: str
    url: str
    image_url: str

    @property
    def reason(self) -> str:
        return reason(self.kind, self.source_name, self.customers)

    def name_in(self, language: str) -> str:
        """The product's name in a language, else the catalogue's default (English) name."""
        return self.names.get(language, self.name)

    def to_dict(self) -> dict:
        return asdict(self) | {"price": str(self.price), "reason": self.reason}


def recommendations_for(engine: Engine, customer_ids: list[str]) -> dict[str, list[Recommendation]]:
    """The stored lists of these customers, best first, with the products' descriptions; customers without
    a list are absent. Products that left the catalogue since the refresh are left out."""
    source = Product.__table__.alias("source")
    cols = [getattr(Product, f"name_{lang}") for lang in LOCALISED_NAMES]
    query = (select(CustomerRecommendation, Product.name, *cols, Product.category, Product.price, Product.currency,
                    Product.url, Product.image_url, source.c.name.label("source_name"))
             .join(Product, Product.sku == CustomerRecommendation.sku)
             .outerjoin(source, source.c.sku == CustomerRecommendation.source_sku)
             .where(CustomerRecommendation.customer_id.in_(customer_ids))
             .order_by(CustomerRecommendation.customer_id, CustomerRecommendation.rank))
    out: dict[str, list[Recommendation]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            r = row._mapping
            names = {lang: r[f"name_{lang}"] for lang in LOCALISED_NAMES if r[f"name_{lang}"]}
            out.setdefault(r["customer_id"], []).append(Recommendation(
                r["customer_id"], r["rank"], r["sku"], r["kind"], r["source_sku"],
                r["source_name"] or r["source_sku"], r["customers"], r["name"], names, r["category"], r["price"],
                r["currency"], r["url"], r["image_url"]))
    return out
