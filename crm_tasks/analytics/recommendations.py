"""Product recommendations, computed in the database every night: item-to-item co-purchase statistics
(``product_pairs``) and each customer's list (``customer_recommendations``), every line with its reason.

Over the orders (amount >= 0) of the ``window_days`` business days up to the as-of date, a customer's
*basket* is the set of products they bought. For two products A and B, B in the catalogue:

- support(A, B): customers who bought both; pairs below ``min_support`` are noise and are not kept;
- confidence(A -> B) = support / buyers of A;
- lift(A -> B) = confidence / (buyers of B / buyers in the window).

Only a catalogue product can be recommended or named, so a pair whose B is not listed is not counted: a basket
costs the square of its size in pairs, and a catalogue that lags the tills (or none yet, on a first load) would
otherwise have every product of a shared account's basket (a till's walk-in customer, thousands of products)
paired with every other, for nothing.

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

Ties break by SKU in byte order on both dialects. A refresh replaces the tables whole and records its run
under its as-of date, so re-running a date gives the same tables.

Storage: the best sellers' list (the whole list of a customer without orders in the window and without recent
impressions: the same list for half the customers of a shop) is stored once, in ``popular_recommendations``;
``customer_recommendations`` holds the lists of the others, rank 1 first, and for a customer of theirs whose
list came out empty (every candidate excluded) one line of rank 0 and kind ``none``, so that the shop-wide
list does not apply to them. A profiled customer without lines has the shop-wide list (``recommendations_for``,
the segment field ``recommended_category``). ``evaluate`` trains the same model up to a
cut and scores it against a popularity baseline on what customers bought after it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy import Date as SaDate

from crm_tasks.clock import cutoff_for
from crm_tasks.errors import CrmError
from crm_tasks.settings import RecommendationSettings, Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import rows_in
from crm_tasks.store.models import (
    Customer,
    CustomerRecommendation,
    PopularRecommendation,
    Product,
    Purchase,
    RecommendationEvaluation,
    RecommendationRun,
)
from crm_tasks.store.types import UtcDateTime

log = logging.getLogger(__name__)

CROSS_SELL, UP_SELL, POPULAR = "cross_sell", "up_sell", "popular"
KINDS = (CROSS_SELL, UP_SELL, POPULAR)

# --- the statements, in the order a refresh runs them -------------------------------------------------------
# {c} (sql.byte_order) on a partition or sort key: the same groups and order as SQLite's, and PostgreSQL then
# compares the ids as bytes, several times faster than by the database's collation in its sorts of millions of rows.

# Each customer's distinct products ordered in the window (refunds are not purchases). A year's window holds about
# half the purchases: not a range of ix_purchases_time with a table lookup per row (sql.scanned), but
# ix_purchases_baskets alone, whose order is the distinct pairs' (sql.distinct_in_index_order): no table read, no
# sort or hash of the repeats.
_BASKETS = """
INSERT INTO rec_baskets (customer_id, sku)
SELECT DISTINCT customer_id, sku FROM purchases
WHERE {purchased_at} >= :start AND {purchased_at} < :end AND amount >= 0
"""

_ITEMS = "INSERT INTO rec_items (sku, buyers) SELECT sku, COUNT(*) FROM rec_baskets GROUP BY sku"

# The basket lines of catalogue products: the other side of every pair. Only written when some product bought
# in the window is not listed (otherwise they are rec_baskets itself).
_LISTED = """
INSERT INTO rec_listed (customer_id, sku)
SELECT b.customer_id, b.sku FROM rec_baskets b JOIN products d ON d.sku = b.sku
"""
_UNLISTED = "SELECT COUNT(*) FROM rec_items i WHERE NOT EXISTS (SELECT 1 FROM products d WHERE d.sku = i.sku)"

# Every pair (A, B) with the minimum support, B listed (both directions where both are): a self-join of the
# baskets on the customer (the primary keys), grouped by pair. The floats are computed as the pandas check
# computes them.
_PAIRS = """
INSERT INTO rec_pairs (sku, other_sku, support, confidence, lift)
SELECT c.sku, c.other_sku, c.support, CAST(c.support AS DOUBLE PRECISION) / ia.buyers,
       CAST(c.support AS DOUBLE PRECISION) * :buyers / (CAST(ia.buyers AS DOUBLE PRECISION) * ib.buyers)
FROM (SELECT a.sku, b.sku AS other_sku, COUNT(*) AS support
      FROM rec_baskets a JOIN {listed} b ON b.customer_id = a.customer_id AND b.sku <> a.sku
      GROUP BY a.sku, b.sku HAVING COUNT(*) >= :min_support) c
JOIN rec_items ia ON ia.sku = c.sku
JOIN rec_items ib ON ib.sku = c.other_sku
"""

# Products recently shown to a customer: not recommended again yet.
_SHOWN = """
INSERT INTO rec_shown (customer_id, sku)
SELECT DISTINCT customer_id, sku FROM recommendation_impressions WHERE shown_on > :since AND shown_on <= :as_of
"""

# Each product's best in-stock complements, numbered: what bounds the cross-sell candidates per basket line.
_NEIGHBOURS = """
INSERT INTO rec_neigh (sku, other_sku, support, confidence, pos)
SELECT sku, other_sku, support, confidence, rn FROM (
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
INSERT INTO rec_cat_top (sku, category, currency, price, buyers)
SELECT sku, category, currency, price, buyers FROM (
  SELECT d.sku, d.category, d.currency, d.price, i.buyers,
         ROW_NUMBER() OVER (PARTITION BY d.category ORDER BY i.buyers DESC, d.sku{c}) AS rn
  FROM products d JOIN rec_items i ON i.sku = d.sku WHERE d.in_stock = {true}) r
WHERE rn <= :pool
"""

_NEW_TO = """NOT EXISTS (SELECT 1 FROM rec_baskets y WHERE y.customer_id = {who} AND y.sku = {what})
  AND NOT EXISTS (SELECT 1 FROM rec_shown s WHERE s.customer_id = {who} AND s.sku = {what})"""

# The customers with a list of their own: the profiled ones with an order in the window or a recent impression;
# everyone else has the shop-wide list (popular_recommendations). With the number of products they bought and were
# shown, which bounds how many complements of a product they can have already. Counted by one grouping, not a
# lookup per customer (PostgreSQL runs those as a subplan each).
_ACTIVE = """
INSERT INTO rec_active (customer_id, bought, shown, have, crossed, banned)
SELECT u.customer_id, SUM(u.bought), SUM(u.shown), 0, 0, 0
FROM (SELECT customer_id, 1 AS bought, 0 AS shown FROM rec_baskets
      UNION ALL SELECT customer_id, 0, 1 FROM rec_shown) u
JOIN customers k ON k.customer_id = u.customer_id
GROUP BY u.customer_id
"""

# Cross-sell: the complements of the products in an active customer's basket that are new to them, the source
# with the best confidence kept; only the first per_customer can reach a list. Those are among each basket
# line's first per_customer new complements (a complement ranks the same in its line and in the list), and of a
# line's complements at most bought - 1 + shown are not new: so only its first per_customer + bought - 1 + shown
# are joined, not the whole pool. A customer who bought one product and was shown none has its first
# per_customer complements, numbered as they rank already, with no lookup and no sort (_CROSS_ONE; CROSS JOIN
# keeps SQLite walking the customers first, rather than every basket line's complements, then the customer).
_CROSS_ONE = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT a.customer_id, n.other_sku, 'cross_sell', n.confidence, n.support, n.sku, n.pos
FROM rec_active a CROSS JOIN rec_baskets x CROSS JOIN rec_neigh n
WHERE a.bought = 1 AND a.shown = 0 AND x.customer_id = a.customer_id AND n.sku = x.sku AND n.pos <= :n
"""
_CROSS = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT customer_id, other_sku, 'cross_sell', confidence, support, sku, k_rn FROM (
  SELECT customer_id, other_sku, confidence, support, sku,
         ROW_NUMBER() OVER (PARTITION BY customer_id{c} ORDER BY confidence DESC, support DESC, other_sku{c}) AS k_rn
  FROM (SELECT x.customer_id, n.other_sku, n.confidence, n.support, n.sku,
               ROW_NUMBER() OVER (PARTITION BY x.customer_id{c}, n.other_sku{c}
                                  ORDER BY n.confidence DESC, n.support DESC, n.sku{c}) AS rn
        FROM rec_active a JOIN rec_baskets x ON x.customer_id = a.customer_id
        JOIN rec_neigh n ON n.sku = x.sku AND n.pos < :n + a.bought + a.shown
        WHERE (a.bought > 1 OR a.shown > 0) AND {new}) s
  WHERE rn = 1) r
WHERE k_rn <= :n
"""

# Up-sell, in three steps so that no customer is joined to every best seller of every category they buy.
# 1. Per category and currency a customer buys, the dearest catalogue product they bought there is the reference.
_REFS = """
INSERT INTO rec_refs (customer_id, sku)
SELECT customer_id, sku FROM (
  SELECT b.customer_id, d.sku, ROW_NUMBER() OVER (PARTITION BY b.customer_id{c}, d.category{c}, d.currency
                                                 ORDER BY d.price DESC, d.sku{c}) AS rn
  FROM rec_active a JOIN rec_baskets b ON b.customer_id = a.customer_id
  JOIN products d ON d.sku = b.sku) f
WHERE rn = 1
"""
# 2. Once for the catalogue, each bought product's steps up: the best sellers of its category (rec_cat_top) in its
# currency priced above it, numbered in the order a customer's up-sells rank (best seller first, then cheapest).
_STEPS = """
INSERT INTO rec_steps (ref_sku, pos, sku, buyers, price)
SELECT ref_sku, pos, sku, buyers, price FROM (
  SELECT d.sku AS ref_sku, t.sku, t.buyers, t.price,
         ROW_NUMBER() OVER (PARTITION BY d.sku ORDER BY t.buyers DESC, t.price, t.sku{c}) AS pos
  FROM rec_items i JOIN products d ON d.sku = i.sku
  JOIN rec_cat_top t ON t.category = d.category AND t.currency = d.currency AND t.price > d.price) s
"""
# 3. Each reference's first up_sell steps, marked where the customer cannot have them: shown recently or a
# cross-sell already (a step up is never in the basket: it costs more than everything they bought in its category
# and currency). Outer joins, not EXISTS in the select list (which PostgreSQL runs as a lookup per row): each
# matches at most once, rec_shown and rec_cand holding a customer's product once. A customer's best up-sells are
# among their references' first up_sell new steps, as both rank the same way...
_UP_FIRST = """
INSERT INTO rec_up (customer_id, sku, source_sku, buyers, price, excluded)
SELECT r.customer_id, s.sku, r.sku, s.buyers, s.price,
       CASE WHEN h.customer_id IS NULL AND c.customer_id IS NULL THEN 0 ELSE 1 END
FROM rec_refs r JOIN rec_steps s ON s.ref_sku = r.sku AND s.pos <= :up_sell
LEFT JOIN rec_shown h ON h.customer_id = r.customer_id AND h.sku = s.sku
LEFT JOIN rec_cand c ON c.customer_id = r.customer_id AND c.sku = s.sku
"""
# ...so only the few references with a marked step need their further steps, those new to the customer.
_UP_REST = """
INSERT INTO rec_up (customer_id, sku, source_sku, buyers, price, excluded)
SELECT r.customer_id, s.sku, r.source_sku, s.buyers, s.price, 0
FROM (SELECT DISTINCT customer_id, source_sku FROM rec_up WHERE excluded = 1) r
JOIN rec_steps s ON s.ref_sku = r.source_sku AND s.pos > :up_sell
WHERE NOT EXISTS (SELECT 1 FROM rec_shown h WHERE h.customer_id = r.customer_id AND h.sku = s.sku)
  AND NOT EXISTS (SELECT 1 FROM rec_cand c WHERE c.customer_id = r.customer_id AND c.sku = s.sku)
"""
_UP = """
INSERT INTO rec_cand (customer_id, sku, kind, score, customers, source_sku, k_rn)
SELECT customer_id, sku, 'up_sell', buyers, buyers, source_sku, k_rn FROM (
  SELECT customer_id, sku, buyers, source_sku,
         ROW_NUMBER() OVER (PARTITION BY customer_id{c} ORDER BY buyers DESC, price, sku{c}) AS k_rn
  FROM rec_up WHERE excluded = 0) u
WHERE k_rn <= :up_sell
"""

# Popular. Of the shop's best sellers, a customer cannot have those they bought, were shown or have as a candidate
# already (rec_banned). One whose candidates cannot fill their list gets the first of the others (the fill, written
# straight into the list by _LIST).
_BANNED = """
INSERT INTO rec_banned (customer_id, sku)
SELECT b.customer_id, b.sku FROM rec_baskets b JOIN rec_popular p ON p.sku = b.sku
UNION SELECT s.customer_id, s.sku FROM rec_shown s JOIN rec_popular p ON p.sku = s.sku
UNION SELECT c.customer_id, c.sku FROM rec_cand c JOIN rec_popular p ON p.sku = c.sku
"""
# Each customer's candidates, cross-sells and banned best sellers, counted by grouping (rec_cand's and rec_banned's
# keys lead with the customer: no sort) and joined to rec_active, whose counts start at 0 for the customers
# without any.
_COUNTS = ("""
UPDATE rec_active SET have = c.have, crossed = c.crossed
FROM (SELECT customer_id, COUNT(*) AS have, SUM(CASE WHEN kind = 'cross_sell' THEN 1 ELSE 0 END) AS crossed
      FROM rec_cand GROUP BY customer_id) c
WHERE c.customer_id = rec_active.customer_id
""", """
UPDATE rec_active SET banned = b.banned
FROM (SELECT customer_id, COUNT(*) AS banned FROM rec_banned GROUP BY customer_id) b
WHERE b.customer_id = rec_active.customer_id
""")

# The list: the reserved up-sell slots after the first cross-sells, the other cross-sells after them, then
# popular products. Each kind's candidates are numbered already (k_rn) and each customer's cross-sells and
# candidates counted (rec_active), so a line's rank is arithmetic, with no sort of every line:
#   a cross-sell within the first per_customer - up_sell: its number; an up-sell: after min(cross-sells, those
#   slots); a later cross-sell: after the up-sells too; a best seller: after every candidate.
# The best sellers that fill a short list (2.7M of the 5M lines at 1M customers) go straight into it, not through
# rec_cand: only the first per_customer - candidates + banned are joined to a customer, and for most customers none
# is banned, so their best sellers are numbered by rank with no sort (the second branch), the others ranked (the
# third). CROSS JOIN: SQLite then walks the customers and looks their best sellers up by rank
# (ix_rec_popular_rank), not the reverse.
# SQLite writes the lines in the order of the target's key (sql.in_key_order), so that the key (the table itself)
# grows at its end: it sorts only each customer's few per branch and merges the branches (each walks rec_cand or
# rec_active in the customer's order). PostgreSQL writes them as they come and builds the key after
# (sql.key_built_after): sorting the 5M lines first cost a sort spilled to disk, 6 of the 18 s this statement took,
# for a table in customer order that a reader, who looks a customer's few lines up by the key, hardly notices.
_LIST = """
INSERT INTO {target} (customer_id, rank, sku, kind, source_sku, customers, score, as_of)
SELECT customer_id, rnk, sku, kind, source_sku, customers, score, :as_of FROM (
  SELECT c.customer_id, c.sku, c.kind, c.source_sku, c.customers, c.score,
         CASE WHEN c.kind = 'cross_sell' AND c.k_rn <= :n - :up_sell THEN c.k_rn
              WHEN c.kind = 'up_sell' THEN c.k_rn + CASE WHEN a.crossed < :n - :up_sell THEN a.crossed
                                                         ELSE :n - :up_sell END
              ELSE c.k_rn + a.have - a.crossed END AS rnk
  FROM rec_cand c JOIN rec_active a ON a.customer_id = c.customer_id) r
WHERE rnk <= :n
UNION ALL
SELECT a.customer_id, p.p_rank + a.have, p.sku, 'popular', NULL, p.buyers, p.buyers, :as_of
FROM rec_active a CROSS JOIN rec_popular p
WHERE a.banned = 0 AND a.have < :n AND p.p_rank <= :n - a.have
UNION ALL
SELECT customer_id, k_rn + have, sku, 'popular', NULL, buyers, buyers, :as_of FROM (
  SELECT a.customer_id, a.have, p.sku, p.buyers,
         ROW_NUMBER() OVER (PARTITION BY a.customer_id{c} ORDER BY p.p_rank) AS k_rn
  FROM rec_active a CROSS JOIN rec_popular p
  WHERE a.banned > 0 AND a.have < :n AND p.p_rank <= :n - a.have + a.banned
    AND NOT EXISTS (SELECT 1 FROM rec_banned b WHERE b.customer_id = a.customer_id AND b.sku = p.sku)) q
WHERE k_rn <= :n - have
{in_key_order}
"""
# A customer with a list of their own that came out empty (every candidate and best seller excluded): one line of
# rank 0, so that the shop-wide list does not stand in for it. Such a customer has no candidate and every best
# seller banned (a banned product is a best seller: rec_banned).
_EMPTY = """
INSERT INTO customer_recommendations (customer_id, rank, sku, kind, source_sku, customers, score, as_of)
SELECT a.customer_id, 0, '', 'none', NULL, 0, 0, :as_of FROM rec_active a
WHERE a.have = 0 AND a.banned >= (SELECT COUNT(*) FROM rec_popular)
"""
# The shop-wide list, once.
_SHOP = """
INSERT INTO popular_recommendations (rank, sku, customers, as_of)
SELECT p_rank, sku, buyers, :as_of FROM rec_popular WHERE p_rank <= :n
"""
# The evaluation's lists are scored in the database, so there every customer without orders in the window (and
# without recent impressions) gets the best sellers as they rank, written out.
_PLAIN = """
INSERT INTO {target} (customer_id, rank, sku, kind, source_sku, customers, score, as_of)
SELECT k.customer_id, p.p_rank, p.sku, 'popular', NULL, p.buyers, p.buyers, :as_of
FROM customers k CROSS JOIN rec_popular p
WHERE p.p_rank <= :n AND NOT EXISTS (SELECT 1 FROM rec_baskets b WHERE b.customer_id = k.customer_id)
  AND NOT EXISTS (SELECT 1 FROM rec_shown s WHERE s.customer_id = k.customer_id)
"""
# What a refresh stored, in one pass: lines by kind, lists (a rank 1) and full lists (a rank per_customer).
_SIZES = """
SELECT kind, COUNT(*), SUM(CASE WHEN rank = 1 THEN 1 ELSE 0 END), SUM(CASE WHEN rank = :n THEN 1 ELSE 0 END)
FROM customer_recommendations GROUP BY kind
"""

_SCRATCH = {
    "rec_baskets": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_items": "sku VARCHAR(64) PRIMARY KEY, buyers INTEGER",
    "rec_listed": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_pairs": "sku VARCHAR(64), other_sku VARCHAR(64), support INTEGER, confidence DOUBLE PRECISION, "
                 "lift DOUBLE PRECISION, PRIMARY KEY (sku, other_sku)",
    "rec_shown": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    # Keyed by position: a basket line reads only its first complements, a range of the key (cross-sell).
    "rec_neigh": "sku VARCHAR(64), other_sku VARCHAR(64), support INTEGER, confidence DOUBLE PRECISION, "
                 "pos INTEGER, PRIMARY KEY (sku, pos)",
    "rec_popular": "sku VARCHAR(64) PRIMARY KEY, buyers INTEGER, p_rank INTEGER",
    "rec_cat_top": "sku VARCHAR(64) PRIMARY KEY, category VARCHAR(64), currency VARCHAR(3), price NUMERIC, "
                   "buyers INTEGER",
    "rec_cand": "customer_id VARCHAR(64), sku VARCHAR(64), kind VARCHAR(16), score DOUBLE PRECISION, "
                "customers INTEGER, source_sku VARCHAR(64), k_rn INTEGER, PRIMARY KEY (customer_id, sku)",
    "rec_refs": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_steps": "ref_sku VARCHAR(64), pos INTEGER, sku VARCHAR(64), buyers INTEGER, price NUMERIC, "
                 "PRIMARY KEY (ref_sku, pos)",
    "rec_up": "customer_id VARCHAR(64), sku VARCHAR(64), source_sku VARCHAR(64), buyers INTEGER, price NUMERIC, "
              "excluded INTEGER, PRIMARY KEY (customer_id, sku)",
    "rec_banned": "customer_id VARCHAR(64), sku VARCHAR(64), PRIMARY KEY (customer_id, sku)",
    "rec_active": "customer_id VARCHAR(64) PRIMARY KEY, bought INTEGER, shown INTEGER, have INTEGER, "
                  "crossed INTEGER, banned INTEGER",
}
# PostgreSQL joins these whole, by hashing; it looks rows up one by one only in the indexes below
# (sql.hashed_only).
_HASHED = ("rec_baskets", "rec_items", "rec_listed", "rec_pairs", "rec_shown", "rec_neigh", "rec_cand", "rec_refs",
           "rec_steps", "rec_up", "rec_banned", "rec_active")
# Up-sell looks a category's best sellers up by category and currency; the popular fill the first best sellers
# by rank.
_SCRATCH_INDEXES = {"rec_cat_top": "CREATE INDEX IF NOT EXISTS ix_rec_cat_top ON rec_cat_top (category, currency)",
                    "rec_popular": "CREATE INDEX IF NOT EXISTS ix_rec_popular_rank ON rec_popular (p_rank)"}


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
    the previous ones, in one transaction; returns the counts (a customer with the shop-wide list counted as
    if it were written out for them)."""
    started = time.perf_counter()
    rules = cfg.recommendations
    result = RefreshResult(as_of, window_start(rules, as_of))
    with engine.begin() as conn:
        result.buyers, result.phases = _model(conn, cfg, rules, as_of, exclude_shown=True)
        mark = time.perf_counter()
        sql.empty(conn, "product_pairs", "customer_recommendations", "popular_recommendations")
        result.pairs = sql.execute(conn, "INSERT INTO product_pairs (sku, other_sku, as_of, support, confidence, lift) "
                                         "SELECT sku, other_sku, :as_of, support, confidence, lift FROM rec_pairs",
                                   {"as_of": as_of}, as_of=SaDate()).rowcount
        params = {"as_of": as_of, "n": rules.per_customer}
        with sql.key_built_after(conn, "customer_recommendations"):
            _list(conn, rules, as_of, "customer_recommendations")
            sql.execute(conn, _EMPTY, params, as_of=SaDate())
        shop = sql.execute(conn, _SHOP, params, as_of=SaDate()).rowcount
        # Every line was just rewritten: the statistics now, not whenever autovacuum gets to them (never, where
        # it is off). Without them PostgreSQL plans planning's look-ups of 900 customers' lists as scans of all
        # 10M lines, each compiled by its JIT: 40 s instead of 4 for a 100k offer (bench/README.md, campaigns).
        _analyze(conn, "product_pairs", "customer_recommendations", "popular_recommendations")
        result.phases["store"] = round(time.perf_counter() - mark, 3)
        full = 0
        for kind, n, lists, full_lists in sql.execute(conn, _SIZES, params):
            if kind in result.by_kind:
                result.by_kind[kind] = int(n)
                result.customers += int(lists or 0)
                full += int(full_lists or 0)
        # Every profiled customer without a list of their own has the shop-wide one.
        shared = sql.count(conn, "SELECT COUNT(*) FROM customers") - sql.count(conn, "SELECT COUNT(*) FROM rec_active")
        if shop:
            result.customers += shared
            result.by_kind[POPULAR] += shared * shop
            full += shared if shop == rules.per_customer else 0
        result.short_lists = result.customers - full
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
    # Temporary tables have no statistics until analysed: PostgreSQL would plan the joins as if empty; tables
    # rewritten whole have those of their previous contents.
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {table}")


def _model(conn: Connection, cfg: Settings, rules: RecommendationSettings, as_of: date, *,
           exclude_shown: bool) -> tuple[int, dict[str, float]]:
    """Fill the scratch tables up to the candidates (``rec_pairs``, ``rec_popular``, ``rec_cand``,
    ``rec_active``) as of the end of ``as_of``; returns the window's buyers and the seconds per step."""
    sql.scratch_memory(conn, 512)  # the scratch tables hold millions of rows at 1M customers
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")  # the lists' key, built in one sort
        conn.exec_driver_sql("SET LOCAL jit = off")  # one-off statements: compiling costs more than it saves
    for name, columns in _SCRATCH.items():
        sql.scratch(conn, name, columns, *filter(None, [_SCRATCH_INDEXES.get(name)]))
    sql.hashed_only(conn, *_HASHED)
    c, true = sql.byte_order(conn), sql.true(conn)
    params = {"start": cutoff_for(window_start(rules, as_of) - timedelta(days=1), cfg.timezone),
              "end": cutoff_for(as_of, cfg.timezone), "as_of": as_of,
              "since": as_of - timedelta(days=rules.recent_days), "min_support": rules.min_support,
              "pool": rules.pool, "n": rules.per_customer, "up_sell": rules.up_sell}
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        phases[name] = round(time.perf_counter() - mark, 3)
        mark = time.perf_counter()

    baskets = _BASKETS.format(purchased_at=sql.scanned("purchased_at", conn))
    with sql.distinct_in_index_order(conn):
        sql.execute(conn, baskets, params, start=UtcDateTime(), end=UtcDateTime())
    conn.exec_driver_sql(_ITEMS)
    _analyze(conn, "rec_baskets", "rec_items")
    params["buyers"] = sql.count(conn, "SELECT COUNT(DISTINCT customer_id) FROM rec_baskets")
    step("baskets")
    listed = "rec_baskets"
    if sql.count(conn, _UNLISTED):
        conn.exec_driver_sql(_LISTED)
        _analyze(conn, "rec_listed")
        listed = "rec_listed"
    sql.execute(conn, _PAIRS.format(listed=listed), params)
    _analyze(conn, "rec_pairs")
    step("pairs")
    if exclude_shown and rules.recent_days:
        sql.execute(conn, _SHOWN, params, since=SaDate(), as_of=SaDate())
    for statement in (_NEIGHBOURS, _POPULAR, _CATEGORY_TOP):
        sql.execute(conn, statement.format(c=c, true=true), params)
    sql.execute(conn, _ACTIVE, params)
    _analyze(conn, "rec_shown", "rec_neigh", "rec_popular", "rec_cat_top", "rec_active")
    sql.execute(conn, _CROSS_ONE, params)
    sql.execute(conn, _CROSS.format(c=c, new=_NEW_TO.format(who="x.customer_id", what="n.other_sku")), params)
    _analyze(conn, "rec_cand")
    step("cross_sell")
    for statement in (_REFS, _STEPS):
        sql.execute(conn, statement.format(c=c), params)
    _analyze(conn, "rec_refs", "rec_steps")
    sql.execute(conn, _UP_FIRST, params)
    _analyze(conn, "rec_up")
    sql.execute(conn, _UP_REST, params)
    sql.execute(conn, _UP.format(c=c), params)
    step("up_sell")
    sql.execute(conn, _BANNED, params)
    _analyze(conn, "rec_banned")
    for statement in _COUNTS:
        sql.execute(conn, statement, params)
    _analyze(conn, "rec_active")
    step("popular")
    return params["buyers"], phases


def _list(conn: Connection, rules: RecommendationSettings, as_of: date, target: str, *, plain: bool = False) -> int:
    """Rank the candidates into each customer's list in ``target`` (with ``plain``, the best sellers' list written
    out for every customer without orders or impressions too); returns the lines written."""
    params = {"as_of": as_of, "n": rules.per_customer, "up_sell": rules.up_sell}
    spelled = {"target": target, "c": sql.byte_order(conn), "in_key_order": sql.in_key_order(conn, "customer_id, rnk")}
    return sum(sql.execute(conn, statement.format(**spelled), params, as_of=SaDate()).rowcount
               for statement in (_LIST, _PLAIN)[: 2 if plain else 1])


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
        _list(conn, rules, cut, "rec_final", plain=True)
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
    source_names: dict[str, str] = field(default_factory=dict)  # the source's names by language, where given

    @property
    def reason(self) -> str:
        return reason(self.kind, self.source_name, self.customers)

    def name_in(self, language: str) -> str:
        """The product's name in a language, else the catalogue's default (English) name."""
        return self.names.get(language, self.name)

    def source_name_in(self, language: str) -> str | None:
        """The name in a language of the product this one is recommended from (cross-sell, up-sell), else its
        default name; None for a best seller."""
        return self.source_names.get(language, self.source_name)

    def to_dict(self) -> dict:
        return asdict(self) | {"price": str(self.price), "reason": self.reason}


def described_columns() -> list:
    """The catalogue's columns a Recommendation carries (Product's: name, localised names, category, price,
    currency, links)."""
    return [Product.name, *(getattr(Product, f"name_{lang}") for lang in LOCALISED_NAMES), Product.category,
            Product.price, Product.currency, Product.url, Product.image_url]


def described_line(m, *, customer_id: str, rank: int, kind: str, customers: int, source_sku: str | None = None,
                   source_name: str | None = None, source_names: dict[str, str] | None = None) -> Recommendation:
    """A Recommendation from a row holding ``described_columns()`` (its ``sku`` too)."""
    names = {lang: m[f"name_{lang}"] for lang in LOCALISED_NAMES if m[f"name_{lang}"]}
    return Recommendation(customer_id, rank, m["sku"], kind, source_sku, source_name, customers, m["name"], names,
                          m["category"], m["price"], m["currency"], m["url"], m["image_url"], source_names or {})


def recommendations_for(engine: Engine, customer_ids: list[str],
                        limit: int | None = None) -> dict[str, list[Recommendation]]:
    """The stored lists of these customers, best first, with the products' descriptions; a profiled customer
    without a list of their own has the shop-wide list (``popular_recommendations``), customers without a list
    are absent. Products that left the catalogue since the refresh are left out. ``limit``: at most the first
    this many ranks of each list (an e-mail shows three of ten: reading the rest was nine tenths of the time).

    Any number of customers, on one connection: the lines are read narrow (``rows_in``: IN_CHUNK customers a query),
    and each product they name is described once (a plan's 100k customers name a few thousand products; joining
    the catalogue into every line, and building each line's names anew, was most of the planner's time)."""
    r = CustomerRecommendation
    lines = select(r.customer_id, r.rank, r.sku, r.kind, r.source_sku, r.customers).order_by(r.customer_id, r.rank)
    if limit is not None:
        lines = lines.where(r.rank <= limit)
    wanted = list(dict.fromkeys(customer_ids))
    with engine.connect() as conn:
        found = rows_in(conn, lines, r.customer_id, wanted)
        seen = {line[0] for line in found}
        products = _described(conn, {sku for line in found for sku in (line[2], line[4]) if sku is not None})
        out: dict[str, list[Recommendation]] = {}
        for cid, rank, sku, kind, source_sku, customers in found:
            product = products.get(sku)
            # Outer rows: a customer whose lines all left the catalogue, or whose list came out empty (rank 0),
            # still has a list of their own, and so not the shop-wide one.
            if rank < 1 or product is None:
                continue
            # A source missing from the catalogue is named by its SKU, in every language.
            source = products.get(source_sku) if source_sku is not None else None
            out.setdefault(cid, []).append(Recommendation(
                cid, rank, sku, kind, source_sku, source.name if source else source_sku, customers, product.name,
                product.names, product.category, product.price, product.currency, product.url, product.image_url,
                source.names if source else {}))
        missing = [c for c in wanted if c not in seen]
        if missing:
            p = PopularRecommendation
            shop = (select(p.rank, p.sku, p.customers, *described_columns()).join(Product, Product.sku == p.sku)
                    .where(*([p.rank <= limit] if limit is not None else [])).order_by(p.rank))
            shared = [row._mapping for row in conn.execute(shop)]
            profiled = {cid for (cid,) in rows_in(conn, select(Customer.customer_id), Customer.customer_id,
                                                  missing)} if shared else set()
            for cid in missing:
                if cid in profiled:
                    out[cid] = [described_line(m, customer_id=cid, rank=m["rank"], kind=POPULAR,
                                               customers=m["customers"]) for m in shared]
    return dict(sorted(out.items()))


def _described(conn: Connection, skus: set[str]) -> dict[str, Recommendation]:
    """Each of these catalogue products described once (as a Recommendation whose line fields are empty): its
    names by language, category, price and links."""
    return {row.sku: described_line(row._mapping, customer_id="", rank=0, kind="", customers=0)
            for row in rows_in(conn, select(Product.sku, *described_columns()), Product.sku, sorted(skus))}
