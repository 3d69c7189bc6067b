"""Customer segments, recomputed as of a date, with their history.

Everything is computed as of the end of one business day (the *cutoff*: the
start of the next local day in the configured time zone). A recompute is one
transaction, set-based SQL on SQLite and PostgreSQL alike:

1. **Scores** (``customer_scores``, one row per profile existing at the cutoff).
   Orders, first and last order come from all history; frequency and monetary
   from the RFM window (default: all history). Amounts of every currency are
   converted into the base currency at the fixed rates of ``crm.yaml``; a
   currency without a rate stops the run, naming it. Days count back in whole
   24-hour periods from the cutoff, the way custom rules count them
   (``rules.py``): a purchase on the as-of day is 0 days ago, on the day
   before 1 day ago.
   With no window and no purchase after the cutoff (the nightly case), the totals
   come from ``customer_metrics``, which ingest keeps current; otherwise
   (looking back, or a window) purchases are rescanned up to the cutoff.

2. **RFM scores**, 1 to 5 by quintile of rank among customers with an order in
   the window: recency (more recent scores higher), frequency and monetary
   (more scores higher). Ties share the lowest rank of their group and so always
   the same score: ``score = 1 + floor(5 * (rank - 1) / N)``. Where many
   customers tie (most have one order) a score can be empty; that is the honest
   reading of the data, not an error. The named segment comes from R and
   FM = round-half-up of (F + M) / 2 through ``RFM_GRID`` below.

3. **Lifecycle stage**, first match wins:

   | stage | rule |
   |---|---|
   | prospect | no order up to the cutoff (a profile only, or only refunds) |
   | new | first order less than ``new_days`` days ago |
   | reactivated | last order less than ``new_days`` days ago, and at least ``churn_days`` after the order before it |
   | churned | no order for ``churn_days`` days or more |
   | at_risk | silent for more than ``at_risk_min_days`` and more than ``at_risk_factor`` usual gaps |
   | active | everyone else with an order |

   The usual gap is (last - first order) / (orders - 1), or
   ``single_order_gap_days`` for a customer with one order.

4. **Value tier**: ``high_value`` is the top ``high_value_share`` of scored
   customers by monetary (ties at the boundary all included);
   ``high_potential`` are the other new, reactivated, potential-loyalist or
   promising customers whose average basket or frequency is above the median of
   scored customers; everyone else is ``other``.

5. **Custom segments** from ``segments/*.yaml`` (see ``crm_tasks/segments/rules.py``),
   in dependency order. A broken file is reported and its last good membership
   is carried forward unchanged; the other segments are computed as usual.

6. **History**: ``segment_memberships`` holds who was in which segment from
   ``valid_from`` up to (not including) ``valid_to``; the run closes the
   memberships that ended and opens the new ones, and writes each segment's
   size with how many entered and left to ``segment_sizes``. Re-running a date
   first undoes that date (and any later one, which is reported), so the result
   is the same however often it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    Integer,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.exc import DBAPIError

from crm_tasks.clock import Phases, cutoff_for
from crm_tasks.errors import ConfigError, CrmError
from crm_tasks.segments import rules
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.models import (
    Customer,
    CustomerClv,
    CustomerRecommendation,
    CustomerScore,
    PopularRecommendation,
    Product,
    Purchase,
    Segment,
    SegmentMembership,
    SegmentRun,
    SegmentSize,
    SegmentStage,
    SegmentStatus,
)
from crm_tasks.store.types import UtcDateTime

log = logging.getLogger(__name__)
DAY = 86_400

# --- the named RFM segments --------------------------------------------------------------
# Rows: the recency score R. Columns: FM, the frequency and monetary scores combined,
# round-half-up of (F + M) / 2, from 1 to 5.
RFM_GRID: dict[int, tuple[str, str, str, str, str]] = {
    #     FM=1              FM=2                   FM=3                   FM=4              FM=5
    5: ("new_customers", "potential_loyalists", "potential_loyalists", "champions", "champions"),
    4: ("promising", "potential_loyalists", "potential_loyalists", "loyal", "champions"),
    3: ("about_to_sleep", "need_attention", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"),
    1: ("lost", "lost", "at_risk", "cant_lose_them", "cant_lose_them"),
}
RFM_SEGMENTS = {
    "champions": "Bought recently, buy often and spend the most.",
    "loyal": "Buy often and spend well; not necessarily in the last weeks.",
    "potential_loyalists": "Recent customers with average frequency and spend.",
    "new_customers": "Bought very recently, but little so far.",
    "promising": "Recent shoppers who have not spent much yet.",
    "need_attention": "Average recency, frequency and spend: could go either way.",
    "about_to_sleep": "Below-average recency and low frequency and spend.",
    "at_risk": "Spent well and bought often, but long ago.",
    "cant_lose_them": "Among the best customers by frequency and spend, and gone quiet.",
    "hibernating": "Last purchase long ago, low frequency and spend.",
    "lost": "The lowest recency, frequency and spend.",
}
LIFECYCLE_STAGES = {
    "prospect": "A profile with no order yet (acquisition).",
    "new": "First order within the last new_days days (acquisition).",
    "active": "Buying at their usual pace (retention).",
    "at_risk": "Silent for longer than their usual gap between orders (retention).",
    "churned": "No order for churn_days days or more.",
    "reactivated": "Came back recently after having churned (retention).",
}
VALUE_TIERS = {
    "high_value": "The top share of customers by monetary value.",
    "high_potential": "New or growing customers whose basket or frequency is above the median.",
    "other": "Everyone else.",
}
FAMILIES = {"rfm": RFM_SEGMENTS, "lifecycle": LIFECYCLE_STAGES, "value": VALUE_TIERS}


def builtin_segments() -> dict[str, tuple[str, str]]:
    """Every built-in segment: name -> (family, description)."""
    return {f"{family}:{name}": (family, desc) for family, names in FAMILIES.items() for name, desc in names.items()}


# --- fields a custom rule can use --------------------------------------------------------

_PROFILE_FIELDS = [
    ("customer_id", "text", "The customer's id."),
    ("country", "text", "ISO 3166 country code, for example IN."),
    ("locale", "text", "BCP 47 locale, for example te-IN."),
    ("timezone", "text", "IANA time zone, for example Asia/Kolkata."),
    ("email_consent", "boolean", "Agreed to marketing email."),
    ("has_email", "boolean", "Has an email address."),
    ("has_phone", "boolean", "Has a phone number."),
    ("birthday", "date", "Date of birth."),
    ("created_at", "timestamp", "When the profile was created."),
    ("updated_at", "timestamp", "When the profile last changed."),
]
_SCORE_FIELDS = [
    ("orders", "integer", "Orders in all history up to the as-of date."),
    ("frequency", "integer", "Orders in the RFM window."),
    ("monetary", "money", "Net revenue in the RFM window, in the base currency."),
    ("avg_basket", "money", "monetary / frequency, in the base currency."),
    ("recency_days", "integer", "Whole days since the last order."),
    ("tenure_days", "integer", "Whole days since the first order."),
    ("first_purchase_at", "timestamp", "The first order."),
    ("last_purchase_at", "timestamp", "The last order."),
    ("r_score", "integer", "RFM recency score, 1-5."),
    ("f_score", "integer", "RFM frequency score, 1-5."),
    ("m_score", "integer", "RFM monetary score, 1-5."),
    ("rfm_segment", "text", "Named RFM segment, for example champions."),
    ("lifecycle", "text", "Lifecycle stage, for example at_risk."),
    ("value_tier", "text", "high_value, high_potential or other."),
]
# From the latest lifetime-value fit on or before the as-of date (customer_clv, crm_tasks/analytics/clv.py);
# empty (unknown: no comparison is true) for a customer without a score or before the first fit.
_CLV_FIELDS = [
    ("p_alive", "number", "Probability the customer is still buying (BG/NBD), 0-1."),
    ("purchases_90", "number", "Expected purchase days in the next 90 days."),
    ("purchases_365", "number", "Expected purchase days in the next 365 days."),
    ("clv_12m", "money", "Expected spend over the next 12 months, discounted, in the base currency."),
]
# From the latest recommendations refreshed on or before the as-of date (customer_recommendations, else the
# shop-wide popular_recommendations; crm_tasks/analytics/recommendations.py); empty for a customer without a list.
_RECOMMENDATION_FIELDS = [
    ("recommended_category", "text", "Catalogue category of the customer's first recommended product."),
]
_ATTRIBUTE_TYPES = {"date": "date", "number": "number", "text": "text", "boolean": "boolean"}


def rule_fields(cfg: Settings) -> dict[str, rules.FieldInfo]:
    """The documented fields of a custom rule: profile, scores and declared custom attributes."""
    out = {n: rules.FieldInfo(n, t, d) for n, t, d in _PROFILE_FIELDS + _SCORE_FIELDS + _CLV_FIELDS
           + _RECOMMENDATION_FIELDS}
    for attr in cfg.custom_attributes:
        out[attr.name] = rules.FieldInfo(attr.name, _ATTRIBUTE_TYPES[attr.type],
                                         attr.description or "Custom attribute (crm.yaml).")
    return out


def _rule_columns(c, s, cfg: Settings, dialect: str, as_of: date) -> dict:
    cols = {n: c.c[n] for n in ("customer_id", "country", "locale", "timezone", "email_consent", "birthday",
                                "created_at", "updated_at")}
    cols["has_email"] = c.c.email.is_not(None)
    cols["has_phone"] = c.c.phone.is_not(None)
    cols.update({n: s.c[n] for n, _t, _d in _SCORE_FIELDS})
    # A lookup by primary key, made only where a rule names the field (a join would cost every rule);
    # a fit after the as-of date is not seen when looking back.
    v = CustomerClv.__table__
    cols.update({n: select(v.c[n]).where(v.c.customer_id == c.c.customer_id, v.c.as_of <= as_of).scalar_subquery()
                 for n, _t, _d in _CLV_FIELDS})
    # The customer's own first line, else, for a customer without a list of their own, the shop-wide list's
    # first (popular_recommendations: the list of everyone without orders or recent impressions, stored once).
    r, shop = CustomerRecommendation.__table__, PopularRecommendation.__table__
    own = (select(Product.category).join(r, r.c.sku == Product.sku)
           .where(r.c.customer_id == c.c.customer_id, r.c.rank == 1, r.c.as_of <= as_of).scalar_subquery())
    shared = (select(Product.category).join(shop, shop.c.sku == Product.sku)
              .where(shop.c.rank == 1, shop.c.as_of <= as_of).scalar_subquery())
    has_list = select(r.c.rank).where(r.c.customer_id == c.c.customer_id).exists()
    cols["recommended_category"] = func.coalesce(own, case((~has_list, shared)))
    for attr in cfg.custom_attributes:
        value = c.c.attributes[attr.name]
        if attr.type == "number":
            cols[attr.name] = value.as_float()
        elif attr.type == "boolean":
            cols[attr.name] = value.as_boolean()
        elif attr.type == "date":
            text_value = value.as_string()
            # Stored as ISO text: PostgreSQL needs a real date, SQLite compares the text.
            cols[attr.name] = cast(text_value, Date) if dialect == "postgresql" else type_coerce(text_value, Date)
        else:
            cols[attr.name] = value.as_string()
    return cols


# --- results -------------------------------------------------------------------------------


@dataclass
class SegmentCount:
    name: str
    family: str
    size: int
    entered: int
    exited: int
    previous: int | None = None  # size at the previous recompute, if any
    status: str = SegmentStatus.ACTIVE

    @property
    def change(self) -> int | None:
        return None if self.previous is None else self.size - self.previous


@dataclass
class RecomputeResult:
    as_of: date
    source: str
    customers: int
    scored: int
    buyers_without_profile: int
    memberships: int
    entered: int
    exited: int
    segments: list[SegmentCount]
    problems: list[str] = field(default_factory=list)
    cleared_dates: list[date] = field(default_factory=list)  # later recomputes undone by this one
    dry_run: bool = False
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for the log and the benchmark

    def summary(self) -> dict:
        """Counts only (no customer ids): small enough for XCom and logs."""
        out = asdict(self)
        out["as_of"] = self.as_of.isoformat()
        out["cleared_dates"] = [d.isoformat() for d in self.cleared_dates]
        out["segments"] = [asdict(s) | {"change": s.change} for s in self.segments]
        return out


# --- time -------------------------------------------------------------------------------------


# --- SQL of a recompute ----------------------------------------------------------------------

# Per customer and currency, from the totals ingest keeps current (the nightly case):
# customer_metrics is keyed by customer, so the outer GROUP BY streams without a sort.
_FROM_METRICS = """
SELECT customer_id, currency, orders, first_purchase_at AS first_at, last_purchase_at AS last_at,
       orders AS frequency, revenue AS revenue_w
FROM customer_metrics
"""

# The same figures from the purchases themselves, up to the cutoff: for looking back,
# or for an RFM window. Definitions as in metrics.py: refunds (amount < 0) lower
# revenue but are not orders.
_FROM_PURCHASES = """
SELECT customer_id, currency,
       SUM(CASE WHEN amount >= 0 THEN 1 ELSE 0 END) AS orders,
       MIN(CASE WHEN amount >= 0 THEN purchased_at END) AS first_at,
       MAX(CASE WHEN amount >= 0 THEN purchased_at END) AS last_at,
       SUM(CASE WHEN amount >= 0 AND purchased_at >= :window_start THEN 1 ELSE 0 END) AS frequency,
       SUM(CASE WHEN purchased_at >= :window_start THEN amount ELSE 0 END) AS revenue_w
FROM purchases
WHERE purchased_at < :cutoff
GROUP BY customer_id, currency
"""

# Whole seconds of the first and last order are computed here, once per row, inside the
# aggregate (SQLite would otherwise re-parse the timestamp text wherever they are used).
# Counts stay integers (PostgreSQL's SUM of BIGINT is NUMERIC, slower to sort).
_PER_CUSTOMER = """
SELECT customer_id, CAST(SUM(orders) AS BIGINT) AS orders, MIN(first_at) AS first_at, MAX(last_at) AS last_at,
       MIN({first_epoch}) AS first_s, MAX({last_epoch}) AS last_s,
       CAST(SUM(frequency) AS BIGINT) AS frequency, SUM({converted}) AS monetary
FROM ({source}) per_currency
GROUP BY customer_id
"""

# Step 1, the base figures and the lifecycle stage of every profile existing at the cutoff,
# into a scratch table (temporary: never in the database's journal).
# Days: an instant in [cutoff - (N+1) days, cutoff - N days) is N days ago, in whole
# seconds on both dialects (hence the - 1: the first second of the as-of day is 0 days ago).
# The gap before the last order is looked up only for recent repeat buyers, one seek
# each into ix_purchases_customer (the second-latest order, ties included).
_BASE = """
CREATE TEMP TABLE seg_base {on_commit} AS
SELECT customer_id, orders, frequency, monetary, avg_basket, recency_days, tenure_days,
       first_at, last_at, previous_gap_days,
       CASE WHEN orders = 0 THEN 'prospect'
            WHEN tenure_days < :new_days THEN 'new'
            WHEN recency_days < :new_days AND previous_gap_days >= :churn_days THEN 'reactivated'
            WHEN recency_days >= :churn_days THEN 'churned'
            WHEN recency_days > :at_risk_min_days AND recency_days > :at_risk_factor * usual_gap_days
                 THEN 'at_risk'
            ELSE 'active' END AS lifecycle
FROM (
    SELECT c.customer_id, COALESCE(pc.orders, 0) AS orders, COALESCE(pc.frequency, 0) AS frequency,
           COALESCE(pc.monetary, 0) AS monetary, {avg_basket} AS avg_basket,
           (:cutoff_epoch - 1 - pc.last_s) / {day} AS recency_days,
           (:cutoff_epoch - 1 - pc.first_s) / {day} AS tenure_days,
           pc.first_at, pc.last_at,
           CASE WHEN pc.orders >= 2 THEN (pc.last_s - pc.first_s) / ({day}.0 * (pc.orders - 1))
                ELSE :single_gap END AS usual_gap_days,
           CASE WHEN pc.orders >= 2 AND (:cutoff_epoch - 1 - pc.last_s) / {day} < :new_days THEN
               (pc.last_s - {previous_epoch}) / {day} END AS previous_gap_days
    FROM customers c
    LEFT JOIN ({per_customer}) pc ON pc.customer_id = c.customer_id
    WHERE c.created_at < :cutoff
    {fence}
) b
"""
# The fence keeps the planner from merging b into the outer query, which would copy the
# previous-order lookup into every place that uses its result and run it twice.

# Step 2, the quintile scores of the customers with an order in the window, and the
# rows written once. The ranks are computed over the four narrow columns they need
# (sorting whole rows four times costs several times more). High value is the top
# share by monetary, ties at the boundary included (rank from the top <= share * scored).
_SCORES = """
INSERT INTO customer_scores (
    customer_id, as_of, orders, frequency, monetary, avg_basket, recency_days, tenure_days,
    first_purchase_at, last_purchase_at, previous_gap_days, r_score, f_score, m_score,
    rfm_segment, lifecycle, value_tier)
SELECT b.customer_id, :as_of, b.orders, b.frequency, b.monetary, b.avg_basket, b.recency_days, b.tenure_days,
       b.first_at, b.last_at, b.previous_gap_days, r.r_score, r.f_score, r.m_score,
       {rfm_case},
       b.lifecycle,
       CASE WHEN (r.v_rank - 1) * :share_den < :share_num * :scored THEN 'high_value' ELSE 'other' END
FROM seg_base b
LEFT JOIN (
    SELECT customer_id, v_rank,
           1 + 5 * (r_rank - 1) / :scored AS r_score,
           1 + 5 * (f_rank - 1) / :scored AS f_score,
           1 + 5 * (m_rank - 1) / :scored AS m_score
    FROM (
        SELECT customer_id,
               RANK() OVER (ORDER BY recency_days DESC) AS r_rank,
               RANK() OVER (ORDER BY frequency) AS f_rank,
               RANK() OVER (ORDER BY monetary) AS m_rank,
               RANK() OVER (ORDER BY monetary DESC) AS v_rank
        FROM (SELECT customer_id, recency_days, frequency, monetary FROM seg_base WHERE frequency > 0) scored
    ) ranked
) r ON r.customer_id = b.customer_id
"""
_PREVIOUS_ORDER = """(SELECT p.purchased_at FROM purchases p
    WHERE p.customer_id = c.customer_id AND p.amount >= 0 AND p.purchased_at < :cutoff
    ORDER BY p.purchased_at DESC LIMIT 1 OFFSET 1)"""

# High potential: candidates in the right stage whose basket or frequency beats the median.
_HIGH_POTENTIAL = """
UPDATE customer_scores SET value_tier = 'high_potential'
WHERE value_tier = 'other' AND frequency > 0
  AND (lifecycle IN ('new', 'reactivated') OR rfm_segment IN ('potential_loyalists', 'promising'))
  AND (avg_basket > :median_basket OR frequency > :median_frequency)
"""
# The median of the scored customers: the middle value, or the mean of the two middle ones.
_MEDIAN = """
SELECT AVG(v) FROM (
    SELECT {column} AS v FROM customer_scores WHERE frequency > 0 ORDER BY {column} LIMIT :take OFFSET :skip
) middle
"""

# Built-in memberships straight from the scores: one row per customer and family.
# History of the built-in families, diffed straight from the scores (one row per customer
# and family), without staging a row per membership; one pass each way for all families.
# Step 1: close the open memberships whose customer now has another value in that family.
_CLOSE_BUILTIN = """
UPDATE segment_memberships SET valid_to = :as_of
WHERE valid_to IS NULL AND segment_id IN ({ids})
  AND NOT EXISTS (SELECT 1 FROM customer_scores s
                  WHERE s.customer_id = segment_memberships.customer_id
                    AND CASE segment_memberships.segment_id {whens} END)
"""
# Step 2: open the new ones; ux_segment_memberships_open answers each probe.
_OPEN_BUILTIN = """
INSERT INTO segment_memberships (segment_id, customer_id, valid_from)
SELECT x.segment_id, x.customer_id, :as_of FROM (
    SELECT g.id AS segment_id, s.customer_id FROM customer_scores s JOIN segments g ON g.name = 'rfm:' || s.rfm_segment
    UNION ALL
    SELECT g.id, s.customer_id FROM customer_scores s JOIN segments g ON g.name = 'lifecycle:' || s.lifecycle
    UNION ALL
    SELECT g.id, s.customer_id FROM customer_scores s JOIN segments g ON g.name = 'value:' || s.value_tier
) x
{not_open}
"""
_NOT_OPEN = """WHERE NOT EXISTS (SELECT 1 FROM segment_memberships m
                  WHERE m.valid_to IS NULL AND m.segment_id = x.segment_id AND m.customer_id = x.customer_id)"""
# On a first run nothing is open, so every membership is new and the probe is left out: with the
# history's indexes dropped for the bulk write and statistics that call the table empty, PostgreSQL
# planned the probe as a nested loop scanning the growing table once per row (24 minutes for 200k
# customers). Without it the statement has no plan that can go quadratic.
_FAMILY_COLUMNS = {"rfm": "rfm_segment", "lifecycle": "lifecycle", "value": "value_tier"}

# Custom segments are staged (segment_stage) and diffed the same way, for the segments
# computed this time (a broken one keeps its memberships).
_CLOSE_CUSTOM = """
UPDATE segment_memberships SET valid_to = :as_of
WHERE valid_to IS NULL AND segment_id IN ({ids})
  AND NOT EXISTS (SELECT 1 FROM segment_stage s
                  WHERE s.segment_id = segment_memberships.segment_id
                    AND s.customer_id = segment_memberships.customer_id)
"""
# The new members are a set difference, not a probe per staged row: EXCEPT is a hash or a sort on
# both dialects and has no plan that rescans the history per row, whatever its statistics say.
_OPEN_CUSTOM = """
INSERT INTO segment_memberships (segment_id, customer_id, valid_from)
SELECT n.segment_id, n.customer_id, :as_of FROM (
    SELECT segment_id, customer_id FROM segment_stage WHERE segment_id IN ({ids})
    EXCEPT
    SELECT segment_id, customer_id FROM segment_memberships WHERE valid_to IS NULL AND segment_id IN ({ids})
) n
"""


def _rfm_case() -> str:
    whens = " ".join(
        f"WHEN {r * 10 + fm} THEN '{name}'"
        for r, names in RFM_GRID.items() for fm, name in enumerate(names, start=1)
    )
    return f"CASE r.r_score * 10 + (r.f_score + r.m_score + 1) / 2 {whens} END"


def _rate_cases(cfg: Settings, params: dict) -> dict[str, str]:
    """The conversion rate per currency as SQL CASEs over bound values: the rate itself,
    and the exact fraction num/den for SQLite's integer arithmetic."""
    cases: dict[str, list[str]] = {"rate": [], "num": [], "den": []}
    for i, (code, rate) in enumerate(sorted(cfg.segments.exchange_rates.items())):
        fraction = Fraction(rate)
        params |= {f"cur_{i}": code, f"rate_{i}": rate, f"num_{i}": fraction.numerator,
                   f"den_{i}": fraction.denominator}
        for key, whens in cases.items():
            whens.append(f"WHEN :cur_{i} THEN :{key}_{i}")
    return {key: f"CASE currency {' '.join(whens)} END" for key, whens in cases.items()}


# --- the recompute ----------------------------------------------------------------------------


def latest_as_of(engine_or_conn) -> date | None:
    """The as-of date of the latest recorded recompute."""
    stmt = select(func.max(SegmentRun.as_of))
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.connect() as conn:
            return conn.execute(stmt).scalar_one()
    return engine_or_conn.execute(stmt).scalar_one()


def default_as_of(engine: Engine) -> date:
    """The latest partition date ingest has loaded: the business day the data describes."""
    from crm_tasks.store.models import BatchStatus, IngestBatch

    with engine.connect() as conn:
        latest = conn.execute(select(func.max(IngestBatch.partition_date))
                              .where(IngestBatch.status == BatchStatus.LOADED)).scalar_one()
    if latest is None:
        raise CrmError("nothing has been ingested yet: load data first, or give --as-of DATE")
    return latest


def recompute(engine: Engine, cfg: Settings, as_of: date, *, dry_run: bool = False,
              source: str | None = None) -> RecomputeResult:
    """Recompute every segment as of ``as_of`` and record it in the history.

    ``dry_run`` computes everything in a transaction that is rolled back: the
    sizes and changes a real run would record, with nothing stored. ``source``
    ('metrics' or 'purchases') overrides the choice of totals, for tests.
    """
    started = time.perf_counter()
    with engine.connect() as conn:
        trans = conn.begin()
        if conn.dialect.name == "sqlite":
            # Take the write lock before the first read, as PostgreSQL's advisory lock does:
            # two recomputes at once would otherwise read the same history and both write it.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            result = _recompute(conn, cfg, as_of, source)
            result.dry_run = dry_run
            if dry_run:
                trans.rollback()
            else:
                trans.commit()
        except BaseException:
            trans.rollback()
            raise
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("segments as of %s: %d customers, %d scored, %d entered, %d left%s (%.1f s)", as_of,
             result.customers, result.scored, result.entered, result.exited, " [dry run]" if dry_run else "",
             result.seconds)
    for problem in result.problems:
        log.warning("segments as of %s: %s", as_of, problem)
    if result.cleared_dates and not dry_run:
        log.warning("segments: recomputing %s undid the later recomputes %s .. %s; recompute them in order",
                    as_of, result.cleared_dates[0], result.cleared_dates[-1])
    return result


def recompute_range(engine: Engine, cfg: Settings, first: date, last: date) -> list[RecomputeResult]:
    """Recompute each date of a range in order: a backfill with a history step per day."""
    if last < first:
        raise ConfigError(f"the range ends ({last}) before it starts ({first})")
    return [recompute(engine, cfg, first + timedelta(days=i)) for i in range((last - first).days + 1)]


def _recompute(conn: Connection, cfg: Settings, as_of: date, source: str | None) -> RecomputeResult:
    """One recompute inside the caller's transaction: definitions, scores, the built-in and custom
    history diffs, and the recorded sizes."""
    phases = Phases()
    _serialise_and_tune(conn)
    cutoff = cutoff_for(as_of, cfg.timezone)
    fields = rule_fields(cfg)
    builtins = builtin_segments()
    definitions, problems = rules.load_definitions(cfg.segments.folder, fields, builtins.keys())
    ids, carried = _sync_segments(conn, builtins, definitions, problems, cutoff)
    phases.done("definitions")
    cleared = _undo_from(conn, as_of)
    phases.done("undo")
    _check_currencies(conn, cfg)
    chosen = source or _choose_source(conn, cfg, cutoff)
    phases.done("checks")
    customers, scored = _compute_scores(conn, cfg, as_of, cutoff, chosen, phases)
    buyers_without_profile = _buyers_without_profile(conn)
    phases.done("checks")

    entered, exited = _diff_builtin_history(conn, builtins, ids, as_of, phases)
    failed = _stage_custom(conn, cfg, definitions, ids, as_of, cutoff, fields)
    for name, message in failed.items():
        problems.append(rules.DefinitionProblem(source=name, name=name, path="", message=message))
        carried.add(ids[name])
        conn.execute(update(Segment).where(Segment.id == ids[name])
                     .values(status=SegmentStatus.INVALID, error=message))
    if conn.dialect.name == "postgresql":
        conn.execute(text("ANALYZE segment_stage"))
    phases.done("stage_custom")
    more_entered, more_exited = _diff_custom_history(conn, carried, as_of)
    entered, exited = entered + more_entered, exited + more_exited
    phases.done("history_custom")

    counts = _record_sizes(conn, as_of)
    memberships = sum(c.size for c in counts)
    conn.execute(insert(SegmentRun).values(
        as_of=as_of, cutoff=cutoff, computed_at=datetime.now(UTC), source=chosen, customers=customers,
        scored=scored, buyers_without_profile=buyers_without_profile, memberships=memberships, entered=entered,
        exited=exited, parameters=_parameters(cfg), problems=[str(p) for p in problems],
    ))
    phases.done("sizes")
    return RecomputeResult(
        as_of=as_of, source=chosen, customers=customers, scored=scored,
        buyers_without_profile=buyers_without_profile, memberships=memberships, entered=entered, exited=exited,
        segments=counts, problems=[str(p) for p in problems], cleared_dates=cleared, phases=dict(phases),
    )


def _serialise_and_tune(conn: Connection) -> None:
    """On PostgreSQL: one recompute at a time (two would diff against each other's half-written
    history), and settings for this transaction only: the ranks and diffs sort and hash a million
    rows, which spill to disk at the default 4 MB; and JIT compiling these one-off statements costs
    more than it saves. (SQLite's caller took the write lock already.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('crm_segments'))"))
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        conn.execute(text("SET LOCAL jit = off"))


# Buyers with purchases but no profile; profiles archived by cleanup (crm_tasks/cleanup/archive.py)
# are gone on purpose, not yet to arrive.
_BUYERS_WITHOUT_PROFILE = """
SELECT COUNT(*) FROM customer_metrics m WHERE m.orders > 0
  AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = m.customer_id)
  AND NOT EXISTS (SELECT 1 FROM archived_customers a WHERE a.customer_id = m.customer_id)
"""


def _buyers_without_profile(conn: Connection) -> int:
    return sql.count(conn, _BUYERS_WITHOUT_PROFILE)


def _diff_builtin_history(conn: Connection, builtins: dict, ids: dict[str, int], as_of: date,
                          phases: Phases) -> tuple[int, int]:
    """Close and open the built-in families' memberships straight from the new scores; returns
    (entered, exited)."""
    binds = [bindparam("as_of", type_=Date)]
    params = {"as_of": as_of}
    if conn.dialect.name == "postgresql":
        # Plan the diff on the tables' real sizes: the scores were just rewritten, and the
        # history grows by millions of rows on a first run, long before autovacuum looks.
        conn.execute(text("ANALYZE customer_scores, segment_memberships"))
    values: dict[str, str] = {}
    whens = []
    for name, (family, _desc) in builtins.items():
        key = f"v_{len(values)}"
        values[key] = name.split(":", 1)[1]
        whens.append(f"WHEN {int(ids[name])} THEN s.{_FAMILY_COLUMNS[family]} = :{key}")
    ids_sql = ", ".join(str(int(ids[name])) for name in builtins)
    # A first run (no open membership) writes millions of rows: building the history's
    # indexes once afterwards costs a fraction of maintaining them row by row.
    first_run = conn.execute(select(SegmentMembership.id).where(SegmentMembership.valid_to.is_(None)).limit(1)
                             ).first() is None
    indexes = sorted(SegmentMembership.__table__.indexes, key=lambda i: i.name) if first_run else []
    for index in indexes:
        index.drop(conn)
    exited = 0 if first_run else conn.execute(
        text(_CLOSE_BUILTIN.format(ids=ids_sql, whens=" ".join(whens))).bindparams(*binds), params | values).rowcount
    phases.done("history_close")
    opened = _OPEN_BUILTIN.format(not_open="" if first_run else _NOT_OPEN)
    entered = conn.execute(text(opened).bindparams(*binds), params).rowcount
    for index in indexes:
        index.create(conn)
    if conn.dialect.name == "postgresql" and entered + exited > 10_000:
        # A first run writes millions of rows the statistics do not know about yet; planned
        # on an "empty" table, the custom-segment diff below would scan it once per row.
        conn.execute(text("ANALYZE segment_memberships"))
    phases.done("history_open")
    conn.execute(delete(SegmentStage))
    return entered, exited


def _diff_custom_history(conn: Connection, carried: set[int], as_of: date) -> tuple[int, int]:
    """Close and open the memberships of every custom segment not carried forward (computed now into
    segment_stage, or retired because its file is gone); returns (entered, exited)."""
    binds = [bindparam("as_of", type_=Date)]
    params = {"as_of": as_of}
    custom = conn.execute(select(Segment.id).where(Segment.family == "custom")).scalars().all()
    diffed = ", ".join(str(int(i)) for i in custom if i not in carried)
    entered = exited = 0
    if diffed:
        exited = conn.execute(text(_CLOSE_CUSTOM.format(ids=diffed)).bindparams(*binds), params).rowcount
        entered = conn.execute(text(_OPEN_CUSTOM.format(ids=diffed)).bindparams(*binds), params).rowcount
    conn.execute(delete(SegmentStage))
    return entered, exited


def _parameters(cfg: Settings) -> dict:
    seg = cfg.segments
    return {
        "timezone": cfg.timezone, "base_currency": seg.base_currency,
        "exchange_rates": {k: str(v) for k, v in sorted(seg.exchange_rates.items())},
        "window_days": seg.window_days, "high_value_share": seg.high_value_share,
        "lifecycle": seg.lifecycle.model_dump(),
    }


def _sync_segments(conn: Connection, builtins: dict, definitions: list, problems: list,
                   now: datetime) -> tuple[dict[str, int], set[int]]:
    """Bring the segments table in line with the built-ins and the definition files.

    Returns every name's id and the ids of segments whose membership is carried
    forward unchanged (their file is broken this time).
    """
    existing = {row.name: row for row in conn.execute(select(Segment))}
    wanted: dict[str, dict] = {}
    for name, (family, desc) in builtins.items():
        wanted[name] = {"family": family, "description": desc, "source": None, "definition": None,
                        "status": SegmentStatus.ACTIVE, "error": None}
    for d in definitions:
        wanted[d.name] = {"family": "custom", "description": d.description, "source": d.source,
                          "definition": d.rule, "status": SegmentStatus.ACTIVE, "error": None}
    by_source = {row.source: name for name, row in existing.items() if row.source}
    for p in problems:
        # A file too broken to name its segment (bad YAML, a bad name) still holds the
        # segment it defined last time: find it by file, and keep its members.
        name = p.name if p.name and rules.NAME_RE.fullmatch(str(p.name)) else by_source.get(p.source)
        if name and name not in wanted and name not in builtins:
            old = existing.get(name)
            wanted[name] = {"family": "custom", "description": old.description if old else "",
                              "source": p.source, "definition": old.definition if old else None,
                              "status": SegmentStatus.INVALID, "error": str(p)}
    for name, row in existing.items():
        if name not in wanted and row.status != SegmentStatus.REMOVED:
            conn.execute(update(Segment).where(Segment.id == row.id)
                         .values(status=SegmentStatus.REMOVED, error=None, updated_at=now))
    for name, values in wanted.items():
        old = existing.get(name)
        if old is None:
            conn.execute(insert(Segment).values(name=name, updated_at=now, **values))
        elif any(getattr(old, k) != v for k, v in values.items()):
            conn.execute(update(Segment).where(Segment.id == old.id).values(updated_at=now, **values))
    ids = {row.name: row.id for row in conn.execute(select(Segment.name, Segment.id))}
    carried = {ids[n] for n, v in wanted.items() if v["status"] == SegmentStatus.INVALID}
    return ids, carried


def _undo_from(conn: Connection, as_of: date) -> list[date]:
    """Undo the recorded recomputes of ``as_of`` and later; returns the later dates undone."""
    undone = conn.execute(select(SegmentRun.as_of).where(SegmentRun.as_of >= as_of)
                          .order_by(SegmentRun.as_of)).scalars().all()
    if not undone:
        return []
    conn.execute(delete(SegmentMembership).where(SegmentMembership.valid_from >= as_of))
    conn.execute(update(SegmentMembership).where(SegmentMembership.valid_to >= as_of).values(valid_to=None))
    conn.execute(delete(SegmentSize).where(SegmentSize.as_of >= as_of))
    conn.execute(delete(SegmentRun).where(SegmentRun.as_of >= as_of))
    return [d for d in undone if d > as_of]


def _check_currencies(conn: Connection, cfg: Settings) -> None:
    rates = cfg.segments.exchange_rates
    rows = conn.execute(text("SELECT currency, COUNT(*) FROM customer_metrics GROUP BY currency")).all()
    missing = {cur: n for cur, n in rows if cur not in rates}
    if missing:
        listed = ", ".join(f"{cur} ({n} customers)" for cur, n in sorted(missing.items()))
        raise ConfigError(
            f"segments: purchases in currencies without an exchange rate: {listed}. Add them under "
            f"segments.exchange_rates in crm.yaml (units of {cfg.segments.base_currency} per unit)."
        )


def _choose_source(conn: Connection, cfg: Settings, cutoff: datetime) -> str:
    """'metrics' when the maintained totals are exactly the totals at the cutoff."""
    if cfg.segments.window_days is not None:
        return "purchases"
    # One pass over the narrow customer index: cheaper than keeping a second index on time.
    latest = conn.execute(select(func.max(Purchase.purchased_at))).scalar_one()
    if latest is None:
        return "metrics"
    return "metrics" if latest < cutoff else "purchases"


def _compute_scores(conn: Connection, cfg: Settings, as_of: date, cutoff: datetime, source: str,
                    phases: Phases) -> tuple[int, int]:
    dialect = conn.dialect.name
    seg = cfg.segments
    life = seg.lifecycle
    params: dict = {}
    rates = _rate_cases(cfg, params)
    per_customer = _PER_CUSTOMER.format(
        # Converted per currency, rounded to the money scale, then added: the same cents on both dialects and sources.
        converted=sql.money_times("revenue_w", rates["rate"], rates["num"], rates["den"], dialect), first_epoch=sql.epoch_seconds("first_at", dialect),
        last_epoch=sql.epoch_seconds("last_at", dialect),
        source=_FROM_METRICS if source == "metrics" else _FROM_PURCHASES,
    )
    share = Fraction(str(seg.high_value_share))
    window_start = cutoff - timedelta(days=seg.window_days) if seg.window_days else datetime(1970, 1, 1, tzinfo=UTC)
    base = _BASE.format(
        on_commit=sql.on_commit_drop(conn), avg_basket=sql.money_per("pc.monetary", "pc.frequency", dialect),
        per_customer=per_customer, day=DAY,
        fence=sql.fence(dialect),
        previous_epoch=sql.epoch_seconds(_PREVIOUS_ORDER, dialect),
    )
    params |= {
        "cutoff": cutoff, "window_start": window_start,
        "cutoff_epoch": int(cutoff.timestamp()), "new_days": life.new_days, "churn_days": life.churn_days,
        "at_risk_min_days": life.at_risk_min_days, "at_risk_factor": life.at_risk_factor,
        "single_gap": float(life.single_order_gap_days),
    }
    stmt = text(base).bindparams(
        bindparam("cutoff", type_=UtcDateTime()),
        *([bindparam("window_start", type_=UtcDateTime())] if source == "purchases" else []),
    )
    if source != "purchases":
        params.pop("window_start")
    conn.execute(text("DROP TABLE IF EXISTS seg_base"))
    conn.execute(stmt, params)
    phases.done("base")
    scored = conn.execute(text("SELECT COUNT(*) FROM seg_base WHERE frequency > 0")).scalar_one()
    sql.empty(conn, "customer_scores")
    customers = conn.execute(
        text(_SCORES.format(rfm_case=_rfm_case())).bindparams(bindparam("as_of", type_=Date)),
        {"as_of": as_of, "scored": max(scored, 1), "share_num": share.numerator, "share_den": share.denominator},
    ).rowcount
    conn.execute(text("DROP TABLE seg_base"))
    phases.done("scores")
    if scored:
        medians = {}
        for column in ("avg_basket", "frequency"):
            medians[column] = conn.execute(text(_MEDIAN.format(column=column)),
                                           {"take": 2 - scored % 2, "skip": (scored - 1) // 2}).scalar_one()
        conn.execute(text(_HIGH_POTENTIAL), {"median_basket": medians["avg_basket"],
                                             "median_frequency": medians["frequency"]})
    phases.done("high_potential")
    return customers, scored


def _stage_custom(conn: Connection, cfg: Settings, definitions: list, ids: dict[str, int], as_of: date,
                  cutoff: datetime, fields: dict) -> dict[str, str]:
    """Stage each valid custom segment, in dependency order; returns the ones that failed."""
    c = Customer.__table__.alias("c")
    s = CustomerScore.__table__.alias("s")
    stage = SegmentStage.__table__
    columns = _rule_columns(c, s, cfg, conn.dialect.name, as_of)
    failed: dict[str, str] = {}

    def member_of(name: str):
        if ":" in name:  # built-in: read from the scores, where membership is one column
            family, value = name.split(":", 1)
            return s.c[_FAMILY_COLUMNS[family]] == value
        return c.c.customer_id.in_(select(stage.c.customer_id).where(stage.c.segment_id == ids[name]))

    for d in definitions:
        if any(dep in failed for dep in d.depends_on):
            failed[d.name] = f"{d.source}: not computed: depends on {', '.join(x for x in d.depends_on if x in failed)}"
            continue
        condition = rules.compile_rule(d.rule, columns, fields, as_of=as_of, cutoff=cutoff,
                                       dialect=conn.dialect.name, member_of=member_of)
        query = (select(literal(ids[d.name], Integer), c.c.customer_id)
                 .select_from(c.join(s, s.c.customer_id == c.c.customer_id)).where(condition))
        try:
            with conn.begin_nested():
                conn.execute(insert(stage).from_select(["segment_id", "customer_id"], query))
        except DBAPIError as exc:
            # The database's message can quote stored values: keep only its kind.
            failed[d.name] = (f"{d.source}: the database refused the rule ({type(exc.orig).__name__}); "
                              "check the field types it compares; the last good membership is kept")
    return failed


def _record_sizes(conn: Connection, as_of: date) -> list[SegmentCount]:
    """Snapshot every segment's size with the day's entries and exits."""
    d = bindparam("as_of", type_=Date)
    entered = dict(conn.execute(text(
        "SELECT segment_id, COUNT(*) FROM segment_memberships WHERE valid_from = :as_of GROUP BY segment_id"
    ).bindparams(d), {"as_of": as_of}).all())
    exited = dict(conn.execute(text(
        "SELECT segment_id, COUNT(*) FROM segment_memberships WHERE valid_to = :as_of GROUP BY segment_id"
    ).bindparams(d), {"as_of": as_of}).all())
    previous_date = conn.execute(select(func.max(SegmentSize.as_of)).where(SegmentSize.as_of < as_of)).scalar_one()
    previous = dict(conn.execute(select(SegmentSize.segment_id, SegmentSize.size)
                                 .where(SegmentSize.as_of == previous_date)).all()) if previous_date else {}
    # The open memberships before today's diff are exactly the previous recompute's (an
    # undone date restores them), so sizes follow from its sizes and today's moves
    # without counting millions of rows.
    size = {seg: previous.get(seg, 0) + entered.get(seg, 0) - exited.get(seg, 0)
            for seg in set(previous) | set(entered) | set(exited)}
    out = []
    rows = conn.execute(select(Segment.id, Segment.name, Segment.family, Segment.status)
                        .where(Segment.status != SegmentStatus.REMOVED).order_by(Segment.id)).all()
    for seg_id, name, family, status in rows:
        count = SegmentCount(name, family, size.get(seg_id, 0), entered.get(seg_id, 0), exited.get(seg_id, 0),
                             previous.get(seg_id, 0 if previous_date else None), status)
        out.append(count)
        conn.execute(insert(SegmentSize).values(as_of=as_of, segment_id=seg_id, size=count.size,
                                                entered=count.entered, exited=count.exited))
    return out


# --- reading segments and their history ---------------------------------------------------------


