"""Nightly ingest: landing files into the CRM store, one batch per file.

A batch is one transaction. Good rows load, bad rows go to the quarantine
with their line, raw text and reason, and the counts reconcile:
rows read = loaded + quarantined + duplicates. Re-running a date is a no-op
(a file whose checksum was already loaded is skipped); a corrected file
replaces the rows its earlier version loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError

from crm_tasks.contracts import CUSTOMER_COLUMNS, PRODUCT_COLUMNS, PURCHASE_COLUMNS
from crm_tasks.errors import (
    BatchRejected,
    ConfigError,
    CrmError,
    DatabaseError,
    IngestFailed,
    MissingPartition,
    UnreadableFile,
)
from crm_tasks.ingest import metrics
from crm_tasks.ingest.readers import (
    Chunk,
    FileScan,
    iter_csv,
    iter_parquet,
    prefetch,
    read_csv_header,
    read_parquet_header,
    scan_file,
)
from crm_tasks.ingest.standardise import standardise_customers, standardise_products, standardise_purchases
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import bulk_insert, copy_instants, copy_money
from crm_tasks.store.models import BatchStatus, IngestBatch, Purchase, QuarantinedRow
from crm_tasks.store.types import timestamp_texts

SOURCES = ("customers", "purchases", "products")
# The sources every night must bring (one of them at least): the catalogue changes rarely and is
# optional, so a night without a products/ partition is no missing night.
NIGHTLY = ("customers", "purchases")
REQUIRED = {
    "customers": ("customer_id", "email_consent", "locale", "timezone", "country", "created_at", "updated_at"),
    "purchases": tuple(c for c in PURCHASE_COLUMNS if c != "coupon_code"),
    "products": ("sku", "name", "category", "price", "currency", "url", "image_url", "in_stock", "updated_at"),
}
CONTRACT = {"customers": CUSTOMER_COLUMNS, "purchases": PURCHASE_COLUMNS, "products": PRODUCT_COLUMNS}
PATTERNS = {"customers": ("*.csv",), "purchases": ("*.csv", "*.parquet"), "products": ("*.csv", "*.parquet")}
_COUNTS = ("rows_read", "rows_loaded", "rows_quarantined", "rows_duplicate", "rows_withheld")
log = logging.getLogger(__name__)
_PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]{0,63}")


@dataclass
class LandingFile:
    source: str
    partition_date: date
    path: Path
    rel_path: str  # relative to the landing folder: the file's identity across runs


@dataclass
class BatchReport:
    """How one file reconciled. Holds no customer data, so it may go to logs and XCom."""

    file: str
    source: str
    partition_date: str
    status: str
    batch_id: int | None = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    dropped_columns: list[str] = field(default_factory=list)
    rows_withheld: int = 0  # a rejected file's good rows, not loaded
    replaced_batch_id: int | None = None
    first_reasons: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def reconciles(self) -> bool:
        return self.rows_read == self.rows_loaded + self.rows_quarantined + self.rows_duplicate + self.rows_withheld

    def to_dict(self) -> dict:
        return asdict(self) | {"reconciles": self.reconciles}


@dataclass
class IngestReport:
    batches: list[BatchReport]
    # Nights without any partition: {"date", "nights", "last_loaded"} (a warning within
    # missing_partition_grace nights in a row, past it a MissingPartition failure).
    missing: list[dict] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(b, k) for b in self.batches) for k in _COUNTS}

    @property
    def failed(self) -> list[BatchReport]:
        return [b for b in self.batches if b.status in (BatchStatus.REJECTED, BatchStatus.UNREADABLE)]

    @property
    def reconciles(self) -> bool:
        return all(b.reconciles for b in self.batches)

    def to_dict(self) -> dict:
        return {
            "batches": [b.to_dict() for b in self.batches],
            "totals": self.totals,
            "files": len(self.batches),
            "failed_files": len(self.failed),
            "missing_partitions": self.missing,
            "reconciles": self.reconciles,
        }

    def summary(self) -> dict:
        """Counts only, small enough for XCom."""
        statuses: dict[str, int] = {}
        for b in self.batches:
            statuses[str(b.status)] = statuses.get(str(b.status), 0) + 1
        return {"files": len(self.batches), "by_status": statuses, "totals": self.totals,
                "missing_partitions": len(self.missing), "reconciles": self.reconciles}


def combine_summaries(*summaries: dict) -> dict:
    """Add up task summaries; refuse counts that do not reconcile."""
    totals = {k: sum(s["totals"][k] for s in summaries) for k in _COUNTS}
    combined = {"files": sum(s["files"] for s in summaries), "totals": totals,
                "reconciles": all(s["reconciles"] for s in summaries)}
    if not combined["reconciles"] or totals["rows_read"] != sum(totals[k] for k in _COUNTS[1:]):
        raise CrmError(f"ingest counts do not reconcile: {totals}")
    log.info("ingest reconciled: %s", totals)
    return combined


def stored_report(engine: Engine, since: date | None = None, until: date | None = None) -> IngestReport:
    """The reconciliation of every current (not replaced) batch, as recorded in the database."""
    stmt = select(IngestBatch).where(IngestBatch.status != BatchStatus.REPLACED)
    if since:
        stmt = stmt.where(IngestBatch.partition_date >= since)
    if until:
        stmt = stmt.where(IngestBatch.partition_date <= until)
    stmt = stmt.order_by(IngestBatch.partition_date, IngestBatch.source, IngestBatch.file_path)
    with engine.connect() as conn:
        batches = [
            BatchReport(
                b.file_path, b.source, b.partition_date.isoformat(), b.status, b.id, b.rows_read, b.rows_loaded,
                b.rows_quarantined, b.rows_duplicate, list(b.dropped_columns or []), b.rows_withheld, error=b.error,
            )
            for b in conn.execute(stmt).all()
        ]
    return IngestReport(batches)


def format_report(payload: dict) -> str:
    """A reconciliation table: one line per file, then the totals."""
    head = f"{'file':<52} {'status':<10} {'read':>8} {'loaded':>8} {'quar.':>6} {'dup.':>6}"
    lines = [head] + (["-" * len(head)] if payload["batches"] else [])
    for b in payload["batches"]:
        lines.append(
            f"{b['file']:<52} {b['status']:<10} {b['rows_read']:>8} {b['rows_loaded']:>8} "
            f"{b['rows_quarantined']:>6} {b['rows_duplicate']:>6}"
        )
        if b["dropped_columns"]:
            lines.append(f"    dropped undeclared columns: {', '.join(b['dropped_columns'])}")
        for reason in b["first_reasons"] if b["status"] != "unchanged" else []:
            lines.append(f"    {reason}")
        if b["error"] and b["status"] == BatchStatus.UNREADABLE:
            lines.append(f"    {b['error']}")
    t = payload["totals"]
    lines.append("-" * len(head))
    lines.append(
        f"{'total (' + str(payload['files']) + ' files)':<52} {'':<10} {t['rows_read']:>8} {t['rows_loaded']:>8} "
        f"{t['rows_quarantined']:>6} {t['rows_duplicate']:>6}"
    )
    if t["rows_withheld"]:
        lines.append(f"withheld (good rows of rejected files, not loaded): {t['rows_withheld']}")
    verdict = "reconciles" if payload["reconciles"] else "DOES NOT RECONCILE"
    lines.append(f"read = loaded + quarantined + duplicates + withheld: {verdict}")
    for m in payload.get("missing_partitions", []):
        since = f" (last loaded: {m['last_loaded']})" if m["last_loaded"] else ""
        lines.append(f"WARNING: no partition for {m['date']}: {m['nights']} night(s) in a row without input{since}")
    return "\n".join(lines)


# --- discovery --------------------------------------------------------------------


def partitions(landing_dir: Path, source: str) -> list[date]:
    base = landing_dir / source
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        m = _PARTITION.match(child.name)
        if m and child.is_dir():
            found.append(date.fromisoformat(m.group(1)))
    return sorted(found)


def landing_files(landing_dir: Path, source: str, day: date) -> list[LandingFile]:
    folder = landing_dir / source / f"dt={day.isoformat()}"
    paths = sorted({p for pattern in PATTERNS[source] for p in folder.glob(pattern) if p.is_file()})
    return [LandingFile(source, day, p, p.relative_to(landing_dir).as_posix()) for p in paths]


def landing_folder(landing_dir: Path) -> Path:
    """The landing folder, which must exist and be readable: a night pointed at the wrong path must
    fail, not load nothing and report green."""
    folder = Path(landing_dir)
    if not folder.is_dir():
        raise ConfigError(f"the landing folder {folder} does not exist or is not a folder; set CRM_LANDING_DIR "
                          "(or landing_dir in crm.yaml) to the folder the exports land in")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ConfigError(f"the landing folder {folder} cannot be read by this process; fix its permissions")
    return folder


def all_dates(landing_dir: Path) -> list[date]:
    """Every partition date of every source; a landing folder with none is an error (nothing to load)."""
    folder = landing_folder(landing_dir)
    dates = sorted({d for s in SOURCES for d in partitions(folder, s)})
    if not dates:
        raise ConfigError(f"the landing folder {folder} holds no partition (customers/dt=YYYY-MM-DD or "
                          "purchases/dt=YYYY-MM-DD): nothing to load")
    return dates


# --- entry points -------------------------------------------------------------------


def ingest_dates(
    engine: Engine, settings: Settings, dates: Iterable[date], sources: Iterable[str] = SOURCES
) -> IngestReport:
    """Ingest every file of the given dates, customers before purchases, date by date.

    Every file is attempted; if any was rejected or unreadable, IngestFailed is
    raised at the end (its ``report`` attribute holds the full report).
    """
    folder = landing_folder(settings.landing_dir)
    batches: list[BatchReport] = []
    failures: list[CrmError] = []
    missing: list[dict] = []
    for day in sorted(set(dates)):
        # A night without input has no partition of any nightly source (a night with purchases and no
        # profile changes is normal), whichever of them this call loads. The catalogue is optional: a call
        # for products alone never reports a missing night, and products alone do not make a night.
        found = {source: landing_files(folder, source, day) for source in SOURCES}
        if not any(found[s] for s in NIGHTLY) and set(sources) & set(NIGHTLY):
            night = _missing_night(engine, day)
            missing.append(night)
            if night["nights"] > settings.missing_partition_grace:
                failures.append(MissingPartition(
                    f"{folder}: no partition of {' or '.join(NIGHTLY)} for {day}, {night['nights']} night(s) in a row "
                    f"without input (last loaded: {night['last_loaded'] or 'never'}), more than "
                    f"missing_partition_grace ({settings.missing_partition_grace}); check the export and the "
                    "landing folder"))
            log.warning("no partition for %s in %s (%d night(s) in a row)", day, folder, night["nights"])
        for source in sources:
            for lf in found[source]:
                try:
                    batch = ingest_file(engine, settings, lf)
                except (BatchRejected, UnreadableFile) as exc:
                    batch = exc.report  # type: ignore[attr-defined]
                    failures.append(exc)
                    log.error("%s", exc)
                batches.append(batch)
                log.info(
                    "%s: %s, read %d = loaded %d + quarantined %d + duplicates %d",
                    batch.file, batch.status, batch.rows_read, batch.rows_loaded,
                    batch.rows_quarantined, batch.rows_duplicate,
                )
    report = IngestReport(batches, missing)
    if failures:
        err = IngestFailed(failures)
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _missing_night(engine: Engine, day: date) -> dict:
    """A night without input: how many nights in a row by ``day`` (since the latest partition of any
    nightly source loaded before it; 1 when there is none yet)."""
    with engine.connect() as conn:
        last = conn.execute(select(func.max(IngestBatch.partition_date)).where(
            IngestBatch.partition_date < day, IngestBatch.source.in_(NIGHTLY))).scalar()
    return {"date": day.isoformat(), "nights": (day - last).days if last else 1,
            "last_loaded": last.isoformat() if last else None}


def ingest_file(engine: Engine, settings: Settings, lf: LandingFile) -> BatchReport:
    text_file = lf.path.suffix.lower() == ".csv"
    scan = scan_file(lf.path, text=text_file)
    with engine.connect() as conn:
        priors = _current_batches(conn, lf.rel_path)
    prior = priors[-1] if priors else None
    if prior is not None and prior.checksum == scan.checksum:
        # The same bytes again. Only a rejection that today's thresholds would not
        # repeat (the threshold was raised) is worth another attempt.
        if not (prior.status == BatchStatus.REJECTED
                and not _too_many_rejects(settings, prior.rows_read, prior.rows_quarantined)):
            return _repeat(engine, lf, prior)

    report = BatchReport(lf.rel_path, lf.source, lf.partition_date.isoformat(), BatchStatus.LOADING)
    started = datetime.now(UTC)
    try:
        try:
            if scan.problem:
                raise UnreadableFile(lf.rel_path, scan.problem)
            header = (read_csv_header if text_file else read_parquet_header)(lf.path, lf.rel_path)
            _check_header(lf, header)
            keep = [c for c in header if c in CONTRACT[lf.source] or c in _declared(settings, lf.source)]
            report.dropped_columns = [c for c in header if c not in keep]
            chunks = (
                iter_csv(lf.path, header, scan, settings.chunk_rows, lf.rel_path)
                if text_file
                else iter_parquet(lf.path, keep, settings.chunk_rows, lf.rel_path)
            )
            try:
                return _load(engine, settings, lf, scan, chunks, keep, report, started)
            except (DBAPIError, psycopg.Error, sqlite3.Error) as exc:
                # The driver's message may quote row values (personal data): keep only its kind.
                orig = exc.orig if isinstance(exc, DBAPIError) else exc
                code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
                raise DatabaseError(
                    f"{lf.rel_path}: the CRM database failed the batch ({type(orig).__name__}"
                    f"{', ' + code if code else ''}); nothing of this file was loaded"
                ) from None
        except (pa.ArrowException, OSError) as exc:
            # The reader gave up (a line longer than a block, a truncated Parquet footer, ...): the
            # file is unreadable, recorded with a reason like any other, and the partition goes on.
            # Arrow's message can quote the line, so only its kind is kept.
            raise UnreadableFile(lf.rel_path, f"the file could not be read ({type(exc).__name__}): a line longer "
                                 "than 16 MiB, or a damaged file; export it again") from None
    except UnreadableFile as exc:
        report.status = BatchStatus.UNREADABLE
        report.error = exc.problem
        report.rows_read = report.rows_loaded = report.rows_quarantined = report.rows_duplicate = 0
        report.first_reasons = []
        with engine.begin() as conn:
            report.batch_id = _insert_batch(conn, lf, scan, report, started)
        exc.report = report  # type: ignore[attr-defined]
        raise


def _declared(settings: Settings, source: str) -> set[str]:
    return {a.name for a in settings.custom_attributes} if source == "customers" else set()


def _check_header(lf: LandingFile, header: list[str]) -> None:
    # Messages echo only names that look like column names: a file without a header
    # row would otherwise put a customer's data into logs and error messages.
    missing = [c for c in REQUIRED[lf.source] if c not in header]
    if missing:
        names = [h for h in header if _COLUMN_NAME.fullmatch(h)]
        shown = f"the header has {', '.join(names)}" if set(names) & set(CONTRACT[lf.source]) else (
            f"the first line ({len(header)} fields) does not look like a header row")
        raise UnreadableFile(
            lf.rel_path,
            f"missing required column(s) {', '.join(missing)}; {shown}. See the input contract in README.md",
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        shown = ", ".join(d if _COLUMN_NAME.fullmatch(d) else "(unprintable)" for d in dupes)
        raise UnreadableFile(lf.rel_path, f"column(s) named more than once in the header: {shown}")


def _repeat(engine: Engine, lf: LandingFile, prior: IngestBatch) -> BatchReport:
    """The same bytes again: change nothing, and answer as the first time did."""
    report = BatchReport(
        lf.rel_path, lf.source, lf.partition_date.isoformat(),
        "unchanged" if prior.status == BatchStatus.LOADED else prior.status,
        prior.id, prior.rows_read, prior.rows_loaded, prior.rows_quarantined, prior.rows_duplicate,
        list(prior.dropped_columns or []), prior.rows_withheld, error=prior.error,
    )
    with engine.connect() as conn:
        report.first_reasons = _first_reasons(conn, prior.id)
    if prior.status == BatchStatus.REJECTED:
        exc = BatchRejected(lf.rel_path, prior.rows_read, prior.rows_quarantined, None, report.first_reasons,
                            message=prior.error)
    elif prior.status == BatchStatus.UNREADABLE:
        exc = UnreadableFile(lf.rel_path, prior.error or "unreadable")
    else:
        return report
    exc.report = report  # type: ignore[attr-defined]
    raise exc


def _too_many_rejects(settings: Settings, read: int, quarantined: int) -> bool:
    share = quarantined / read if read else 0.0
    return share > settings.reject_threshold and quarantined >= settings.reject_min_rows


def _first_reasons(conn: Connection, batch_id: int, limit: int = 5) -> list[str]:
    rows = conn.execute(
        select(QuarantinedRow.line_no, QuarantinedRow.reason)
        .where(QuarantinedRow.batch_id == batch_id)
        .order_by(QuarantinedRow.line_no)
        .limit(limit)
    )
    return [f"line {line}: {reason}" for line, reason in rows]


def _insert_batch(conn: Connection, lf: LandingFile, scan: FileScan, report: BatchReport, started: datetime) -> int:
    values = dict(
        source=lf.source, partition_date=lf.partition_date, file_path=lf.rel_path,
        checksum=scan.checksum, file_size=scan.size, status=str(report.status),
        rows_read=report.rows_read, rows_loaded=report.rows_loaded,
        rows_quarantined=report.rows_quarantined, rows_duplicate=report.rows_duplicate,
        rows_withheld=report.rows_withheld, dropped_columns=report.dropped_columns, error=report.error, started_at=started,
        finished_at=None if report.status == BatchStatus.LOADING else datetime.now(UTC),
    )
    return conn.execute(IngestBatch.__table__.insert().returning(IngestBatch.id), values).scalar_one()


class _Rejected(Exception):
    pass


def _current_batches(conn: Connection, rel_path: str) -> list[IngestBatch]:
    """Every earlier version of this file that a new one supersedes (loaded, rejected or
    unreadable), oldest first, as detached copies."""
    stmt = select(IngestBatch).where(IngestBatch.file_path == rel_path, IngestBatch.status != BatchStatus.REPLACED)
    return [IngestBatch(**row._mapping) for row in conn.execute(stmt.order_by(IngestBatch.id))]


def _load(engine, settings, lf, scan, chunks, keep, report, started) -> BatchReport:
    quarantine: list[tuple[int, str, str]] = []
    t0 = time.perf_counter()
    try:
        with engine.begin() as conn:
            priors = _current_batches(conn, lf.rel_path)
            batch_id = _insert_batch(conn, lf, scan, report, started)
            for prior in priors:
                _retire(conn, lf.source, prior, batch_id)
            replaced = [p.id for p in priors if p.status == BatchStatus.LOADED]
            report.replaced_batch_id = replaced[-1] if replaced else None
            if lf.source == "purchases":
                loader = _PurchaseLoader(conn, batch_id, lf, scan)
            elif lf.source == "products":
                loader = _ProductLoader(conn, batch_id, lf, replaced)
            else:
                loader = _CustomerLoader(conn, batch_id, lf, settings, replaced)
            # Reading and validating the next chunk overlaps with writing this one.
            for prepared in prefetch(loader.prepare(_only(chunk, keep)) for chunk in chunks):
                loader.write(prepared)
                quarantine.extend(prepared.rejects)
                report.rows_read += prepared.read
            loader.finish()
            report.rows_loaded = loader.loaded
            report.rows_duplicate = loader.duplicate
            report.rows_quarantined = len(quarantine)
            quarantine.sort()
            report.first_reasons = [f"line {ln}: {reason}" for ln, _, reason in quarantine[:5]]
            if _too_many_rejects(settings, report.rows_read, report.rows_quarantined):
                raise _Rejected
            loaded_at = time.perf_counter()
            metrics.refresh(conn)
            log.info("%s: rows written in %.1f s, metrics refreshed in %.1f s%s", lf.rel_path,
                     loaded_at - t0, time.perf_counter() - loaded_at,
                     "".join(f"; {k} {v:.1f} s" for k, v in getattr(loader, "seconds", {}).items()))
            _insert_quarantine(conn, batch_id, lf.rel_path, quarantine)
            report.status = BatchStatus.LOADED
            report.batch_id = batch_id
            _finish_batch(conn, batch_id, report)
        return report
    except _Rejected:
        pass
    # Nothing of the file is loaded, but its rejected rows are kept for inspection.
    report.rows_withheld = report.rows_loaded + report.rows_duplicate
    report.rows_loaded = report.rows_duplicate = 0
    exc = BatchRejected(lf.rel_path, report.rows_read, report.rows_quarantined, settings.reject_threshold,
                        report.first_reasons)
    report.status = BatchStatus.REJECTED
    report.error = str(exc)
    with engine.begin() as conn:
        report.batch_id = _insert_batch(conn, lf, scan, report, started)
        _insert_quarantine(conn, report.batch_id, lf.rel_path, quarantine)
    exc.report = report  # type: ignore[attr-defined]
    raise exc


def _retire(conn: Connection, source: str, prior: IngestBatch, batch_id: int) -> None:
    """A corrected file replaces what its earlier versions loaded, rejected or failed to read.

    Purchases of a replaced version are deleted. Profiles and products cannot be: an
    earlier version's updates may have overwritten older ones. The new version's rows
    re-apply over them instead (see _CustomerLoader, _ProductLoader).
    """
    if source == "purchases" and prior.status == BatchStatus.LOADED:
        metrics.mark_batch_for_rebuild(conn, prior.id)
        conn.execute(Purchase.__table__.delete().where(Purchase.batch_id == prior.id))
    conn.execute(QuarantinedRow.__table__.delete().where(QuarantinedRow.batch_id == prior.id))
    conn.execute(
        update(IngestBatch).where(IngestBatch.id == prior.id).values(status=BatchStatus.REPLACED, replaced_by=batch_id)
    )


def _finish_batch(conn: Connection, batch_id: int, report: BatchReport) -> None:
    conn.execute(
        update(IngestBatch).where(IngestBatch.id == batch_id).values(
            status=str(report.status), rows_read=report.rows_read, rows_loaded=report.rows_loaded,
            rows_quarantined=report.rows_quarantined, rows_duplicate=report.rows_duplicate,
            finished_at=datetime.now(UTC),
        )
    )


def _insert_quarantine(conn: Connection, batch_id: int, rel_path: str, rows: list[tuple[int, str, str]]) -> None:
    # Raw text is kept verbatim, except that a NUL byte (which PostgreSQL cannot store) is written as \x00.
    bulk_insert(
        conn, "quarantine", ["batch_id", "file_path", "line_no", "raw_text", "reason"],
        [(batch_id, rel_path, ln, raw.replace("\x00", "\\x00"), reason) for ln, raw, reason in rows],
    )


def _only(chunk: Chunk, keep: list[str]) -> Chunk:
    chunk.columns = {k: v for k, v in chunk.columns.items() if k in keep}
    return chunk


def _rejects(chunk: Chunk, bad: np.ndarray, reasons: np.ndarray) -> list[tuple[int, str, str]]:
    positions = np.flatnonzero(bad)
    raws = chunk.raw_text(positions) if len(positions) else []
    out = [(int(chunk.line_no[p]), raw, str(reasons[p])) for p, raw in zip(positions, raws)]
    return out + list(chunk.broken)


def _timestamps(values, dialect: str) -> list[str]:
    """A tz-aware pandas DatetimeIndex as storage text (see crm_tasks.store.types)."""
    return timestamp_texts(np.asarray(values.tz_convert("UTC").tz_localize(None), dtype="datetime64[us]"), dialect)


@dataclass
class _Prepared:
    """One chunk, validated and shaped for the database; built off the main thread."""

    rows: list[tuple] | pa.Table  # an Arrow table for PostgreSQL's COPY
    rejects: list[tuple[int, str, str]]
    read: int
    superseded: int = 0
    delta_rows: list | None = None  # purchases: metrics state to write with this chunk


def _good_and_rejects(chunk: Chunk, reasons) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    good = ~reasons.bad
    return np.flatnonzero(good), _rejects(chunk, ~good, reasons.text)


class _PurchaseLoader:
    COLUMNS = ["transaction_id", "customer_id", "purchased_at", "amount", "currency", "store_id", "sku",
               "category", "quantity", "coupon_code", "batch_id", "line_no"]
    TEXT = ("transaction_id", "customer_id", "currency", "store_id", "sku", "category", "coupon_code")
    # First occurrence of a transaction id wins; later ones are counted as duplicates.
    CONFLICT = "ON CONFLICT (transaction_id) DO NOTHING"
    # Chunk deltas are merged this many at a time, and handed to the database once the
    # merged one holds this many keys: memory stays bounded on any file size.
    MERGE_EVERY = 8
    FLUSH_KEYS = 400_000
    # PostgreSQL takes a delta as compact Arrow columns (SQLite as Python tuples, which cost
    # gigabytes), so it holds the merged deltas of up to this many keys and writes the file's
    # delta once, at the end: into empty metrics a plain COPY, where an upsert per slice had to
    # merge millions of keys row by row (most of a 10M-row initial load's time).
    HOLD_KEYS = 8_000_000
    # A bulk load's index builds sort the whole table: in memory rather than in temporary files.
    INDEX_MEMORY = "1GB"
    # A file this large (in estimated rows) that at least doubles the table is a bulk load:
    # maintaining the secondary indexes row by row costs more than building them once after.
    BULK_MIN_ROWS = 1_000_000
    BYTES_PER_ROW = 80  # a typical purchase line, for the estimate

    def __init__(self, conn: Connection, batch_id: int, lf: LandingFile, scan: FileScan) -> None:
        self.conn, self.batch_id, self.lf = conn, batch_id, lf
        self.dialect = conn.dialect.name
        self.loaded = self.duplicate = 0
        self.deltas: list[pa.Table] = []  # touched by prepare() only, i.e. by the reading thread
        self.held: list[pa.Table] = []  # PostgreSQL: merged deltas kept for the end (reading thread too)
        self.rebuild: set[str] = set()
        self.dropped_indexes: list = []
        self.seconds: dict[str, float] = {}  # where the load's time went, for the log
        estimated = scan.size // self.BYTES_PER_ROW
        if estimated >= self.BULK_MIN_ROWS:
            # The highest id approximates the row count at no cost on either dialect.
            existing = conn.execute(select(func.coalesce(func.max(Purchase.id), 0))).scalar_one()
            if estimated >= existing:
                self.dropped_indexes = sorted(Purchase.__table__.indexes, key=lambda i: i.name)
                for index in self.dropped_indexes:
                    index.drop(conn)
                log.info("%s: bulk load of about %d rows; secondary indexes rebuilt afterwards", lf.rel_path,
                         estimated)
        # A first bulk load on PostgreSQL writes the whole metrics state at the end, by COPY.
        self.initial = bool(self.dropped_indexes) and self.dialect == "postgresql" and metrics.metrics_empty(conn)

    def prepare(self, chunk: Chunk) -> _Prepared:
        if not len(chunk):
            return _Prepared([], list(chunk.broken), len(chunk.broken))
        values, reasons = standardise_purchases(chunk.columns, self.lf.partition_date)
        idx, rejects = _good_and_rejects(chunk, reasons)
        units = values["amount_units"][idx]
        picked = pa.array(idx)
        text = {name: values[name].take(picked) for name in self.TEXT}
        if self.dialect == "sqlite":
            rows = self._tuples(values, text, idx, units, chunk.line_no)
        else:
            rows = self._table(values, text, idx, units, chunk.line_no)
        keys = [text[k] for k in metrics.KEYS]
        self.deltas.append(metrics.delta(*keys, values["purchased_at"][idx].asi8 // 1000, units,
                                         values["quantity"][idx]))
        delta_rows = None
        if len(self.deltas) >= self.MERGE_EVERY and self.dialect == "sqlite":
            self.deltas = [metrics.merge(self.deltas)]
            if self.deltas[0].num_rows >= self.FLUSH_KEYS:
                delta_rows = metrics.delta_rows(self.deltas.pop(), self.dialect)
        elif len(self.deltas) >= self.MERGE_EVERY:
            # Merged once per MERGE_EVERY chunks, never again until the end: re-merging the
            # growing whole every time would cost more than the load.
            self.held.append(metrics.merge(self.deltas))
            self.deltas = []
            if sum(t.num_rows for t in self.held) >= self.HOLD_KEYS:
                merged = metrics.merge(self.held)
                self.held = [merged]
                if merged.num_rows >= self.HOLD_KEYS // 2:  # still large: written now, by upsert
                    delta_rows = metrics.delta_rows(merged, self.dialect)
                    self.held = []
                    self.initial = False  # the state is no longer empty: the end upserts and derives in SQL
        return _Prepared(rows, rejects, len(chunk) + len(chunk.broken), delta_rows=delta_rows)

    def _tuples(self, values, text, idx, units, line_no) -> list[tuple]:
        """SQLite's rows: money as integer units, instants as its storage text."""
        return list(zip(
            text["transaction_id"].to_pylist(), text["customer_id"].to_pylist(),
            _timestamps(values["purchased_at"][idx], self.dialect), units.tolist(),
            text["currency"].to_pylist(), text["store_id"].to_pylist(), text["sku"].to_pylist(),
            text["category"].to_pylist(), values["quantity"][idx].tolist(),
            text["coupon_code"].to_pylist(), [self.batch_id] * len(idx), line_no[idx].tolist(),
        ))

    def _table(self, values, text, idx, units, line_no) -> pa.Table:
        """PostgreSQL's rows as Arrow columns, for COPY in CSV."""
        return pa.table({
            **text,
            "purchased_at": copy_instants(pa.array(values["purchased_at"][idx])),
            "amount": copy_money(pa.array(units, pa.int64())),
            "quantity": pa.array(values["quantity"][idx], pa.int64()),
            "batch_id": pa.array(np.full(len(idx), self.batch_id, dtype=np.int64)),
            "line_no": pa.array(line_no[idx], pa.int64()),
        }).select(self.COLUMNS)

    def _timed(self, phase: str, started: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def write(self, prepared: _Prepared) -> None:
        t = time.perf_counter()
        inserted = bulk_insert(self.conn, "purchases", self.COLUMNS, prepared.rows, self.CONFLICT)
        self._timed("purchases", t)
        self.loaded += inserted
        self.duplicate += len(prepared.rows) - inserted
        if inserted < len(prepared.rows):
            # Some rows were already loaded, and only the database knows which: the delta
            # counted them, so these customers are recomputed exactly from their purchases
            # after all deltas are in (the rebuild replaces their state).
            rows = prepared.rows
            self.rebuild.update(rows.column("customer_id").to_pylist() if isinstance(rows, pa.Table)
                                else (r[1] for r in rows))
        if prepared.delta_rows:
            t = time.perf_counter()
            metrics.write_delta(self.conn, prepared.delta_rows)
            self._timed("metrics delta", t)

    def finish(self) -> None:
        # The last delta is merged and shaped in a thread (Arrow lets go of the GIL) while the
        # database rebuilds the indexes.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-delta") as pool:
            last = self.held + self.deltas
            self.held, self.deltas = [], []
            initial = self.initial and bool(last)
            shape = metrics.initial_rows if initial else (lambda merged: metrics.delta_rows(merged, self.dialect))

            def merged_and_shaped():
                merged = metrics.merge(last)
                last.clear()  # the parts' memory is free again before the shaping needs its own
                return shape(merged)

            shaped = pool.submit(merged_and_shaped) if last else None
            t = time.perf_counter()
            if self.dropped_indexes and self.dialect == "postgresql":
                self.conn.execute(text(f"SET LOCAL maintenance_work_mem = '{self.INDEX_MEMORY}'"))
            for index in self.dropped_indexes:
                index.create(self.conn)
            self._timed("indexes", t)
            t = time.perf_counter()
            parts = shaped.result() if shaped is not None else []
            self._timed("metrics merge (wait)", t)
            t = time.perf_counter()
            if initial:
                metrics.write_initial(self.conn, parts)
            else:
                metrics.write_delta(self.conn, parts)
        if self.rebuild:
            metrics.mark_for_rebuild(self.conn, self.rebuild)
        self._timed("metrics delta", t)
        t = time.perf_counter()
        if self.dropped_indexes and self.dialect == "postgresql":
            # After a bulk load the planner's statistics describe a nearly empty table;
            # without fresh ones the next nights' metrics queries pick scans over seeks.
            self.conn.execute(text("ANALYZE purchases, customer_category_metrics, metrics_dirty, customer_metrics"))
        self._timed("analyze", t)


class _CustomerLoader:
    COLUMNS = ["customer_id", "first_name", "last_name", "email", "phone", "birthday", "locale", "timezone",
               "country", "email_consent", "attributes", "created_at", "updated_at", "batch_id"]

    def __init__(self, conn: Connection, batch_id: int, lf: LandingFile, settings: Settings,
                 replaced: list[int]) -> None:
        self.conn, self.batch_id, self.lf, self.settings = conn, batch_id, lf, settings
        self.dialect = conn.dialect.name
        self.loaded = self.duplicate = 0
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in self.COLUMNS if c not in ("customer_id", "attributes", "created_at")
        )
        # A profile was created when it was first seen: the earliest creation time stays.
        updates += f", created_at = {sql.least(self.dialect)}(customers.created_at, excluded.created_at)"
        # Declared attributes merge: a file without a column keeps what is stored;
        # an empty value clears it.
        merge = sql.json_merged("customers.attributes", "excluded.attributes", self.dialect)
        # The latest updated_at wins; an equal one re-applies. A corrected file also
        # overrides what its own earlier version wrote, whatever the timestamps say.
        # (Batch ids are integers from our own table, never input.)
        own = f" OR customers.batch_id IN ({', '.join(str(int(b)) for b in replaced)})" if replaced else ""
        self.conflict = (
            f"ON CONFLICT (customer_id) DO UPDATE SET {updates}, attributes = {merge} "
            f"WHERE excluded.updated_at >= customers.updated_at{own}"
        )

    def prepare(self, chunk: Chunk) -> _Prepared:
        if not len(chunk):
            return _Prepared([], list(chunk.broken), len(chunk.broken))
        values, reasons = standardise_customers(
            chunk.columns, self.lf.partition_date, self.settings.default_locale, self.settings.timezone,
            self.settings.custom_attributes,
        )
        idx, rejects = _good_and_rejects(chunk, reasons)
        # Several versions of one customer in a chunk: keep the newest (the last line on a tie).
        order = np.lexsort((chunk.line_no[idx], np.asarray(values["updated_at"][idx].asi8)))
        ids = values["customer_id"][idx][order]
        _, first_from_end = np.unique(ids[::-1], return_index=True)
        last = np.zeros(len(ids), dtype=bool)
        last[len(ids) - 1 - first_from_end] = True
        pick = idx[order][last]
        consent = values["email_consent"][pick]
        rows = list(zip(
            values["customer_id"][pick].tolist(), values["first_name"][pick].tolist(),
            values["last_name"][pick].tolist(), values["email"][pick].tolist(), values["phone"][pick].tolist(),
            values["birthday"][pick].tolist(), values["locale"][pick].tolist(), values["timezone"][pick].tolist(),
            values["country"][pick].tolist(),
            consent.astype(int).tolist() if self.dialect == "sqlite" else consent.tolist(),
            [json.dumps(values["attributes"][i], ensure_ascii=False) for i in pick],
            _timestamps(values["created_at"][pick], self.dialect), _timestamps(values["updated_at"][pick], self.dialect),
            [self.batch_id] * len(pick),
        ))
        return _Prepared(rows, rejects, len(chunk) + len(chunk.broken), superseded=len(idx) - len(pick))

    def write(self, prepared: _Prepared) -> None:
        written = bulk_insert(self.conn, "customers", self.COLUMNS, prepared.rows, self.conflict)
        self.loaded += written
        # Older than the stored profile, or superseded within the chunk: counted, not applied.
        self.duplicate += prepared.superseded + len(prepared.rows) - written

    def finish(self) -> None:
        # A null attribute means "clear it" during the merge; new profiles must not keep the nulls.
        strip = sql.json_without_nulls("attributes", self.dialect)
        self.conn.execute(text(f"UPDATE customers SET attributes = {strip} WHERE batch_id = :b"), {"b": self.batch_id})


class _ProductLoader:
    """The catalogue: one row per SKU, the version with the latest ``updated_at`` wins, as for profiles.

    Several versions of a SKU in one chunk keep the newest (the last line on a tie); a version older than
    the stored one is counted as a duplicate (superseded), not applied; an equal one re-applies. A corrected
    file overrides what its own earlier version wrote, whatever the timestamps say.
    """

    COLUMNS = ("sku", "name", "name_hi", "name_te", "name_fa", "name_ur", "brand", "category", "price", "currency",
               "url", "image_url", "in_stock", "updated_at", "batch_id")

    def __init__(self, conn: Connection, batch_id: int, lf: LandingFile, replaced: list[int]) -> None:
        self.conn, self.batch_id, self.lf = conn, batch_id, lf
        self.dialect = conn.dialect.name
        self.loaded = self.duplicate = 0
        updates = ", ".join(f"{c} = excluded.{c}" for c in self.COLUMNS if c != "sku")
        # (Batch ids are integers from our own table, never input.)
        own = f" OR products.batch_id IN ({', '.join(str(int(b)) for b in replaced)})" if replaced else ""
        self.conflict = (
            f"ON CONFLICT (sku) DO UPDATE SET {updates} WHERE excluded.updated_at >= products.updated_at{own}"
        )

    def prepare(self, chunk: Chunk) -> _Prepared:
        if not len(chunk):
            return _Prepared([], list(chunk.broken), len(chunk.broken))
        values, reasons = standardise_products(chunk.columns, self.lf.partition_date)
        idx, rejects = _good_and_rejects(chunk, reasons)
        pick = _latest(values["sku"], values["updated_at"], chunk.line_no, idx)
        units = values["price_units"][pick]
        # SQLite keeps money as integer 1/10000 units and booleans as 0/1; PostgreSQL takes decimals.
        price = units.tolist() if self.dialect == "sqlite" else copy_money(pa.array(units, pa.int64())).to_pylist()
        stock = values["in_stock"][pick]
        rows = list(zip(
            *(values[c][pick].tolist() for c in self.COLUMNS[:8]), price, values["currency"][pick].tolist(),
            values["url"][pick].tolist(), values["image_url"][pick].tolist(),
            stock.astype(int).tolist() if self.dialect == "sqlite" else stock.tolist(),
            _timestamps(values["updated_at"][pick], self.dialect), [self.batch_id] * len(pick),
        ))
        return _Prepared(rows, rejects, len(chunk) + len(chunk.broken), superseded=len(idx) - len(pick))

    def write(self, prepared: _Prepared) -> None:
        written = bulk_insert(self.conn, "products", list(self.COLUMNS), prepared.rows, self.conflict)
        self.loaded += written
        # Older than the stored product, or superseded within the chunk: counted, not applied.
        self.duplicate += prepared.superseded + len(prepared.rows) - written

    def finish(self) -> None:
        pass


def _latest(keys: np.ndarray, updated, line_no: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Of the good rows ``idx``, the positions of each key's newest version (the last line on a tie)."""
    order = np.lexsort((line_no[idx], np.asarray(updated[idx].asi8)))
    ordered = keys[idx][order]
    _, first_from_end = np.unique(ordered[::-1], return_index=True)
    last = np.zeros(len(ordered), dtype=bool)
    last[len(ordered) - 1 - first_from_end] = True
    return idx[order][last]
