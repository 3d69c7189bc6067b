"""What each CRM page shows, as small result objects built from the library's own results.

Wherever the library has a result object (``lifecycle_kpis``, ``sales_report``, ``cohort_matrix``,
``forecast_report``, ``clv_report``, ``stored_report``, ``campaign_report``, ``lift_summary``), a page
holds that very object, so a page, ``crm report ... --json`` and a test read the same numbers. The few
queries here cover what no library function returns yet (failed campaign runs, the plan funnel,
quarantine reasons and lines); each says so.

Nothing here holds personal data beyond customer ids (the CLV list, a segment's members), except
``export_rows``, the segment's CSV with its members' profiles, which only the Admin and Op routes call
(``crm_tasks.pages.access``). A customer's record is ``crm_tasks.pages.customers``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, or_, select, text

from crm_tasks.analytics.figures import MONTHS_SHOWN, Figures, overview_months, sales_start
from crm_tasks.analytics.kpis import Cohort, MonthKpis
from crm_tasks.analytics.sales import SalesRow, check_period, period_of, sales_report
from crm_tasks.clock import months_up_to
from crm_tasks.delivery import ledger
from crm_tasks.errors import ConfigError
from crm_tasks.results.reports import CampaignReport, campaign_report, lift_summary
from crm_tasks.segments.history import SegmentList, TransitionList, list_segments, transitions
from crm_tasks.settings import Settings
from crm_tasks.store.models import (
    CampaignRun,
    CleanupRun,
    Customer,
    IngestBatch,
    Message,
    MessageState,
    QuarantinedRow,
    RunStatus,
    SalesDaily,
    Segment,
    SegmentMembership,
    SegmentRun,
    SegmentSize,
)

if TYPE_CHECKING:  # the forecast, lifetime-value and ingest modules load pandas and Arrow: not at the app's start
    from crm_tasks.analytics.clv import ClvReport
    from crm_tasks.analytics.forecast import ForecastReport
    from crm_tasks.ingest.batches import IngestReport

log = logging.getLogger(__name__)
QUARANTINE_PAGE_SIZE = 50
QUALITY_NIGHTS = 30
FAILED_RUNS_SHOWN = 10
RUNS_PER_CAMPAIGN = 5
SEGMENT_HISTORY = timedelta(days=180)
FIRST_MOVES = timedelta(days=30)  # the moves shown when there is no earlier recompute to start from
FAMILIES = ("rfm", "lifecycle", "value", "custom")


def default_as_of(engine: Engine, cfg: Settings) -> date:
    """The day the pages describe when none is asked for: the latest day the nightly stages have data for
    (a demo's data may end months ago), else yesterday in crm.yaml's time zone."""
    with engine.connect() as conn:
        days = [conn.execute(select(func.max(SegmentRun.as_of))).scalar(),
                conn.execute(select(func.max(SalesDaily.day))).scalar(),
                conn.execute(select(func.max(IngestBatch.partition_date))).scalar()]
    known = [d for d in days if d is not None]
    if known:
        return max(known)
    return datetime.now(UTC).astimezone(ZoneInfo(cfg.timezone)).date() - timedelta(days=1)


def _stored_report(engine: Engine, since: date, until: date) -> IngestReport:
    from crm_tasks.ingest.batches import stored_report

    return stored_report(engine, since, until)


def _forecast(engine: Engine, cfg: Settings) -> ForecastReport | None:
    from crm_tasks.analytics.forecast import forecast_report

    try:
        return forecast_report(engine, cfg)
    except ConfigError:  # no fit stored yet: the page says so
        return None


# --- overview -------------------------------------------------------------------------------------------


@dataclass
class Overview:
    as_of: date
    kpis: MonthKpis | None  # the as-of month's KPIs (stages at its last recompute, 12-month churn rate)
    this_month: SalesRow | None  # month to date
    last_month: SalesRow | None  # the whole month before
    last_month_to_date: SalesRow | None  # the month before up to the same day of the month: a fair comparison
    forecast: ForecastReport | None
    forecast_rest_of_month: float | None  # sum of the forecast's daily means after as_of, to the month's end
    ingest_night: date | None  # the latest partition date with batches
    ingest: IngestReport | None
    failed_runs: list[dict]
    week_ago: date | None = None  # the latest recompute at least a week before as_of
    stages_week_ago: dict[str, int] = field(default_factory=dict)
    freshness: dict | None = None  # the latest cleanup run's shares of active, at-risk and archived profiles
    # Airflow's own runs, when the plugin can read them: {"next": [...], "failed": [...]}, or {"error": "..."}.
    airflow: dict | None = None
    # When the night stored the reports shown (None: computed live, the data changed since), and whether any
    # report was computed live.
    stored_at: datetime | None = None
    live: bool = True

    def stage_change(self, stage: str) -> int | None:
        """The stage's customers now against a week before (None without a recompute then or now)."""
        now = (self.kpis.stages if self.kpis else {}).get(stage)
        before = self.stages_week_ago.get(stage)
        return None if now is None or before is None else now - before

    @property
    def projected_month(self) -> float | None:
        """Month to date plus the forecast's mean for the days left (None without a forecast for them)."""
        if self.forecast_rest_of_month is None:
            return None
        return float(self.this_month.revenue if self.this_month else 0) + self.forecast_rest_of_month

    @property
    def revenue_change(self) -> float | None:
        """This month to date against the same days of the month before (None when that had no revenue)."""
        before = self.last_month_to_date.revenue if self.last_month_to_date else 0
        if not before:
            return None
        return float((self.this_month.revenue if self.this_month else 0) / before - 1)

    def to_dict(self) -> dict:
        return {
            "as_of": self.as_of.isoformat(),
            "kpis": self.kpis.to_dict() if self.kpis else None,
            "revenue": {k: getattr(self, k).to_dict() if getattr(self, k) else None
                        for k in ("this_month", "last_month", "last_month_to_date")},
            "forecast": self.forecast.fit if self.forecast else None,
            "forecast_rest_of_month": self.forecast_rest_of_month, "projected_month": self.projected_month,
            "ingest_night": self.ingest_night.isoformat() if self.ingest_night else None,
            "ingest": self.ingest.to_dict() if self.ingest else None,
            "failed_runs": self.failed_runs,
            "week_ago": self.week_ago.isoformat() if self.week_ago else None, "stages_week_ago": self.stages_week_ago,
            "freshness": self.freshness, "airflow": self.airflow,
            "stored_at": self.stored_at.isoformat() if self.stored_at else None, "live": self.live,
        }


def overview(engine: Engine, cfg: Settings, as_of: date, airflow_runs: Callable[[], dict] | None = None) -> Overview:
    """``airflow_runs`` (the plugin's: it reads Airflow's metadata) gives the next scheduled campaign runs and
    the CRM DAGs' latest failed runs; without it (no Airflow) the page says they are not available."""
    figures = Figures(engine, cfg)
    kpis = figures.kpis(as_of, months=1)
    month = as_of.replace(day=1)
    (prev, _), (_, prev_end) = overview_months(as_of)
    by_month = {r.period: r for r in figures.sales("month", prev, as_of)}
    to_date = figures.sales("month", prev, prev_end)
    forecast = _forecast(engine, cfg)
    rest = None
    if forecast is not None and forecast.days:
        month_end = months_up_to(as_of, 1)[1] - timedelta(days=1)
        ahead = [d for d in forecast.days if as_of < date.fromisoformat(d["date"]) <= month_end]
        # Only when the fit covers every day left: a partial sum would understate the month.
        if as_of == month_end:
            rest = 0.0
        elif ahead and len(ahead) == (month_end - as_of).days:
            rest = sum(d["mean"] for d in ahead)
    with engine.connect() as conn:
        night = conn.execute(select(func.max(IngestBatch.partition_date))
                             .where(IngestBatch.partition_date <= as_of)).scalar()
    # The lifecycle stages at the latest recompute a week or more before (within eight weeks): the change
    # since last week.
    history = segment_sizes(engine, "lifecycle", as_of - timedelta(weeks=8), as_of - timedelta(days=7))
    days = sorted({d for per in history.values() for d in per})
    week_ago = date.fromisoformat(days[-1]) if days else None
    then = {name.removeprefix("lifecycle:"): per[days[-1]] for name, per in history.items() if days and days[-1] in per}
    return Overview(
        as_of=as_of, kpis=kpis[-1] if kpis else None,
        this_month=by_month.get(month.isoformat()), last_month=by_month.get(prev.isoformat()),
        last_month_to_date=to_date[0] if to_date else None, forecast=forecast, forecast_rest_of_month=rest,
        ingest_night=night, ingest=_stored_report(engine, night, night) if night else None,
        failed_runs=failed_runs(engine), week_ago=week_ago, stages_week_ago=then,
        freshness=freshness(engine, as_of), airflow=_airflow(airflow_runs),
        stored_at=figures.stored_at, live=figures.live,
    )


def _airflow(airflow_runs: Callable[[], dict] | None) -> dict | None:
    if airflow_runs is None:
        return None
    try:
        return airflow_runs()
    except Exception as exc:  # noqa: BLE001 - Airflow's database down must not take the CRM's overview with it
        log.warning("overview: Airflow's runs could not be read: %s", type(exc).__name__)
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


# The share of stale profiles is what the weekly cleanup measured (cleanup_runs, one row per as-of date):
# profiles not active within cleanup.at_risk_months are at risk; the archived ones went stale already.
def freshness(engine: Engine, as_of: date) -> dict | None:
    """The latest cleanup run on or before ``as_of``: its date, profiles and shares; None before the first."""
    r = CleanupRun
    with engine.connect() as conn:
        row = conn.execute(select(r.as_of, r.profiles_before, r.active_share, r.at_risk_share, r.archived_share)
                           .where(r.as_of <= as_of).order_by(r.as_of.desc()).limit(1)).first()
    if row is None:
        return None
    return {"as_of": row.as_of.isoformat(), "profiles_before": row.profiles_before, "active_share": row.active_share,
            "at_risk_share": row.at_risk_share, "archived_share": row.archived_share,
            "stale_share": row.at_risk_share + row.archived_share}


# No library function lists failed runs yet: a run a guardrail blocked, or with messages that failed for
# good or whose fate is unknown (test and dry runs aside), newest first. The messages in trouble are read
# from the partial index ix_messages_trouble, whose condition the query repeats word for word (SQLite uses a
# partial index only for a WHERE it can match at prepare time: literals, not parameters).
TROUBLE = text(f"messages.state IN ('{MessageState.FAILED.value}', '{MessageState.UNKNOWN.value}')")


def failed_runs_query(limit: int):
    m, r = Message, CampaignRun
    bad = (select(m.run_id, func.count().label("n")).where(TROUBLE, m.test.is_(False))
           .group_by(m.run_id).subquery())
    return (select(r.id, r.campaign, r.as_of, r.status, r.recipients, r.error, func.coalesce(bad.c.n, 0))
            .outerjoin(bad, bad.c.run_id == r.id)
            .where(r.dry_run.is_(False), r.test_run.is_(False), or_(r.status == RunStatus.BLOCKED, bad.c.n > 0))
            .order_by(r.created_at.desc(), r.id.desc()).limit(limit))


def failed_runs(engine: Engine, limit: int = FAILED_RUNS_SHOWN) -> list[dict]:
    with engine.connect() as conn:
        return [{"run_id": i, "campaign": c, "as_of": a.isoformat(), "status": s, "recipients": n, "error": e,
                 "failed_messages": int(f)} for i, c, a, s, n, e, f in conn.execute(failed_runs_query(limit))]


# --- sales ----------------------------------------------------------------------------------------------


@dataclass
class SalesPage:
    as_of: date
    by: str
    start: date
    rows: list[SalesRow]  # sales_report's rows, one per period with sales (of the filter, if any)
    periods: list[str]  # every period of the range, sales or not (the chart's x axis)
    forecast: ForecastReport | None
    cohorts: list[Cohort]
    clv: ClvReport
    filters: dict[str, str] = field(default_factory=dict)  # category, store or segment shown, if any
    breakdown: dict[str, list[dict]] = field(default_factory=dict)  # category|store|segment -> its totals
    clv_bins: list[dict] = field(default_factory=list)  # the distribution of the stored 12-month CLV
    buyers: bool = True  # whether the rows count distinct buyers (a filter's are counted only when asked)
    stored_at: datetime | None = None  # when the night stored the reports shown (None: all computed live)
    live: bool = True  # whether any report shown was computed live

    @property
    def filtered(self) -> bool:
        return bool(self.filters)

    @property
    def forecast_days(self) -> list[dict]:
        """The forecast's days after the as-of day (only shown by day: intervals of days do not add up; and
        only for all sales, which is what was forecast)."""
        if self.forecast is None or self.by != "day" or self.filters:  # the forecast is of all sales
            return []
        return [d for d in self.forecast.days if date.fromisoformat(d["date"]) > self.as_of]

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "by": self.by, "filters": self.filters,
                "rows": [r.to_dict() for r in self.rows], "forecast_days": self.forecast_days,
                "cohorts": [c.to_dict() for c in self.cohorts], "clv": self.clv.to_dict(),
                "breakdown": self.breakdown, "clv_bins": self.clv_bins, "buyers": self.buyers,
                "stored_at": self.stored_at.isoformat() if self.stored_at else None, "live": self.live}


def sales_page(engine: Engine, cfg: Settings, as_of: date, by: str, *, category: str | None = None,
               store: str | None = None, segment: str | None = None, count_buyers: bool = False) -> SalesPage:
    """Raises ConfigError for a period that is not day, week or month, or a segment that is not one the cube
    keeps, or a segment with a category or store (sales_report's own checks).

    All sales come from the night's stored reports. A category's, store's or segment's sales are read from
    the cube live; their distinct buyers, a recount of the range's purchases (seconds at 10M purchases), only
    with ``count_buyers``."""
    check_period(by)
    start = sales_start(as_of, by)
    filters = {k: v for k, v in (("category", category), ("store", store), ("segment", segment)) if v}
    figures = Figures(engine, cfg)
    if filters:
        rows = sales_report(engine, cfg, by, start, as_of, category=category, store=store, segment=segment,
                            buyers=count_buyers)
    else:
        rows = figures.sales(by, start, as_of)
    periods, p = [], period_of(start, by)
    while p <= as_of:
        periods.append(p.isoformat())
        p = {"day": p + timedelta(days=1), "week": p + timedelta(days=7),
             "month": (p + timedelta(days=32)).replace(day=1)}[by]
    page = SalesPage(as_of, by, start, rows, periods, _forecast(engine, cfg), figures.cohorts(as_of, MONTHS_SHOWN),
                     figures.clv(), filters, figures.breakdown(start, as_of),
                     figures.clv_bins(), buyers=not filters or count_buyers)
    page.stored_at, page.live = figures.stored_at, figures.live
    return page


# --- data quality ---------------------------------------------------------------------------------------


@dataclass
class DataQuality:
    as_of: date
    since: date
    ingest: IngestReport  # stored_report's batches of the nights shown
    reasons: dict[str, dict[str, int]]  # night -> field named by the reason -> quarantined lines
    lines: list[dict]  # one page of quarantined lines: batch, file, line number, reason
    page: int
    pages: int
    quarantined: int  # lines in quarantine over the nights shown

    @property
    def nights(self) -> dict[str, list]:
        out: dict[str, list] = defaultdict(list)
        for b in self.ingest.batches:
            out[b.partition_date].append(b)
        return dict(sorted(out.items(), reverse=True))

    @property
    def reason_fields(self) -> list[str]:
        return sorted({f for per in self.reasons.values() for f in per})

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "since": self.since.isoformat(), "ingest": self.ingest.to_dict(),
                "reasons": self.reasons, "lines": self.lines, "page": self.page, "pages": self.pages,
                "quarantined": self.quarantined}


def reason_field(reason: str) -> str:
    """The field a quarantine reason is about: its first word ("email is not a valid address: ..." -> email).
    Reasons quote no personal data (``crm_tasks.ingest.standardise``), but grouping by field keeps the
    table small whatever values they quote."""
    return reason.split(" ", 1)[0].strip(";:,") or "(none)"


def data_quality(engine: Engine, as_of: date, page: int = 1) -> DataQuality:
    since = as_of - timedelta(days=QUALITY_NIGHTS - 1)
    report = _stored_report(engine, since, as_of)
    q, b = QuarantinedRow, IngestBatch
    current = [b.partition_date >= since, b.partition_date <= as_of, b.status != "replaced"]
    with engine.connect() as conn:
        # No library function reads quarantine reasons or lines yet. Reasons per night, from the quarantine
        # rows of the current batches (quarantine.batch_id is indexed).
        counted = conn.execute(select(b.partition_date, q.reason, func.count()).join(b, b.id == q.batch_id)
                               .where(*current).group_by(b.partition_date, q.reason)).all()
        total = sum(n for _, _, n in counted)
        pages = max(1, -(-total // QUARANTINE_PAGE_SIZE))
        page = min(max(page, 1), pages)
        lines = conn.execute(select(q.batch_id, b.partition_date, q.file_path, q.line_no, q.reason)
                             .join(b, b.id == q.batch_id).where(*current)
                             .order_by(b.partition_date.desc(), q.batch_id, q.line_no)
                             .offset((page - 1) * QUARANTINE_PAGE_SIZE).limit(QUARANTINE_PAGE_SIZE)).all()
    reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for night, reason, n in counted:
        for part in reason.split("; "):  # a line can fail on several fields
            reasons[night.isoformat()][reason_field(part)] += n
    return DataQuality(
        as_of, since, report, {k: dict(v) for k, v in sorted(reasons.items(), reverse=True)},
        [{"batch_id": i, "night": d.isoformat(), "file": f, "line_no": n, "reason": r} for i, d, f, n, r in lines],
        page, pages, total)


# --- segments -------------------------------------------------------------------------------------------


# No library function returns the sizes over time yet: each recompute writes one row per segment to
# segment_sizes (keyed by date and segment), so this reads a few rows per recompute day of the range.
def segment_sizes(engine: Engine, family: str, since: date, until: date) -> dict[str, dict[str, int]]:
    """Segment name -> recompute day (ISO) -> size, for one family's segments between two days."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    with engine.connect() as conn:
        stmt = (select(SegmentSize.as_of, Segment.name, SegmentSize.size)
                .join(Segment, Segment.id == SegmentSize.segment_id)
                .where(Segment.family == family, SegmentSize.as_of >= since, SegmentSize.as_of <= until)
                .order_by(SegmentSize.as_of, Segment.name))
        for day, name, size in conn.execute(stmt):
            out[name][day.isoformat()] = int(size)
    return dict(out)


@dataclass
class SegmentsPage:
    as_of: date
    family: str
    since: date  # the first day of the transitions shown (the sizes go back SEGMENT_HISTORY)
    segments: SegmentList  # list_segments(): every segment at the latest recompute, and its change
    sizes: dict[str, dict[str, int]]  # the family's sizes per recompute day
    moves: TransitionList  # transitions(): moves into the family's segments since ``since``

    @property
    def days(self) -> list[str]:
        return sorted({d for per in self.sizes.values() for d in per})

    @property
    def matrix(self) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
        """Rows (where from: a segment of the family, or "(entered)"), columns (where to), counts."""
        family = {s.name: s.family for s in self.segments.segments}  # custom segments carry no prefix
        pairs = {(p.from_segment or "(entered)", p.to_segment): p.customers for p in self.moves.pairs
                 if family.get(p.to_segment) == self.family}
        rows = sorted({f for f, _ in pairs}, key=lambda f: (f == "(entered)", f))
        return rows, sorted({t for _, t in pairs}), pairs

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "family": self.family, "since": self.since.isoformat(),
                "segments": self.segments.to_dict(), "sizes": self.sizes, "moves": self.moves.to_dict()}


def segments_page(engine: Engine, as_of: date, family: str = "rfm", since: date | None = None) -> SegmentsPage:
    """``since`` defaults to the day after the recompute before ``as_of``: the moves that make the change
    column. (A longer period costs time: ``transitions`` pairs each entry with its exit, see the report.)"""
    if since is None:
        with engine.connect() as conn:
            before = conn.execute(select(func.max(SegmentRun.as_of)).where(SegmentRun.as_of < as_of)).scalar()
        since = before + timedelta(days=1) if before else as_of - FIRST_MOVES
    return SegmentsPage(as_of, family, since, list_segments(engine),
                        segment_sizes(engine, family, as_of - SEGMENT_HISTORY, as_of),
                        transitions(engine, since, as_of))


# --- campaigns ------------------------------------------------------------------------------------------


@dataclass
class CampaignRunView:
    result: dict  # one run of campaign_report(...).runs: treatment variants, holdout, lift
    funnel: dict | None  # audience, exclusions by reason, recipients, holdout (campaign_runs)
    ledger: dict[str, int]  # messages by state (ledger.state_counts)


@dataclass
class CampaignsPage:
    summary: list[dict]  # lift_summary(): every measured run's verdict, one line per treatment group
    reports: list[CampaignReport] = field(default_factory=list)
    runs: dict[tuple[str, int], CampaignRunView] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "campaigns": [r.to_dict() for r in self.reports],
                "funnels": {f"{c}:{i}": v.funnel for (c, i), v in self.runs.items()},
                "ledger": {f"{c}:{i}": v.ledger for (c, i), v in self.runs.items()}}


def campaigns_page(engine: Engine, campaign: str | None = None) -> CampaignsPage:
    """Every campaign with measured results (or only ``campaign``), its latest runs with their funnel and
    ledger. An unknown campaign name gives an empty page, not an error: names come from the query string."""
    summary = lift_summary(engine)
    names = sorted({r["campaign"] for r in summary})
    if campaign is not None:
        names = [n for n in names if n == campaign]
    page = CampaignsPage(summary)
    for name in names:
        report = campaign_report(engine, name)
        report.runs = report.runs[:RUNS_PER_CAMPAIGN]
        page.reports.append(report)
        ids = [run["run_id"] for run in report.runs]
        with engine.connect() as conn:
            # The plan funnel is stored on campaign_runs; no library function returns it for a run id.
            funnels = {r.id: {"audience": r.audience, "excluded": r.excluded, "reasons": dict(r.reasons or {}),
                              "recipients": r.recipients, "holdout": r.holdout}
                       for r in conn.execute(select(CampaignRun).where(CampaignRun.id.in_(ids)))}
            for run in report.runs:
                page.runs[(name, run["run_id"])] = CampaignRunView(
                    run, funnels.get(run["run_id"]), ledger.state_counts(conn, [Message.run_id == run["run_id"]]))
    return page


def money(x: Decimal | float | str | None) -> str:
    """A sum of money for a page: thousands separated, two decimals; an em dash for none."""
    if x is None:
        return "—"
    return f"{Decimal(str(x)):,.2f}"


# --- segment members ------------------------------------------------------------------------------------

MEMBERS_PAGE_SIZE = 100
MEMBERS_COUNTED = 10_000  # a search from an id counts at most this many members ahead (100 pages)
EXPORT_MAX_ROWS = 2_000_000  # a bigger export is refused, not cut short: a file missing members misleads
EXPORT_FIELDS = ("customer_id", "member_since", "first_name", "last_name", "email", "phone", "locale", "country",
                 "email_consent")


@dataclass
class Members:
    segment: str
    size: int  # current members
    start: str | None  # the id the list starts at (a search), else None
    found: bool | None  # whether ``start`` itself is a member (None without a search)
    rows: list[dict]  # customer id and the day they entered
    page: int
    pages: int
    more: bool = False  # from an id on, more pages than were counted (MEMBERS_COUNTED)

    def to_dict(self) -> dict:
        return {"segment": self.segment, "size": self.size, "start": self.start, "found": self.found,
                "rows": self.rows, "page": self.page, "pages": self.pages, "more": self.more}


def _segment_id(conn, name: str) -> int | None:
    return conn.execute(select(Segment.id).where(Segment.name == name)).scalar_one_or_none()


# Current members are the open memberships: the partial unique index ux_segment_memberships_open
# (segment_id, customer_id WHERE valid_to IS NULL) serves the count, the order and a search by id.
def _open(segment_id: int):
    sm = SegmentMembership
    return [sm.segment_id == segment_id, sm.valid_to.is_(None)]


def segment_members(engine: Engine, segment: str, start: str | None = None, page: int = 1) -> Members | None:
    """One page of a segment's current members (ids only) in id order, from ``start`` on when given; None for
    a segment that does not exist."""
    sm = SegmentMembership
    with engine.connect() as conn:
        sid = _segment_id(conn, segment)
        if sid is None:
            return None
        size = _current_size(conn, sid)
        where = _open(sid) + ([sm.customer_id >= start] if start else [])
        listed = size
        if start:  # the members from the id on, counted up to a bound: a search should not count half a million
            listed = conn.execute(select(func.count()).select_from(
                select(sm.customer_id).where(*where).limit(MEMBERS_COUNTED + 1).subquery())).scalar_one()
        pages = max(1, -(-min(listed, MEMBERS_COUNTED) // MEMBERS_PAGE_SIZE))
        page = min(max(page, 1), pages)
        rows = [{"customer_id": c, "member_since": d.isoformat()} for c, d in conn.execute(
            select(sm.customer_id, sm.valid_from).where(*where).order_by(sm.customer_id)
            .offset((page - 1) * MEMBERS_PAGE_SIZE).limit(MEMBERS_PAGE_SIZE))]
    found = None if not start else bool(rows) and page == 1 and rows[0]["customer_id"] == start
    return Members(segment, size, start, found, rows, page, pages, more=listed > MEMBERS_COUNTED)


def _current_size(conn, segment_id: int) -> int:
    """The segment's current members: the size the latest recompute stored (segment_sizes) when that is the
    latest recompute of all, which its open memberships are; else counted (up to 500k index entries)."""
    latest = conn.execute(select(func.max(SegmentRun.as_of))).scalar()
    stored = conn.execute(select(SegmentSize.as_of, SegmentSize.size).where(SegmentSize.segment_id == segment_id)
                          .order_by(SegmentSize.as_of.desc()).limit(1)).first()
    if stored is not None and stored.as_of == latest:
        return int(stored.size)
    sm = SegmentMembership
    return conn.execute(select(func.count()).select_from(sm).where(*_open(segment_id))).scalar_one()


def export_size(engine: Engine, segment: str) -> int | None:
    """How many rows the segment's export holds (its current members); None for no such segment."""
    with engine.connect() as conn:
        sid = _segment_id(conn, segment)
        if sid is None:
            return None
        return conn.execute(select(func.count()).select_from(SegmentMembership).where(*_open(sid))).scalar_one()


def _cell(value) -> str:
    """A CSV cell; text that starts like a spreadsheet formula gets a quote first, so that it stays text
    (numbers, a refund's minus included, stay numbers)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_rows(engine: Engine, segment: str, batch: int = 5000):
    """The segment's current members with their profile (empty for an archived or erased one), in id order,
    as CSV text (a header first): read in batches by id, never all in memory, in one read transaction, so
    that a recompute running meanwhile does not move members between batches (PostgreSQL: repeatable read;
    SQLite's read transaction is a snapshot already)."""
    import csv
    import io

    sm, c = SegmentMembership, Customer
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_FIELDS)
    yield out.getvalue()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            sid = _segment_id(conn, segment)
            after = None
            while True:
                rows = conn.execute(
                    select(sm.customer_id, sm.valid_from, c.first_name, c.last_name, c.email, c.phone, c.locale,
                           c.country, c.email_consent)
                    .outerjoin(c, c.customer_id == sm.customer_id)
                    .where(*_open(sid), *([sm.customer_id > after] if after is not None else []))
                    .order_by(sm.customer_id).limit(batch)).all()
                if not rows:
                    return
                out.seek(0)
                out.truncate()
                writer.writerows([[_cell(v) for v in r] for r in rows])
                yield out.getvalue()
                after = rows[-1][0]
