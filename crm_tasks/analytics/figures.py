"""Stored report figures: the reports the CRM pages open with, computed once a night and read back while the
data they were computed from has not changed.

At 10M purchases the distinct buyers of a sales report, the lifecycle KPIs and the cohort matrix each
recount purchases or a per-customer table (0.3-3 s apiece), and a page must answer in 300 ms. So the
nightly reports run, after the sales cube, the forecast and the CLV fit, calls ``store_figures``: it
computes the reports the overview and the sales page open with for its as-of date (``opening_reports``) and
stores each as JSON in ``report_figures`` with ``state``, a fingerprint of everything those reports read
(``data_state``): the ingest batches, the segment recomputes, the sales cube's day fingerprints, the CLV
fits, the cleanup runs, and the settings the reports depend on (time zone, base currency, exchange rates).

``Figures`` answers a report from the store only while the fingerprint now equals the stored one, and
otherwise computes it live (exact, slower) and says so (``sources``). A page, ``crm report ... --json`` and a
test therefore get the very same object either way; stale numbers are never shown. Between a night's ingest
and its reports run the pages compute live, and the overview says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, func, insert, select

from crm_tasks.analytics.kpis import Cohort, MonthKpis, cohort_matrix, lifecycle_kpis
from crm_tasks.analytics.purchase_days import refresh_purchase_days
from crm_tasks.analytics.sales import BREAKDOWNS, PERIODS, SalesRow, period_of, sales_breakdown, sales_report
from crm_tasks.clock import months_up_to
from crm_tasks.settings import Settings
from crm_tasks.store.models import CleanupRun, ClvFit, IngestBatch, ReportFigure, SalesDay, SegmentRun

if TYPE_CHECKING:  # the lifetime-value module loads pandas (its fit): imported where a report needs it
    from crm_tasks.analytics.clv import ClvReport

log = logging.getLogger(__name__)

# What the pages show (kept here, so that the night stores exactly what they open with).
MONTHS_SHOWN = 12  # the sales page's months, cohorts and the KPIs' history
SPAN = {"day": timedelta(days=89), "week": timedelta(weeks=25), "month": None}  # how far back a chart reaches
CLV_TOP = 20
CLV_BINS = 10


def sales_start(as_of: date, by: str) -> date:
    """The first period the sales page shows by ``by``, ending with ``as_of``'s."""
    span = SPAN[by]
    return months_up_to(as_of, MONTHS_SHOWN)[0] if span is None else period_of(as_of - span, by)


def overview_months(as_of: date) -> tuple[tuple[date, date], tuple[date, date]]:
    """The overview's two month reports: the month before and this month to ``as_of``; the month before up to
    the same day of the month (a fair comparison)."""
    month = as_of.replace(day=1)
    prev = months_up_to(month - timedelta(days=1), 1)[0]
    prev_end = min(prev + timedelta(days=as_of.day - 1), month - timedelta(days=1))
    return (prev, as_of), (prev, prev_end)


def data_state(conn: Connection, cfg: Settings) -> str:
    """A fingerprint of what the stored reports are computed from: any new or replaced ingest batch, segment
    recompute, change of the sales cube's days, CLV fit or cleanup run, or a change of the settings they use,
    changes it. Five aggregates over small tables (a few thousand rows each), read in a few milliseconds."""
    parts = [
        conn.execute(select(func.count(), func.max(IngestBatch.id), func.sum(IngestBatch.rows_loaded))).one(),
        conn.execute(select(func.count(), func.max(SegmentRun.computed_at))).one(),
        conn.execute(select(func.count(), func.sum(SalesDay.purchases), func.sum(SalesDay.id_sum),
                            func.sum(SalesDay.amount_sum), func.sum(SalesDay.first_orders))).one(),
        # A refit of the same date replaces its row: its duration tells the two apart.
        conn.execute(select(func.count(), func.max(ClvFit.as_of), func.sum(ClvFit.seconds))).one(),
        conn.execute(select(func.count(), func.max(CleanupRun.ran_at))).one(),
    ]
    settings = (cfg.timezone, cfg.segments.base_currency, sorted((k, str(v)) for k, v in
                                                                 cfg.segments.exchange_rates.items()))
    text = repr(([tuple(str(v) for v in row) for row in parts], settings))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- each report's JSON form ------------------------------------------------------------------------------


def _sales_rows(rows: list[SalesRow]) -> list[dict]:
    return [{k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(r).items()} for r in rows]


def _sales_from(body: list[dict]) -> list[SalesRow]:
    return [SalesRow(**(r | {"revenue": Decimal(r["revenue"]), "refunded": Decimal(r["refunded"])})) for r in body]


def _breakdown(engine: Engine, cfg: Settings, start: date, end: date) -> dict[str, list[dict]]:
    return {d: sales_breakdown(engine, cfg, start, end, d) for d in BREAKDOWNS}


def _breakdown_to(value: dict[str, list[dict]]) -> dict:
    return {d: [r | {"revenue": str(r["revenue"])} for r in rows] for d, rows in value.items()}


def _breakdown_from(body: dict) -> dict[str, list[dict]]:
    return {d: [r | {"revenue": Decimal(r["revenue"])} for r in rows] for d, rows in body.items()}


def _clv_to(report: ClvReport) -> dict:
    return report.to_dict() | {"rows": [r | {"clv_12m": None if r["clv_12m"] is None else str(r["clv_12m"])}
                                        for r in report.rows]}


def _clv_from(body: dict) -> ClvReport:
    from crm_tasks.analytics.clv import ClvReport

    rows = [r | {"clv_12m": None if r["clv_12m"] is None else Decimal(r["clv_12m"])} for r in body["rows"]]
    return ClvReport(date.fromisoformat(body["scored_as_of"]) if body["scored_as_of"] else None, body["fit"],
                     body["latest_attempt"], body["customers"], rows)


def _clv_report(engine: Engine, cfg: Settings, top: int) -> ClvReport:
    from crm_tasks.analytics.clv import clv_report

    return clv_report(engine, top)


def _clv_bins(engine: Engine, cfg: Settings, bins: int) -> list[dict]:
    from crm_tasks.analytics.clv import clv_distribution

    return clv_distribution(engine, bins)


@dataclass(frozen=True)
class Kind:
    compute: Callable[..., Any]  # (engine, cfg, **params) -> the report
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


KINDS: dict[str, Kind] = {
    "kpis": Kind(lambda e, c, as_of, months: lifecycle_kpis(e, c, as_of, months),
                 lambda v: [k.to_dict() for k in v], lambda b: [MonthKpis(**k) for k in b]),
    "cohorts": Kind(lambda e, c, as_of, months: cohort_matrix(e, c, as_of, months),
                    lambda v: [k.to_dict() for k in v], lambda b: [Cohort(**k) for k in b]),
    "sales": Kind(lambda e, c, by, start, end: sales_report(e, c, by, start, end), _sales_rows, _sales_from),
    "breakdown": Kind(lambda e, c, start, end: _breakdown(e, c, start, end), _breakdown_to, _breakdown_from),
    "clv": Kind(_clv_report, _clv_to, _clv_from),
    "clv_bins": Kind(_clv_bins, lambda v: v, lambda b: b),
}


def _key(params: dict) -> str:
    return json.dumps({k: v.isoformat() if isinstance(v, date) else v for k, v in sorted(params.items())},
                      separators=(",", ":"))


def opening_reports(as_of: date) -> list[tuple[str, dict]]:
    """The reports the overview, the sales page (by day, week and month) and their CLI twins open with."""
    reports: list[tuple[str, dict]] = [("kpis", {"as_of": as_of, "months": 1}),
                                       ("kpis", {"as_of": as_of, "months": MONTHS_SHOWN}),
                                       ("cohorts", {"as_of": as_of, "months": MONTHS_SHOWN}),
                                       ("clv", {"top": CLV_TOP}), ("clv_bins", {"bins": CLV_BINS})]
    reports += [("sales", {"by": "month", "start": start, "end": end}) for start, end in overview_months(as_of)]
    reports += [("sales", {"by": by, "start": sales_start(as_of, by), "end": as_of}) for by in PERIODS]
    reports += [("breakdown", {"start": sales_start(as_of, by), "end": as_of}) for by in PERIODS]
    return reports


class Figures:
    """The reports of one page view (or CLI command), each from the store when it is current, else live.

    ``sources`` records, per report asked for, when its stored copy was computed, or None for live."""

    def __init__(self, engine: Engine, cfg: Settings):
        self.engine, self.cfg = engine, cfg
        self._state: str | None = None
        self.sources: dict[str, datetime | None] = {}

    @property
    def state(self) -> str:
        if self._state is None:
            with self.engine.connect() as conn:
                self._state = data_state(conn, self.cfg)
        return self._state

    def report(self, name: str, **params) -> Any:
        kind, key = KINDS[name], _key(params)
        with self.engine.connect() as conn:
            row = conn.execute(select(ReportFigure.body, ReportFigure.computed_at)
                               .where(ReportFigure.name == name, ReportFigure.params == key,
                                      ReportFigure.state == self.state)).first()
        if row is not None:
            self.sources[f"{name} {key}"] = row.computed_at
            return kind.decode(row.body["value"])
        self.sources[f"{name} {key}"] = None
        return kind.compute(self.engine, self.cfg, **params)

    @property
    def live(self) -> bool:
        """Whether any report asked for was computed live (the data changed since the night stored it)."""
        return any(v is None for v in self.sources.values())

    @property
    def stored_at(self) -> datetime | None:
        """When the oldest stored report used was computed (None when none was)."""
        stamps = [v for v in self.sources.values() if v is not None]
        return min(stamps) if stamps else None

    def kpis(self, as_of: date, months: int = MONTHS_SHOWN) -> list[MonthKpis]:
        return self.report("kpis", as_of=as_of, months=months)

    def cohorts(self, as_of: date, months: int = MONTHS_SHOWN) -> list[Cohort]:
        return self.report("cohorts", as_of=as_of, months=months)

    def sales(self, by: str, start: date | None, end: date | None) -> list[SalesRow]:
        """All sales (no category, store or segment: those are counted live)."""
        return self.report("sales", by=by, start=start, end=end)

    def breakdown(self, start: date, end: date) -> dict[str, list[dict]]:
        """Each category's, store's and segment's totals from ``start`` to ``end`` (all sales)."""
        return self.report("breakdown", start=start, end=end)

    def clv(self, top: int = CLV_TOP) -> ClvReport:
        return self.report("clv", top=top)

    def clv_bins(self, bins: int = CLV_BINS) -> list[dict]:
        return self.report("clv_bins", bins=bins)


@dataclass
class StoreResult:
    as_of: date
    reports: int
    seconds: float
    slowest: dict[str, float]

    def summary(self) -> dict:
        return {"as_of": self.as_of.isoformat(), "reports": self.reports, "seconds": round(self.seconds, 3),
                "slowest": self.slowest}


def store_figures(engine: Engine, cfg: Settings, as_of: date) -> StoreResult:
    """Compute and store the opening reports of ``as_of`` under the data's fingerprint now, dropping every
    stored report of an older fingerprint (no page could use it again). Re-running replaces."""
    started = time.perf_counter()
    # All sales' distinct buyers are counted from the purchase days when none waits to be recomputed (the
    # CLV fit drains the queue too; a night whose fit failed must not fall back to counting purchases).
    refresh_purchase_days(engine, cfg)
    with engine.connect() as conn:
        state = data_state(conn, cfg)
    rows, took = [], {}
    for name, params in opening_reports(as_of):
        t = time.perf_counter()
        value = KINDS[name].compute(engine, cfg, **params)
        seconds = time.perf_counter() - t
        key = _key(params)
        took[f"{name} {key}"] = round(seconds, 3)
        rows.append({"name": name, "params": key, "state": state, "body": {"value": KINDS[name].encode(value)},
                     "computed_at": datetime.now(UTC), "seconds": seconds})
    with engine.begin() as conn:
        if data_state(conn, cfg) != state:
            # Data arrived while the reports were computed: they may mix before and after, so none is stored
            # (the pages compute live until the next run).
            log.warning("stored figures as of %s: the data changed while they were computed; not stored", as_of)
            return StoreResult(as_of, 0, time.perf_counter() - started, {})
        conn.execute(delete(ReportFigure).where(ReportFigure.state != state))
        for r in rows:
            conn.execute(delete(ReportFigure).where(ReportFigure.name == r["name"], ReportFigure.params == r["params"]))
        conn.execute(insert(ReportFigure), rows)
    slowest = dict(sorted(took.items(), key=lambda kv: -kv[1])[:3])
    result = StoreResult(as_of, len(rows), time.perf_counter() - started, slowest)
    log.info("stored figures as of %s: %d reports (%.1f s)", as_of, result.reports, result.seconds)
    return result
