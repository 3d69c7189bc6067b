"""What each CRM page shows, as small result objects built from the library's own results.

Wherever the library has a result object (``lifecycle_kpis``, ``sales_report``, ``cohort_matrix``,
``forecast_report``, ``clv_report``, ``stored_report``, ``campaign_report``, ``lift_summary``), a page
holds that very object, so a page, ``crm report ... --json`` and a test read the same numbers. The few
queries here cover what no library function returns yet (failed campaign runs, the plan funnel,
quarantine reasons and lines); each says so.

Nothing here holds personal data beyond customer ids (the CLV list): no names, addresses or phones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, or_, select

from crm_tasks.analytics.clv import ClvReport, clv_report
from crm_tasks.analytics.forecast import ForecastReport, forecast_report
from crm_tasks.analytics.kpis import Cohort, MonthKpis, cohort_matrix, lifecycle_kpis
from crm_tasks.analytics.sales import SalesRow, period_of, sales_report
from crm_tasks.clock import months_up_to
from crm_tasks.delivery import ledger
from crm_tasks.errors import ConfigError
from crm_tasks.ingest.batches import IngestReport, stored_report
from crm_tasks.results.reports import CampaignReport, campaign_report, lift_summary
from crm_tasks.segments.history import SegmentList, TransitionList, list_segments, transitions
from crm_tasks.settings import Settings
from crm_tasks.store.models import (
    CampaignRun,
    IngestBatch,
    Message,
    MessageState,
    QuarantinedRow,
    RunStatus,
    SalesDaily,
    Segment,
    SegmentRun,
    SegmentSize,
)

# How far back each period's chart reaches.
SPAN = {"day": timedelta(days=89), "week": timedelta(weeks=25), "month": None}
MONTHS_SHOWN = 12
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


def _forecast(engine: Engine, cfg: Settings) -> ForecastReport | None:
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
        }


def overview(engine: Engine, cfg: Settings, as_of: date) -> Overview:
    kpis = lifecycle_kpis(engine, cfg, as_of, months=1)
    month = as_of.replace(day=1)
    prev = months_up_to(month - timedelta(days=1), 1)[0]
    by_month = {r.period: r for r in sales_report(engine, cfg, "month", prev, as_of)}
    prev_end = min(prev + timedelta(days=as_of.day - 1), month - timedelta(days=1))
    to_date = sales_report(engine, cfg, "month", prev, prev_end)
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
        ingest_night=night, ingest=stored_report(engine, night, night) if night else None,
        failed_runs=failed_runs(engine), week_ago=week_ago, stages_week_ago=then,
    )


# No library function lists failed runs yet: a run a guardrail blocked, or with messages that failed for
# good or whose fate is unknown (test and dry runs aside), newest first. It counts the failed messages of
# every run (messages has no index on state): at millions of messages this wants a stored count per run.
def failed_runs(engine: Engine, limit: int = FAILED_RUNS_SHOWN) -> list[dict]:
    m, r = Message, CampaignRun
    bad = (select(m.run_id, func.count().label("n")).where(m.state.in_([MessageState.FAILED, MessageState.UNKNOWN]),
                                                          m.test.is_(False))
           .group_by(m.run_id).subquery())
    stmt = (select(r.id, r.campaign, r.as_of, r.status, r.recipients, r.error, func.coalesce(bad.c.n, 0))
            .outerjoin(bad, bad.c.run_id == r.id)
            .where(r.dry_run.is_(False), r.test_run.is_(False), or_(r.status == RunStatus.BLOCKED, bad.c.n > 0))
            .order_by(r.created_at.desc(), r.id.desc()).limit(limit))
    with engine.connect() as conn:
        return [{"run_id": i, "campaign": c, "as_of": a.isoformat(), "status": s, "recipients": n, "error": e,
                 "failed_messages": int(f)} for i, c, a, s, n, e, f in conn.execute(stmt)]


# --- sales ----------------------------------------------------------------------------------------------


@dataclass
class SalesPage:
    as_of: date
    by: str
    start: date
    rows: list[SalesRow]  # sales_report's rows, one per period with sales
    periods: list[str]  # every period of the range, sales or not (the chart's x axis)
    forecast: ForecastReport | None
    cohorts: list[Cohort]
    clv: ClvReport

    @property
    def forecast_days(self) -> list[dict]:
        """The forecast's days after the as-of day (only shown by day: intervals of days do not add up)."""
        if self.forecast is None or self.by != "day":
            return []
        return [d for d in self.forecast.days if date.fromisoformat(d["date"]) > self.as_of]

    def to_dict(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "by": self.by, "rows": [r.to_dict() for r in self.rows],
                "forecast_days": self.forecast_days, "cohorts": [c.to_dict() for c in self.cohorts],
                "clv": self.clv.to_dict()}


def sales_page(engine: Engine, cfg: Settings, as_of: date, by: str) -> SalesPage:
    """Raises ConfigError for a period that is not day, week or month (sales_report's own check)."""
    span = SPAN.get(by)
    start = months_up_to(as_of, MONTHS_SHOWN)[0] if span is None else period_of(as_of - span, by)
    rows = sales_report(engine, cfg, by, start, as_of)
    periods, p = [], period_of(start, by)
    while p <= as_of:
        periods.append(p.isoformat())
        p = {"day": p + timedelta(days=1), "week": p + timedelta(days=7),
             "month": (p + timedelta(days=32)).replace(day=1)}[by]
    return SalesPage(as_of, by, start, rows, periods, _forecast(engine, cfg),
                     cohort_matrix(engine, cfg, as_of, MONTHS_SHOWN), clv_report(engine, top=20))


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
    report = stored_report(engine, since, as_of)
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
