"""Planning a campaign run: who gets which message when, and why everyone else does not.

A run, for one campaign and one date:

1. selects the audience with its trigger (``crm_tasks.campaigns.audience``);
2. excludes, with one reason each, in this order: no or invalid e-mail address,
   no e-mail consent, suppressed address, already planned or sent for this
   occurrence, frequency cap reached, outside the send window (the customer's
   local window on the day has passed by the run's time), and, for a targeted
   coupon (``coupon.scope``), no recommended product to target it at;
3. holds out a deterministic share of the rest (a hash of campaign and customer,
   so the same customers stay in the control group run after run);
4. applies the guardrails: more recipients than ``max_audience``, or far more
   than the previous run, blocks the run before anything is planned for sending;
5. issues coupons (a targeted one valid on the category or the product of the
   customer's first recommendation) and renders every message, with the
   products it shows (the customer's stored recommendations, else their
   favourite category's best sellers), so that one bad template or profile
   fails the run before any message is handed to delivery;
6. records the run, its plan and (unless a dry run) the ledger rows and the
   products shown, in one transaction; re-running a date replaces what it
   planned and has not sent.

The exclusions and the holdout are vectorised over the audience (pandas and
set-based SQL); only rendering touches one message at a time.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from croniter import croniter
from sqlalchemy import Connection, Engine, delete, distinct, func, insert, select, text, update

from crm_tasks.analytics.recommendations import (
    POPULAR,
    Recommendation,
    described_columns,
    described_line,
    recommendations_for,
)
from crm_tasks.campaigns.audience import select_audience
from crm_tasks.campaigns.coupons import CouponScope, unique_codes
from crm_tasks.campaigns.definitions import COUPON_SCOPES, Campaign
from crm_tasks.clock import Phases, cutoff_for
from crm_tasks.delivery.suppression import email_hash, unsubscribe_token
from crm_tasks.errors import CampaignBlocked, RenderError
from crm_tasks.messages.mime import message_id_for
from crm_tasks.messages.render import Renderer, language_of, message_context, renderer_for
from crm_tasks.messages.slices import in_slices
from crm_tasks.settings import Settings
from crm_tasks.store.bulk import bulk_insert, insert_columns, rows_in
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import (
    CampaignPlanRow,
    CampaignRun,
    Coupon,
    CustomerMetrics,
    Message,
    MessageState,
    Product,
    Purchase,
    RunStatus,
    Suppression,
)

log = logging.getLogger(__name__)

# Exclusion reasons, in the order they are decided: a customer gets the first that applies.
GLOBAL_CONTROL = "global_control"  # in the programme's control group (results.global_control_share)
INVALID_EMAIL = "invalid_email"
NO_CONSENT = "no_consent"
SUPPRESSED = "suppressed"
ALREADY_SENT = "already_sent"
FREQUENCY_CAP = "frequency_cap"
OUTSIDE_WINDOW = "outside_send_window"
# A targeted coupon (coupon.scope) and no recommended product to target it at: never an unscoped coupon instead.
NO_RECOMMENDATION = "no_recommendation"
AUDIENCE_LIMIT = "audience_limit"  # a hand-triggered run's limit, applied after the holdout
REASONS = (GLOBAL_CONTROL, INVALID_EMAIL, NO_CONSENT, SUPPRESSED, ALREADY_SENT, FREQUENCY_CAP, OUTSIDE_WINDOW,
           NO_RECOMMENDATION, AUDIENCE_LIMIT)
SEND, HOLDOUT, EXCLUDED = "send", "holdout", "excluded"

# Messages that no longer count against the frequency cap: they never reached anyone.
NOT_DELIVERED = ("failed", "suppressed", "expired")
# A plausible address; ingest validated it already, this guards hand-edited rows.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
TEST_AUDIENCE_LIMIT = 5


@dataclass
class PlannedMessage:
    """One recipient of a plan, as the CLI shows it (no address, no name)."""

    customer_id: str
    idempotency_key: str
    locale: str
    template: str
    coupon_code: str | None
    send_at: str
    local_send_at: str


@dataclass
class PlanResult:
    campaign: str
    as_of: date
    run_at: datetime
    dry_run: bool
    recorded: bool
    run_id: int | None = None
    status: str = RunStatus.PLANNED
    audience: int = 0
    recipients: int = 0
    holdout: int = 0
    excluded: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    diff: dict = field(default_factory=dict)
    error: str | None = None
    rendered: int = 0
    coupons: int = 0
    replaced: int = 0  # unsent messages of an earlier run of the same date, replaced
    sample: list[PlannedMessage] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Counts only: safe for XCom and logs."""
        out = asdict(self)
        out.pop("sample")
        return out | {"as_of": self.as_of.isoformat(), "run_at": self.run_at.isoformat()}

    def to_dict(self) -> dict:
        return self.summary() | {"sample": [asdict(m) for m in self.sample]}


# --- pure helpers ---------------------------------------------------------------------------


def default_run_at(campaign: Campaign, as_of: date, tz: str) -> datetime:
    """When the campaign's schedule fires on ``as_of`` (its first time that day), in UTC.

    A schedule that does not fire that day plans as if run at the day's start.
    """
    zone = ZoneInfo(campaign.schedule.timezone or tz)
    start = datetime.combine(as_of, datetime.min.time(), tzinfo=zone)
    fire = croniter(campaign.schedule.cron, start - timedelta(microseconds=1)).get_next(datetime)
    return (fire if fire.date() == as_of else start).astimezone(UTC)


def holdout_scores(campaign: str, customer_ids: pd.Series) -> np.ndarray:
    """A stable number in [0, 1) per customer and campaign: below the share, the customer is held out.

    BLAKE2b of 'campaign:customer' (not Python's salted hash): the same customers are in
    the control group on every run, machine and version.
    """
    prefix = f"{campaign}:".encode()
    digests = [hashlib.blake2b(prefix + c.encode(), digest_size=8).digest() for c in customer_ids]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.float64) / 2.0**64 if digests else np.empty(0)


def global_control(customer_ids: pd.Series, share: float) -> pd.Series:
    """Whether each customer is in the global control group: a stable hash of the customer id alone, so the
    same customers are left out of every campaign, run after run (crm_tasks/results/control.py reads it too)."""
    return pd.Series(holdout_scores("global-control", customer_ids) < share, index=customer_ids.index)


def assign_variants(campaign: Campaign, frame: pd.DataFrame) -> pd.Series:
    """Each row's A/B variant (None without variants): a stable hash of campaign, customer and occurrence, cut
    by the variants' weights, so a re-planned run keeps every customer's variant."""
    if not campaign.variants:
        return pd.Series(None, index=frame.index, dtype=object)
    keys = "variant:" + frame["customer_id"] + ":" + frame["occurrence"]
    scores = holdout_scores(campaign.name, keys)
    weights = np.array([v.weight for v in campaign.variants], dtype=np.float64)
    edges = np.cumsum(weights) / weights.sum()
    picks = np.minimum(np.searchsorted(edges, scores, side="right"), len(edges) - 1)
    names = np.array([v.name for v in campaign.variants], dtype=object)
    return pd.Series(names[picks], index=frame.index, dtype=object)


def send_times(frame: pd.DataFrame, as_of: date, campaign: Campaign, run_at: datetime) -> tuple[pd.Series, pd.Series]:
    """Each customer's send time (UTC) on ``as_of``: the window's start in their time zone, or the run's
    time if that is later; NaT where the window has closed by the run's time. And the local time as text."""
    send = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    local = pd.Series(None, index=frame.index, dtype=object)
    run = pd.Timestamp(run_at)
    for tz, idx in frame.groupby("timezone").groups.items():
        zone = ZoneInfo(tz)
        start = pd.Timestamp(datetime.combine(as_of, campaign.send_window.start, tzinfo=zone))
        end = pd.Timestamp(datetime.combine(as_of, campaign.send_window.end, tzinfo=zone))
        if run >= end:
            continue
        at = max(start, run)
        send.loc[idx] = at.tz_convert(UTC)
        local.loc[idx] = at.tz_convert(zone).isoformat(timespec="minutes")
    return send, local


def lateness_limit(campaign: Campaign, as_of: date) -> tuple[date, str]:
    """The last local day a message of ``campaign`` for ``as_of`` may go out, and what makes it stale
    after that: the campaign's lateness, capped by its coupon's last valid day."""
    days = campaign.lateness_days
    last = as_of + timedelta(days=days)
    why = (f"stale: not sent on its day, {as_of} (max_lateness_days: 0)" if days == 0 else
           f"stale: not sent within {days} days of {as_of} (max_lateness_days: {days})")
    coupon = campaign.coupon
    if coupon is not None and as_of + timedelta(days=coupon.valid_days) <= last:
        last = as_of + timedelta(days=coupon.valid_days)
        why = f"stale: its coupon expired after {last}"
    return last, why


def expiry_times(frame: pd.DataFrame, last_day: date) -> pd.Series:
    """When each customer's ``last_day`` ends in their own time zone, in UTC."""
    out = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    for tz, idx in frame.groupby("timezone").groups.items():
        end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=ZoneInfo(tz))
        out.loc[idx] = pd.Timestamp(end).tz_convert(UTC)
    return out


# --- reads ----------------------------------------------------------------------------------


def _replaced_runs(conn: Connection, campaign: str, as_of: date, dry_run: bool) -> list[int]:
    """Earlier runs of the same campaign and date that this run replaces (a dry run replaces dry runs)."""
    r = CampaignRun
    return list(conn.execute(select(r.id).where(r.campaign == campaign, r.as_of == as_of,
                                                r.dry_run == dry_run, r.test_run.is_(False))).scalars())


def _already(conn: Connection, keys: list[str], replaced: list[int]) -> set[str]:
    """Keys already in the ledger, except unsent messages of the runs being replaced."""
    m = Message
    rows = rows_in(conn, select(m.idempotency_key, m.run_id, m.state), m.idempotency_key, keys)
    return {k for k, run, state in rows if not (run in replaced and state == MessageState.PLANNED)}


def _recent_counts(conn: Connection, customers: list[str], start: datetime, end: datetime,
                   replaced: list[int]) -> dict[str, int]:
    """Messages per customer with a send time in [start, end), from every campaign; ids via the customer index."""
    m = Message
    cond = [m.send_at >= start, m.send_at < end, m.test.is_(False), m.state.not_in(NOT_DELIVERED)]
    if replaced:
        cond.append(~((m.run_id.in_(replaced)) & (m.state == MessageState.PLANNED)))
    return dict(rows_in(conn, select(m.customer_id, func.count()).where(*cond).group_by(m.customer_id),
                        m.customer_id, customers))


def _suppressed(conn: Connection, customers: list[str], hashes: list[str]) -> tuple[set[str], set[str]]:
    s = Suppression
    by_customer = {c for (c,) in rows_in(conn, select(s.customer_id), s.customer_id, customers)}
    by_hash = {h for (h,) in rows_in(conn, select(s.email_hash), s.email_hash, hashes)}
    return by_customer, by_hash


def _previous_run(conn: Connection, campaign: str, exclude: list[int]):
    """The latest recorded, planned, real run of the campaign (not one being replaced)."""
    r = CampaignRun
    query = (select(r.id, r.as_of, r.recipients)
             .where(r.campaign == campaign, r.dry_run.is_(False), r.test_run.is_(False), r.status == RunStatus.PLANNED)
             .order_by(r.created_at.desc(), r.id.desc()).limit(1))
    if exclude:
        query = query.where(r.id.not_in(exclude))
    return conn.execute(query).first()


def _personalisation(conn: Connection, customers: list[str]) -> tuple[dict, dict]:
    """Favourite category and first purchase per customer. The favourite is that of the customer's main
    currency (most orders)."""
    cm = CustomerMetrics
    totals = pd.DataFrame(rows_in(conn, select(cm.customer_id, cm.favourite_category, cm.orders,
                                               cm.first_purchase_at), cm.customer_id, customers),
                          columns=["customer_id", "category", "orders", "first"])
    # Ties on orders go to the currency row read first, as a stable sort keeps it first.
    main = (totals[totals["category"].notna()].sort_values("orders", ascending=False, kind="stable")
            .drop_duplicates("customer_id"))
    favourite = dict(zip(main["customer_id"], main["category"], strict=True))
    earliest = totals[totals["first"].notna()].groupby("customer_id")["first"].min()
    first = {cid: ts.to_pydatetime() for cid, ts in earliest.items()}
    return favourite, first


def _stored_products(conn: Connection, customers: list[str], cfg: Settings) -> dict[str, list[Recommendation]]:
    """Each customer's stored recommendations (``customer_recommendations``, refreshed nightly), best first,
    with the catalogue's names, prices and links: a query per IN_CHUNK customers on one connection, never one
    per customer. They are read through the engine (``recommendations_for`` opens its own connection): the lists are
    written by the nightly refresh, not by this transaction."""
    if not cfg.campaigns.recommendations or not customers:
        return {}
    return recommendations_for(conn.engine, customers, limit=cfg.campaigns.recommendations)


def coupon_scope(campaign: Campaign) -> CouponScope | None:
    """What the campaign's coupons are valid on: None without a coupon, else any, category or product."""
    return None if campaign.coupon is None else CouponScope(COUPON_SCOPES[campaign.coupon.scope])


def _coupon_targets(conn: Connection, campaign: Campaign, customers: list[str]) -> dict[str, Recommendation]:
    """For a targeted coupon, each customer's first recommended product: the first line of their own stored list,
    else, for a customer without one, of the shop-wide list (``popular_recommendations``). This is the rule of
    the segment field ``recommended_category`` (crm_tasks/segments/compute.py), read through
    ``recommendations_for`` with ``limit=1``: a query per IN_CHUNK customers on one connection, never one per
    customer. Like the products the e-mail shows, it reads the latest refresh (the segment field looks back to
    the lists of its as-of day; planning a date again after a newer refresh must not lose everyone). A customer
    left out has nothing to target (an empty list of their own, a first product that left the catalogue, or no
    refresh yet): the caller excludes them. Empty for an unscoped coupon."""
    if coupon_scope(campaign) in (None, CouponScope.ANY) or not customers:
        return {}
    return {cid: lines[0] for cid, lines in recommendations_for(conn.engine, customers, limit=1).items() if lines}


def _scope_value(scope: CouponScope | None, target) -> str | None:
    """The category or sku a coupon of ``scope`` is valid on, from the customer's first recommendation."""
    if scope == CouponScope.CATEGORY:
        return target.category
    if scope == CouponScope.PRODUCT:
        return target.sku
    return None


def _valid_on(scope: CouponScope | None, target, lang: str, labels: dict[str, str]) -> dict | None:
    """What a targeted coupon is valid on, as its e-mail says it: the category's label or the product's name in
    the message's language (the catalogue's default name where it has none). None for an unscoped coupon."""
    if scope == CouponScope.CATEGORY:
        return {"kind": "category", "name": labels.get(target.category, target.category)}
    if scope == CouponScope.PRODUCT:
        return {"kind": "product", "name": target.name_in(lang)}
    return None


def _best_sellers(conn: Connection, cutoff: datetime, cfg: Settings,
                  categories: set[str]) -> dict[str, list[Recommendation]]:
    """The fallback for customers without a stored list (new since the last refresh, or no refresh yet):
    per category, the in-stock catalogue products most customers bought over ``recommendation_days`` before
    the cutoff, most buyers first (then SKU). Products sold but not in the catalogue have no name, price or
    link to show, and are left out. One aggregate over the window's purchases (``ix_purchases_time``)."""
    if not cfg.campaigns.recommendations or not categories:
        return {}
    p, d = Purchase, Product
    start = cutoff - timedelta(days=cfg.campaigns.recommendation_days)
    sold = (select(p.sku, func.count(distinct(p.customer_id)).label("buyers"))
            .where(p.purchased_at >= start, p.purchased_at < cutoff, p.quantity > 0,
                   p.category.in_(sorted(categories)))
            .group_by(p.sku).subquery())
    rows = conn.execute(select(d.sku, *described_columns(), sold.c.buyers)
                        .join(sold, sold.c.sku == d.sku)
                        .where(d.in_stock.is_(True), d.category.in_(sorted(categories)))).all()
    rows.sort(key=lambda r: (r.category, -r.buyers, r.sku))
    top: dict[str, list[Recommendation]] = {}
    for r in rows:
        picks = top.setdefault(r.category, [])
        if len(picks) < cfg.campaigns.recommendations:
            picks.append(described_line(r._mapping, customer_id="", rank=len(picks) + 1, kind=POPULAR,
                                        customers=int(r.buyers)))
    return top


def _whole_years(since: date, until: date) -> int:
    years = until.year - since.year
    return years - 1 if (until.month, until.day) < (since.month, since.day) else years


# --- the run --------------------------------------------------------------------------------


def plan_campaign(
    engine: Engine,
    cfg: Settings,
    campaign: Campaign,
    as_of: date,
    run_at: datetime | None = None,
    *,
    dry_run: bool = False,
    record: bool = True,
    audience_limit: int | None = None,
    test_recipient: str | None = None,
    sample: int = 20,
    renderer: Renderer | None = None,
) -> PlanResult:
    """Plan ``campaign`` for the occurrence day ``as_of``; see the module docstring.

    ``record=False`` (``crm campaign plan``) computes and renders the same plan and
    stores nothing at all. ``dry_run`` records the run and its plan but no ledger
    rows or coupons. ``test_recipient`` sends every planned message to that address
    instead, under test keys that never consume a customer's occurrence.
    Raises CampaignBlocked when a guardrail stops the run (recorded first, if recording).
    """
    started = time.perf_counter()
    run_at = run_at or default_run_at(campaign, as_of, cfg.timezone)
    test = test_recipient is not None
    if test and audience_limit is None:
        audience_limit = TEST_AUDIENCE_LIMIT
    result = PlanResult(campaign.name, as_of, run_at, dry_run, record)
    renderer = renderer or renderer_for(cfg)
    renderer.check(campaign.template)
    phases = Phases()

    with engine.connect() as conn:
        trans = conn.begin()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # one planner per database at a time, as below
        else:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"crm_campaign:{campaign.name}"})
        try:
            blocked = _plan(conn, cfg, campaign, as_of, run_at, result, renderer, phases,
                            dry_run=dry_run, record=record, audience_limit=audience_limit,
                            test_recipient=test_recipient, sample=sample)
            if record:
                trans.commit()
            else:
                trans.rollback()
        except BaseException:
            trans.rollback()
            raise
    result.phases = dict(phases)
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("campaign %s for %s: audience %d, recipients %d, holdout %d, excluded %s%s (%.1f s)",
             campaign.name, as_of, result.audience, result.recipients, result.holdout, result.reasons,
             " [dry run]" if dry_run else "", result.seconds)
    if blocked:
        raise CampaignBlocked(blocked, result)
    return result


def _plan(conn: Connection, cfg: Settings, campaign: Campaign, as_of: date, run_at: datetime, result: PlanResult,
          renderer: Renderer, phases: Phases, *, dry_run: bool, record: bool, audience_limit: int | None,
          test_recipient: str | None, sample: int) -> str | None:
    """One planning run inside the caller's transaction: audience, exclusions, holdout, guardrails,
    coupons, rendering, and (if ``record``) the stored run. Fills ``result``; returns why a guardrail
    blocked the run, or None."""
    test = test_recipient is not None
    replaced = [] if test else _replaced_runs(conn, campaign.name, as_of, dry_run)
    real_replaced = replaced if not dry_run else _replaced_runs(conn, campaign.name, as_of, False)
    frame = select_audience(conn, campaign, as_of)
    frame["key"] = campaign.name + ":" + frame["customer_id"] + ":" + frame["occurrence"]
    result.audience = len(frame)
    phases.done("audience")

    cutoff = cutoff_for(as_of, cfg.timezone)
    reason, send_at, local_at, frame["target"] = _exclusions(conn, cfg, campaign, frame, as_of, run_at, cutoff,
                                                             test=test, replaced=real_replaced)
    phases.done("exclusions")

    outcome = _outcomes(campaign, frame, reason, holdout=not test, audience_limit=audience_limit)
    frame["outcome"], frame["reason"] = outcome, reason
    frame["variant"] = assign_variants(campaign, frame).where(outcome == SEND)
    templates = {v.name: v.template for v in campaign.variants if v.template}
    frame["template"] = frame["variant"].map(templates).fillna(campaign.template)
    frame["send_at"], frame["local_send_at"] = send_at.where(outcome == SEND), local_at.where(outcome == SEND)
    frame["lang"] = [language_of(loc, renderer.languages) for loc in frame["locale"]]
    _count_outcomes(result, outcome, reason)
    phases.done("holdout")

    previous = None if test else _previous_run(conn, campaign.name, replaced + real_replaced)
    blocked = _guardrail(campaign, as_of, result.recipients, previous)
    result.status = RunStatus.BLOCKED if blocked else RunStatus.PLANNED
    result.error = blocked
    sending = frame[outcome == SEND] if not blocked else frame.iloc[0:0]
    if previous is not None:
        result.diff = _diff_with(conn, previous, set(frame["customer_id"][outcome == SEND]))

    frame["coupon_code"] = _coupon_codes(conn, campaign, frame, sending.index)
    result.coupons = len(sending) if campaign.coupon is not None else 0
    phases.done("coupons")

    # Render every message before any is recorded for delivery.
    contexts = build_contexts(conn, cfg, campaign, as_of, frame.loc[sending.index], renderer, cutoff)
    result.rendered = len(contexts)
    phases.done("render")

    result.sample = [
        PlannedMessage(r.customer_id, r.key, r.lang, r.template, r.coupon_code,
                       r.send_at.isoformat(), r.local_send_at)
        for r in frame.loc[sending.index[:sample]].itertuples()
    ]
    if record:
        _record(conn, campaign, as_of, run_at, result, frame, sending.index, contexts, replaced,
                domain=cfg.campaigns.sender.domain, secret=load_keys(conn, cfg).hashing,
                dry_run=dry_run, test_recipient=test_recipient, audience_limit=audience_limit)
    phases.done("record")
    return blocked


def _exclusions(conn: Connection, cfg: Settings, campaign: Campaign, frame: pd.DataFrame, as_of: date,
                run_at: datetime, cutoff: datetime, *, test: bool, replaced: list[int]):
    """Each audience member's exclusion reason (None: eligible), the first that applies in REASONS'
    order, with the UTC and local send times and, for a targeted coupon, the recommendation it targets.
    Returns (reason, send_at, local_send_at, target)."""
    reason = pd.Series(None, index=frame.index, dtype=object)

    def exclude(mask: pd.Series, why: str) -> None:
        reason.loc[mask & reason.isna()] = why

    share = cfg.results.global_control_share
    if campaign.global_control and share > 0 and not test:
        exclude(global_control(frame["customer_id"], share), GLOBAL_CONTROL)
    email = frame["email"].fillna("")
    exclude(~email.str.match(EMAIL_PATTERN), INVALID_EMAIL)
    exclude(~frame["email_consent"], NO_CONSENT)
    has_email = reason.isna()
    hashes = pd.Series("", index=frame.index)
    hashing = load_keys(conn, cfg).hashing
    hashes[has_email] = [email_hash(e, hashing) for e in email[has_email]]
    by_customer, by_hash = _suppressed(conn, frame["customer_id"].tolist(), hashes[has_email].tolist())
    exclude(frame["customer_id"].isin(by_customer) | hashes.isin(by_hash), SUPPRESSED)
    if not test:
        exclude(frame["key"].isin(_already(conn, frame["key"][reason.isna()].tolist(), replaced)), ALREADY_SENT)
    cap = campaign.frequency_cap or cfg.campaigns.frequency_cap
    recent = _recent_counts(conn, frame["customer_id"][reason.isna()].tolist(), cutoff - timedelta(days=cap.days),
                            cutoff, replaced)
    exclude(frame["customer_id"].map(recent).fillna(0) >= cap.messages, FREQUENCY_CAP)
    send_at, local_at = send_times(frame, as_of, campaign, run_at)
    exclude(send_at.isna(), OUTSIDE_WINDOW)
    target = pd.Series(None, index=frame.index, dtype=object)
    if coupon_scope(campaign) not in (None, CouponScope.ANY):
        targets = _coupon_targets(conn, campaign, frame["customer_id"][reason.isna()].tolist())
        found = frame["customer_id"].isin(targets.keys())
        target[found] = frame["customer_id"][found].map(targets)
        exclude(~found, NO_RECOMMENDATION)
    return reason, send_at, local_at, target


def _outcomes(campaign: Campaign, frame: pd.DataFrame, reason: pd.Series, *, holdout: bool,
              audience_limit: int | None) -> pd.Series:
    """send, holdout or excluded per audience member. The holdout is drawn from the eligible by a
    stable hash; an audience limit keeps the lowest scores above the holdout share (a stable,
    unbiased slice) and excludes the rest with reason audience_limit. Clears the reason of the kept."""
    eligible = reason.isna()
    scores = pd.Series(holdout_scores(campaign.name, frame["customer_id"]), index=frame.index, dtype=float)
    held = eligible & (scores < campaign.holdout_share) & holdout
    outcome = pd.Series(EXCLUDED, index=frame.index, dtype=object)
    outcome[held] = HOLDOUT
    outcome[eligible & ~held] = SEND
    if audience_limit is not None:
        over = scores[outcome == SEND].sort_values(kind="stable").index[audience_limit:]
        outcome[over] = EXCLUDED
        reason[over] = AUDIENCE_LIMIT
    reason[outcome != EXCLUDED] = None
    return outcome


def _count_outcomes(result: PlanResult, outcome: pd.Series, reason: pd.Series) -> None:
    result.recipients = int((outcome == SEND).sum())
    result.holdout = int((outcome == HOLDOUT).sum())
    result.excluded = int((outcome == EXCLUDED).sum())
    counts = Counter(reason.dropna())
    result.reasons = {r: counts[r] for r in REASONS if counts.get(r)}


def _guardrail(campaign: Campaign, as_of: date, recipients: int, previous) -> str | None:
    """Why the run must not send (a broken segment must not mail everyone), or None."""
    if recipients > campaign.max_audience:
        return (f"campaign {campaign.name} on {as_of}: {recipients} recipients exceed max_audience "
                f"{campaign.max_audience}; nothing was planned for sending. Check the audience "
                f"(segment or trigger), or raise max_audience in campaigns/{campaign.name}.yaml")
    if previous is not None and recipients > max(campaign.growth_floor, previous.recipients * campaign.max_growth):
        return (f"campaign {campaign.name} on {as_of}: {recipients} recipients is more than "
                f"{campaign.max_growth:g} times the previous run's {previous.recipients} (on "
                f"{previous.as_of}); nothing was planned for sending. If the jump is expected, raise "
                f"max_growth in campaigns/{campaign.name}.yaml or run it with an audience limit")
    return None


def _diff_with(conn: Connection, previous, now: set[str]) -> dict:
    """This run's recipients against the previous run's: added, removed, kept."""
    before = set(conn.execute(select(CampaignPlanRow.customer_id).where(
        CampaignPlanRow.run_id == previous.id, CampaignPlanRow.outcome == SEND)).scalars())
    return {"previous_run": previous.id, "previous_as_of": previous.as_of.isoformat(),
            "previous_recipients": previous.recipients, "added": len(now - before),
            "removed": len(before - now), "kept": len(now & before)}


def _coupon_codes(conn: Connection, campaign: Campaign, frame: pd.DataFrame, sending: pd.Index) -> pd.Series:
    """A coupon code per message to send: an occurrence planned before (and replaced now) keeps its code."""
    codes = pd.Series([None] * len(frame), index=frame.index, dtype=object)  # None, not NaN, where no coupon
    if campaign.coupon is None or sending.empty:
        return codes
    keys = frame.loc[sending, "key"]
    existing = dict(rows_in(conn, select(Coupon.idempotency_key, Coupon.code), Coupon.idempotency_key,
                            keys.tolist()))
    codes[sending] = keys.map(existing)
    missing = codes[sending].isna()
    codes[missing[missing].index] = unique_codes(conn, int(missing.sum()))
    return codes


def build_contexts(conn: Connection, cfg: Settings, campaign: Campaign, as_of: date, rows: pd.DataFrame,
                   renderer: Renderer, cutoff: datetime) -> list[dict]:
    """The render context of every row (profile columns, lang, years, coupon_code, variant, and for a targeted
    coupon the recommendation it targets), each rendered once to prove it renders: one bad template or profile
    fails the whole run, before anything is stored. The products shown are the customer's stored
    recommendations, else their favourite category's best sellers. Rows without a ``target`` column (a
    preview) have their coupon's target read here."""
    if rows.empty:
        return []
    customers = rows["customer_id"].tolist()
    scope = coupon_scope(campaign)
    if "target" not in rows.columns:
        rows = rows.assign(target=rows["customer_id"].map(_coupon_targets(conn, campaign, customers)))
    favourite, first = _personalisation(conn, customers)
    stored = _stored_products(conn, customers, cfg)
    # Only a customer without a stored list gets the best sellers of their favourite category.
    fallback = _best_sellers(conn, cutoff, cfg, {favourite[c] for c in customers
                                                 if c not in stored and c in favourite})
    labels = {lang: renderer.labels(lang, "category.") for lang in renderer.languages}
    texts = {lang: renderer.labels(lang, "product.") for lang in renderer.languages}
    coupon = campaign.coupon
    landing = getattr(coupon, "landing_url", None)  # a coupon's own landing page, where its campaign names one
    expires = as_of + timedelta(days=coupon.valid_days) if coupon else None
    signing = load_keys(conn, cfg).signing
    variants = {v.name: v for v in campaign.variants}

    def context(r) -> dict:
        fp = first.get(r.customer_id)
        fav = favourite.get(r.customer_id)
        ctx = message_context(
            cfg, campaign=campaign.name, lang=r.lang, locale=r.locale, first_name=r.first_name,
            occasion_date=as_of, years=None if pd.isna(r.years) else int(r.years),
            years_as_customer=_whole_years(fp.astimezone(ZoneInfo(r.timezone)).date(), as_of) if fp else 0,
            favourite_category=fav,
            recommendations=stored.get(r.customer_id) or fallback.get(fav, []),
            coupon=None if coupon is None else {"code": r.coupon_code, "value": coupon.value, "type": coupon.type,
                                                "currency": coupon.currency, "expires_on": expires,
                                                "landing_url": landing},
            unsubscribe_url=f"{cfg.campaigns.unsubscribe_url}/{unsubscribe_token(r.customer_id, signing)}",
            labels=labels[r.lang], texts=texts[r.lang],
            variant=r.variant if isinstance(r.variant, str) else None,
        )
        if scope not in (None, CouponScope.ANY):
            if not isinstance(r.target, Recommendation):
                raise RenderError(f"campaign {campaign.name}, customer {r.customer_id}: no recommended product to "
                                  f"target its coupon at (coupon.scope: {coupon.scope}); planning excludes such "
                                  f"customers ({NO_RECOMMENDATION})")
            # Only a targeted coupon says what it is valid on: an unscoped coupon's e-mail stays as it was.
            ctx["coupon"]["valid_on"] = _valid_on(scope, r.target, r.lang, labels[r.lang])
        if (variant := variants.get(r.variant)) is not None and (subject := variant.subject_for(r.lang)):
            ctx["variant_subject"] = subject
        try:
            renderer.render(r.template, ctx)
        except RenderError as exc:
            raise RenderError(f"campaign {campaign.name}, customer {r.customer_id}: {exc}; nothing was planned "
                              "for sending") from None
        return ctx

    def work(start: int, stop: int) -> list[dict]:
        return [context(r) for r in rows.iloc[start:stop].itertuples()]

    # Rendering is most of a large plan's time: on every core (crm_tasks/messages/slices.py).
    return in_slices(work, len(rows), cfg.campaigns.render_processes)


def _record(conn: Connection, campaign: Campaign, as_of: date, run_at: datetime, result: PlanResult,
            frame: pd.DataFrame, sending: pd.Index, contexts: list[dict], replaced: list[int],
            *, domain: str, secret: str, dry_run: bool, test_recipient: str | None,
            audience_limit: int | None) -> None:
    """Replace the earlier runs of this date, then store the run, its plan and its ledger rows.
    ``domain`` is the sender's: the Message-ID of each ledger row is fixed here, before any attempt."""
    now = datetime.now(UTC)
    if replaced:
        result.replaced = _replace_runs(conn, replaced)
    result.run_id = conn.execute(insert(CampaignRun).values(
        campaign=campaign.name, as_of=as_of, run_at=run_at, dry_run=dry_run, test_run=test_recipient is not None,
        status=result.status, audience=result.audience, recipients=result.recipients, holdout=result.holdout,
        excluded=result.excluded, reasons=result.reasons, diff=result.diff,
        parameters={"definition": campaign.model_dump(mode="json"), "audience_limit": audience_limit},
        error=result.error, created_at=now,
    ).returning(CampaignRun.id)).scalar_one()
    _insert_plan(conn, campaign, result.run_id, frame)
    if dry_run or result.status != RunStatus.PLANNED or sending.empty:
        return
    rows = frame.loc[sending]
    # Test messages get keys of their own, so that they never use up a customer's occurrence.
    prefix = f"test:{result.run_id}:" if test_recipient else ""
    _insert_ledger(conn, campaign, result.run_id, rows, contexts, prefix, now, domain=domain,
                   secret=secret,
                   test_recipient=test_recipient, lateness=lateness_limit(campaign, as_of))
    if campaign.coupon is not None:
        _insert_coupons(conn, campaign, result.run_id, rows, prefix, as_of)
    if test_recipient is None:
        _insert_impressions(conn, rows, contexts, as_of)


def _replace_runs(conn: Connection, replaced: list[int]) -> int:
    """Remove the still-planned messages (and their coupons) of earlier runs of the same date; returns
    how many. A run whose messages went out (or were tried) stays, marked replaced, so that its ledger
    rows keep naming a recorded run and `crm campaign status` shows them; the others go."""
    planned = (Message.run_id.in_(replaced), Message.state == MessageState.PLANNED)
    conn.execute(delete(Coupon).where(Coupon.idempotency_key.in_(select(Message.idempotency_key).where(*planned))))
    removed = conn.execute(delete(Message).where(*planned)).rowcount
    delivered = set(conn.execute(select(Message.run_id).where(Message.run_id.in_(replaced)).distinct()).scalars())
    gone = [r for r in replaced if r not in delivered]
    if gone:
        conn.execute(delete(CampaignPlanRow).where(CampaignPlanRow.run_id.in_(gone)))
        conn.execute(delete(CampaignRun).where(CampaignRun.id.in_(gone)))
    if delivered:
        conn.execute(update(CampaignRun).where(CampaignRun.id.in_(delivered)).values(status=RunStatus.REPLACED))
    return removed


def _insert_plan(conn: Connection, campaign: Campaign, run_id: int, frame: pd.DataFrame) -> None:
    """One plan row per audience member: outcome, reason, and for those to send the time and coupon."""
    sending = frame["outcome"] == SEND
    insert_columns(conn, CampaignPlanRow.__table__, {
        "run_id": run_id, "customer_id": _values(frame["customer_id"]), "outcome": _values(frame["outcome"]),
        "reason": _values(frame["reason"]), "occurrence": _values(frame["occurrence"]),
        "idempotency_key": _values(frame["key"]), "locale": _values(frame["lang"]),
        "template": _values(frame["template"]), "variant": _values(frame["variant"]),
        "coupon_code": _values(frame["coupon_code"].where(sending)), "send_at": _instants(frame["send_at"]),
        "local_send_at": _values(frame["local_send_at"])})


def _insert_ledger(conn: Connection, campaign: Campaign, run_id: int, rows: pd.DataFrame, contexts: list[dict],
                   prefix: str, now: datetime, *, domain: str, secret: str, test_recipient: str | None,
                   lateness: tuple[date, str]) -> None:
    """The send ledger's rows, state planned, each with its allow-listed render context, Message-ID and
    lateness limit (none for a test message: a tester wants it whenever they ask)."""
    test = test_recipient is not None
    last_day, why = lateness
    keys = (prefix + rows["key"]).tolist()
    insert_columns(conn, Message.__table__, {
        "idempotency_key": keys, "campaign": campaign.name, "customer_id": _values(rows["customer_id"]),
        "run_id": run_id, "occurrence": _values(rows["occurrence"]), "state": MessageState.PLANNED.value,
        "test": test, "recipient": test_recipient if test else _values(rows["email"]), "locale": _values(rows["lang"]),
        "template": _values(rows["template"]), "variant": _values(rows["variant"]),
        "coupon_code": _values(rows["coupon_code"]), "send_at": _instants(rows["send_at"]), "context": contexts,
        "created_at": now, "updated_at": now, "message_id": [message_id_for(k, domain, secret) for k in keys],
        "expires_at": None if test else _instants(expiry_times(rows, last_day)),
        "expiry_reason": None if test else why})


def _insert_impressions(conn: Connection, rows: pd.DataFrame, contexts: list[dict], as_of: date) -> None:
    """The products each message shows (``recommendation_impressions``): the nightly refresh leaves them out
    of the customer's list for ``recommendations.recent_days``. Recorded when the message is planned for
    sending (a message suppressed or expired later still counts as shown: a rare miss, on the safe side); a
    re-planned date writes the same rows again, which the primary key ignores."""
    day = as_of.isoformat()
    shown = list(dict.fromkeys((r.customer_id, item["sku"], day) for r, ctx in zip(rows.itertuples(), contexts,
                                                                                   strict=True)
                               for item in ctx["customer"]["recommendations"]))
    bulk_insert(conn, "recommendation_impressions", ["customer_id", "sku", "shown_on"], shown,
                "ON CONFLICT DO NOTHING")


def _insert_coupons(conn: Connection, campaign: Campaign, run_id: int, rows: pd.DataFrame, prefix: str,
                    as_of: date) -> None:
    """The coupons the messages carry, valid from the occurrence day for the campaign's valid_days, each with
    its scope: any purchase, or the category / the product of the customer's first recommendation."""
    c = campaign.coupon
    scope = coupon_scope(campaign)
    insert_columns(conn, Coupon.__table__, {
        "code": _values(rows["coupon_code"]), "idempotency_key": (prefix + rows["key"]).tolist(),
        "campaign": campaign.name, "customer_id": _values(rows["customer_id"]), "value": c.value,
        "value_type": c.type, "currency": c.currency, "issued_on": as_of,
        "expires_on": as_of + timedelta(days=c.valid_days), "run_id": run_id, "scope": scope.value,
        "scope_value": [_scope_value(scope, t) for t in rows["target"]]})


def _values(column: pd.Series) -> list:
    """A column's values for the database, a missing value (NaN, NaT, None) as None."""
    return column.astype(object).where(column.notna(), None).tolist()


def _instants(column: pd.Series) -> list:
    """A column of UTC timestamps as datetimes, NaT as None."""
    return [None if pd.isna(t) else t.to_pydatetime() for t in column]
