"""The weekly cleanup run: stale profiles archived, then purged; duplicates merged (``merge``);
profiles that came back restored (``restore``).

A cleanup runs *as of* one business day, in one transaction, set-based SQL on
SQLite and PostgreSQL alike:

1. **Profiles that came back** while archived are restored: an archived id that
   ingest loaded again (the fresh profile wins; the archived copy is dropped), and
   a profile archived as ``inactive`` that has bought again since.
2. **Duplicates** (rule ``duplicates``) are merged: profiles with the same e-mail
   address, then those with the same phone (ingest stores both normalised: lower-cased
   addresses, E.164 phones). The survivor is the most recently updated profile, then
   the lowest id; it keeps its own fields and takes the ones it lacks (names, address,
   phone, birthday) from the most recently updated of the others. Purchases, coupons,
   ledger messages, plan rows and suppressions move to the survivor, its metrics are
   rebuilt from its purchases (``crm_tasks.ingest.metrics``), and ``customer_merges`` records
   every merged id with its survivor. A group larger than ``max_duplicate_group``
   (a shared or placeholder address) is not merged, only counted.
3. **Stale profiles** are archived with one reason each, the first rule that applies:

   | reason | rule |
   |---|---|
   | ``inactive`` | no purchase and no profile update (``updated_at``, the source system's time of the last change) for ``inactive_months`` |
   | ``hard_bounce`` | the profile's current address hard-bounced (a ``suppressions`` row with reason ``hard_bounce`` for its id and the hash of that address) and it has no phone |
   | ``no_contact`` | neither an e-mail address nor a phone |

   Archiving moves the profile out of ``customers`` into ``archived_customers``:
   campaign audiences and segments read ``customers``, so an archived profile is out
   of every campaign at once and leaves its segments at the next recompute (counted
   there as an exit, so the history and the sizes stay exact).
4. **The guardrail**: if the run would archive or merge away more than
   ``max_archive_share`` of the profiles, it fails with the counts, changing nothing.
5. **Purge**: archived profiles whose grace period (``grace_days``) is over lose their
   personal data. A keyed hash of the address goes to ``suppressions`` first, so that a
   later import of the same person does not silently make them mailable again. What
   stays is pseudonymous: the customer id on purchases, metrics, coupons and history,
   so that sales figures do not change.
6. **The record**: ``cleanup_runs`` holds one row per as-of date, which reconciles
   (profiles before = kept + archived + merged away; in the archive, archived =
   restored + purged + still in grace) and the data-freshness figure: the shares of
   profiles active, at risk of going stale (silent for ``at_risk_months``) and archived.

Running a date again gives the same result: what the first run did is in the tables,
a second run finds nothing new, and the date's row adds up both runs. ``dry_run``
does everything in a transaction that is rolled back: the report a real run would
print, nothing stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, Date, Engine, func, select, text

from crm_tasks.cleanup.merge import MERGE_RULES, merge_duplicates
from crm_tasks.cleanup.restore import EMPTIED, PROFILE_COLUMNS, move_back
from crm_tasks.clock import Phases, months_before, start_of
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.errors import CleanupBlocked, CrmError
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import bulk_insert
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import ArchivedCustomer, ArchiveStatus, CleanupRun, CustomerMerge
from crm_tasks.store.types import UtcDateTime

log = logging.getLogger(__name__)

# Reasons, in the order they are decided: a profile gets the first that applies.
INACTIVE = "inactive"
HARD_BOUNCE = "hard_bounce"
NO_CONTACT = "no_contact"
ARCHIVE_REASONS = (INACTIVE, HARD_BOUNCE, NO_CONTACT)
PURGED = "purged:"  # purged profiles are counted by the reason they were archived for: purged:inactive
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class CleanupResult:
    """One cleanup as of a date; the counts add up the runs of that date (a re-run adds nothing)."""

    as_of: date
    dry_run: bool = False
    recorded: bool = False
    blocked: str | None = None  # the guardrail's message, when it stopped the run
    profiles_before: int = 0
    kept: int = 0
    archived: int = 0
    merged: int = 0
    restored: int = 0  # archived profiles that came back (loaded again, or bought again)
    purged: int = 0
    # Archived by reason, merged by rule, purged by the reason they were archived for (purged:inactive).
    reasons: dict[str, int] = field(default_factory=dict)
    skipped_groups: int = 0  # duplicate groups too large to be one person: not merged
    # The whole archive after the run.
    archived_total: int = 0
    restored_total: int = 0
    purged_total: int = 0
    in_grace: int = 0
    # Freshness: kept profiles active within at_risk_months, and the others (at risk of going stale).
    active: int = 0
    at_risk: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few customer ids (no PII)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def _share(self, n: int) -> float:
        return round(n / self.profiles_before, 6) if self.profiles_before else 0.0

    @property
    def active_share(self) -> float:
        return self._share(self.active)

    @property
    def at_risk_share(self) -> float:
        return self._share(self.at_risk)

    @property
    def archived_share(self) -> float:
        return self._share(self.archived)

    @property
    def reconciles(self) -> bool:
        return (self.profiles_before == self.kept + self.archived + self.merged
                and self.archived_total == self.restored_total + self.purged_total + self.in_grace)

    def summary(self) -> dict:
        """Counts only (no customer ids): small enough for XCom and logs."""
        out = asdict(self)
        out.pop("examples")
        return out | {"as_of": self.as_of.isoformat(), "reconciles": self.reconciles,
                      "active_share": self.active_share, "at_risk_share": self.at_risk_share,
                      "archived_share": self.archived_share}

    def to_dict(self) -> dict:
        return self.summary() | {"examples": self.examples}


# --- dates ------------------------------------------------------------------------------------


# --- SQL of a cleanup ---------------------------------------------------------------------------

# Scratch tables of one run: temporary, never in the database's journal (dropped at commit on PostgreSQL).
_SCRATCH = {
    "cleanup_merge": "merged_id VARCHAR(64) PRIMARY KEY, survivor_id VARCHAR(64) NOT NULL",
    "cleanup_stale": "customer_id VARCHAR(64) PRIMARY KEY, reason VARCHAR(32) NOT NULL",
    "cleanup_bounced": "customer_id VARCHAR(64) PRIMARY KEY",
    "cleanup_groups": "key_value VARCHAR(254) PRIMARY KEY, n BIGINT NOT NULL",
}
# The survivor's field fill and the plan's re-pointing look merges up by survivor.
_SCRATCH_INDEXES = {"cleanup_merge": ("CREATE INDEX IF NOT EXISTS ix_cleanup_merge_survivor ON cleanup_merge (survivor_id)",)}

# A customer's last order, from the per-currency totals ingest keeps (one primary-key seek).
_LAST_ORDER = "(SELECT MAX(m.last_purchase_at) FROM customer_metrics m WHERE m.customer_id = c.customer_id)"

# Step 1a: an archived id that ingest loaded again is a current profile: the fresh copy wins.
_RETURNED = f"""
UPDATE archived_customers SET status = 'restored', restored_on = :as_of, {', '.join(f'{c} = NULL' for c in PROFILE_COLUMNS)}
WHERE status = 'archived' AND customer_id IN (SELECT customer_id FROM customers)
"""
# Step 1b: a profile archived as inactive that has bought since the rule's threshold is active again.
_BOUGHT_AGAIN = """
SELECT a.id FROM archived_customers a
WHERE a.status = 'archived' AND a.reason = 'inactive'
  AND (SELECT MAX(m.last_purchase_at) FROM customer_metrics m WHERE m.customer_id = a.customer_id) >= :threshold
"""

# Step 3a: hard-bounce candidates (few: one per bounced address). The hash of the profile's
# current address is checked in Python, where the key is: an address changed since the bounce
# does not count.
_BOUNCE_CANDIDATES = """
SELECT c.customer_id, c.email, s.email_hash FROM suppressions s JOIN customers c ON c.customer_id = s.customer_id
WHERE s.reason = 'hard_bounce' AND COALESCE(c.phone, '') = '' AND COALESCE(c.email, '') <> ''
"""
# Step 3b: one pass over the profiles; the last-order seek runs only for profiles not updated
# since the threshold.
_STALE_WHEN = {
    INACTIVE: f"c.updated_at < :threshold AND COALESCE({_LAST_ORDER}, :epoch) < :threshold",
    HARD_BOUNCE: "c.customer_id IN (SELECT customer_id FROM cleanup_bounced)",
    NO_CONTACT: "COALESCE(c.email, '') = '' AND COALESCE(c.phone, '') = ''",
}
# A profile restored since :exempt_from (by hand, or because it came back) is left alone: a
# restore says the profile is wanted, and the rule that archived it would otherwise apply again.
_STALE = """
INSERT INTO cleanup_stale (customer_id, reason)
SELECT customer_id, reason FROM (
    SELECT c.customer_id, CASE {whens} END AS reason FROM customers c
) s
WHERE reason IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM archived_customers r WHERE r.customer_id = s.customer_id
                  AND r.status = 'restored' AND r.restored_on >= :exempt_from)
"""
_ARCHIVE = f"""
INSERT INTO archived_customers (customer_id, reason, status, archived_on, purge_after, {', '.join(PROFILE_COLUMNS)})
SELECT c.customer_id, s.reason, 'archived', :as_of, :purge_after, {', '.join('c.' + col for col in PROFILE_COLUMNS)}
FROM cleanup_stale s JOIN customers c ON c.customer_id = s.customer_id
"""

# Step 5: the archived profiles whose grace period is over (ix_archived_customers_purge).
_DUE = "status = 'archived' AND purge_after <= :as_of"

# Freshness of the kept profiles: active within at_risk_months, or at risk of going stale.
_ACTIVE = f"""
SELECT COUNT(*) FROM customers c
WHERE c.updated_at >= :risk OR COALESCE({_LAST_ORDER}, :epoch) >= :risk
"""


def _scratch(conn: Connection, *names: str) -> None:
    for name in names:
        sql.scratch(conn, name, _SCRATCH[name], *_SCRATCH_INDEXES.get(name, ()))


# --- the run ----------------------------------------------------------------------------------


def run_cleanup(engine: Engine, cfg: Settings, as_of: date, *, dry_run: bool = False) -> CleanupResult:
    """Clean the customer base as of ``as_of``; see the module docstring.

    Raises CleanupBlocked (holding the result) when the guardrail stops a real run; a dry
    run reports the block in ``result.blocked`` instead.
    """
    started = time.perf_counter()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Removed and emptied rows are overwritten in the file, not just unlinked: the personal data
            # of a purged (or merged-away) profile must not linger in free space.
            conn.exec_driver_sql("PRAGMA secure_delete = ON")
            conn.commit()
        trans = conn.begin()
        if sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: two runs must not interleave
        else:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('crm_cleanup'))"))
            conn.execute(text("SET LOCAL work_mem = '256MB'"))
            conn.execute(text("SET LOCAL jit = off"))
        try:
            result = _run(conn, cfg, as_of)
            result.dry_run = dry_run
            if dry_run or result.blocked:
                trans.rollback()
            else:
                trans.commit()
                result.recorded = True
                if sqlite and result.purged:
                    # Purged rows leave the write-ahead log too.
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.commit()
        except BaseException:
            if trans.is_active:
                trans.rollback()
            raise
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA secure_delete = OFF")
                conn.commit()
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("cleanup as of %s%s: %d profiles, %d kept, %d archived, %d merged, %d restored, %d purged (%.1f s)",
             as_of, " [dry run]" if dry_run else "", result.profiles_before, result.kept, result.archived,
             result.merged, result.restored, result.purged, result.seconds)
    if result.blocked and not dry_run:
        raise CleanupBlocked(result.blocked, result)
    return result


def _run(conn: Connection, cfg: Settings, as_of: date) -> CleanupResult:
    c = cfg.cleanup
    tz = cfg.timezone
    phases = Phases()
    threshold = start_of(months_before(as_of, c.inactive_months), tz)
    result = CleanupResult(as_of=as_of)
    _scratch(conn, *_SCRATCH)

    restored = _returned(conn, as_of, threshold)
    phases.done("restore_returned")
    before = sql.count(conn, "SELECT COUNT(*) FROM customers")
    merged: dict[str, int] = {}
    if c.rules.duplicates:
        for rule, key in MERGE_RULES.items():
            n, skipped = merge_duplicates(conn, key, rule, as_of, c.max_duplicate_group)
            merged[rule] = n
            result.skipped_groups += skipped
        phases.done("merge")
    archived = _find_stale(conn, cfg, as_of, threshold)
    phases.done("find_stale")

    removed = sum(archived.values()) + sum(merged.values())
    if before and removed > c.max_archive_share * before:
        result.profiles_before = before
        result.archived, result.merged = sum(archived.values()), sum(merged.values())
        result.reasons = {k: v for k, v in {**archived, **merged}.items() if v}
        result.blocked = (
            f"cleanup as of {as_of} would archive {result.archived} and merge away {result.merged} of {before} "
            f"profiles ({removed / before:.1%}), above max_archive_share {c.max_archive_share:.0%}: nothing was "
            f"changed ({', '.join(f'{k} {v}' for k, v in result.reasons.items())}). Check the rules with "
            f"`crm cleanup --as-of {as_of} --dry-run`; if this is expected, raise cleanup.max_archive_share in crm.yaml."
        )
        return result

    if sum(archived.values()):
        sql.execute(conn, _ARCHIVE, {"as_of": as_of, "purge_after": as_of + timedelta(days=c.grace_days)},
             as_of=Date, purge_after=Date)
        deleted = conn.exec_driver_sql(
            "DELETE FROM customers WHERE customer_id IN (SELECT customer_id FROM cleanup_stale)").rowcount
        if deleted != sum(archived.values()):
            raise CrmError(f"cleanup as of {as_of}: archived {sum(archived.values())} profiles but removed "
                           f"{deleted} from customers; nothing was changed")
    phases.done("archive")
    purged = _purge(conn, cfg, as_of)
    phases.done("purge")

    kept = sql.count(conn, "SELECT COUNT(*) FROM customers")
    if before != kept + sum(archived.values()) + sum(merged.values()):
        raise CrmError(f"cleanup as of {as_of} does not reconcile: {before} profiles before, {kept} kept, "
                       f"{sum(archived.values())} archived, {sum(merged.values())} merged; nothing was changed")
    _record(conn, cfg, result, before, kept, archived, merged, restored, purged)
    phases.done("record")
    result.phases = dict(phases)
    return result


def _returned(conn: Connection, as_of: date, threshold: datetime) -> int:
    """Restore the archived profiles that came back; returns how many."""
    n = sql.execute(conn, _RETURNED, {"as_of": as_of}, as_of=Date).rowcount
    return n + move_back(conn, f"id IN ({_BOUGHT_AGAIN})", {"threshold": threshold}, as_of,
                          threshold=UtcDateTime)


def _find_stale(conn: Connection, cfg: Settings, as_of: date, threshold: datetime) -> dict[str, int]:
    """Fill cleanup_stale with the profiles to archive and their reason; returns the count per reason."""
    rules = cfg.cleanup.rules
    enabled = [r for r in ARCHIVE_REASONS if getattr(rules, r)]
    if not enabled:
        return {}
    if HARD_BOUNCE in enabled:
        rows = conn.exec_driver_sql(_BOUNCE_CANDIDATES).all()
        hashing = load_keys(conn, cfg).hashing
        bounced = sorted({cid for cid, email, digest in rows if email_hash(email, hashing) == digest})
        if bounced:
            conn.execute(text("INSERT INTO cleanup_bounced (customer_id) VALUES (:c)"), [{"c": b} for b in bounced])
    whens = " ".join(f"WHEN {_STALE_WHEN[r]} THEN '{r}'" for r in enabled)
    exempt_from = months_before(as_of, cfg.cleanup.inactive_months)
    sql.execute(conn, _STALE.format(whens=whens), {"threshold": threshold, "epoch": EPOCH, "exempt_from": exempt_from},
         threshold=UtcDateTime, epoch=UtcDateTime, exempt_from=Date)
    counts = dict(conn.exec_driver_sql("SELECT reason, COUNT(*) FROM cleanup_stale GROUP BY reason").all())
    return {r: int(counts[r]) for r in enabled if counts.get(r)}


def _purge(conn: Connection, cfg: Settings, as_of: date) -> dict[str, int]:
    """Purge the archived profiles whose grace period is over; returns how many, by their archive reason."""
    from crm_tasks.cleanup.erasure import redact_messages

    params = {"as_of": as_of}
    due = dict(sql.execute(conn, f"SELECT reason, COUNT(*) FROM archived_customers WHERE {_DUE} GROUP BY reason",
                    params, as_of=Date).all())
    if not due:
        return {}
    rows = sql.execute(conn, f"SELECT customer_id, email, reason FROM archived_customers WHERE {_DUE} "
                      "AND COALESCE(email, '') <> ''", params, as_of=Date).all()
    if rows:
        # HMAC with the deployment's hashing key: computed here, inserted in bulk.
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f") if conn.dialect.name == "sqlite" else now
        hashing = load_keys(conn, cfg).hashing
        suppressions = [(email_hash(email, hashing), cid, PURGED + reason, stamp)
                        for cid, email, reason in rows]
        bulk_insert(conn, "suppressions", ["email_hash", "customer_id", "reason", "created_at"], suppressions,
                    "ON CONFLICT (email_hash) DO NOTHING")
    redact_messages(conn, f"SELECT customer_id FROM archived_customers WHERE {_DUE}", params)
    sql.execute(conn, f"UPDATE archived_customers SET status = 'purged', purged_on = :as_of, {EMPTIED} WHERE {_DUE}",
         params, as_of=Date)
    return {f"{PURGED}{reason}": int(n) for reason, n in due.items()}


def _record(conn: Connection, cfg: Settings, result: CleanupResult, before: int, kept: int,
            archived: dict[str, int], merged: dict[str, int], restored: int, purged_by: dict[str, int]) -> None:
    """Add this run to its date's row (a re-run adds nothing), and fill the result from it."""
    as_of = result.as_of
    old = conn.execute(select(CleanupRun).where(CleanupRun.as_of == as_of)).first()
    reasons = {k: v for k, v in {**archived, **merged, **purged_by}.items() if v}
    purged = sum(purged_by.values())
    if old is not None:
        # Profiles that arrived between two runs of the date count as there before this one.
        before = old.profiles_before + before - old.kept
        archived_n, merged_n = old.archived + sum(archived.values()), old.merged + sum(merged.values())
        restored, purged = old.restored + restored, old.purged + purged
        reasons = {k: old.reasons.get(k, 0) + reasons.get(k, 0) for k in {*old.reasons, *reasons}}
    else:
        archived_n, merged_n = sum(archived.values()), sum(merged.values())
    a = ArchivedCustomer
    totals = dict(conn.execute(select(a.status, func.count()).group_by(a.status)).all())
    result.in_grace = sql.count(conn, "SELECT COUNT(*) FROM archived_customers WHERE status = 'archived' "
                                   "AND purge_after > :as_of", {"as_of": as_of}, as_of=Date)
    result.archived_total = sum(totals.values())
    result.restored_total = totals.get(ArchiveStatus.RESTORED, 0)
    result.purged_total = totals.get(ArchiveStatus.PURGED, 0)
    risk = start_of(months_before(as_of, cfg.cleanup.at_risk_months), cfg.timezone)
    result.active = sql.count(conn, _ACTIVE, {"risk": risk, "epoch": EPOCH}, risk=UtcDateTime, epoch=UtcDateTime)
    result.at_risk = kept - result.active
    result.profiles_before, result.kept, result.archived, result.merged = before, kept, archived_n, merged_n
    result.restored, result.purged = restored, purged
    order = (*ARCHIVE_REASONS, *MERGE_RULES, *(PURGED + r for r in ARCHIVE_REASONS))
    result.reasons = {k: reasons[k] for k in order if reasons.get(k)}
    result.examples = _examples(conn, as_of, cfg.cleanup.examples)
    row = {
        "ran_at": datetime.now(UTC), "profiles_before": before, "kept": kept, "archived": archived_n,
        "merged": merged_n, "restored": restored, "purged": purged, "reasons": result.reasons,
        "archived_total": result.archived_total, "restored_total": result.restored_total,
        "purged_total": result.purged_total, "in_grace": result.in_grace, "active_share": result.active_share,
        "at_risk_share": result.at_risk_share, "archived_share": result.archived_share,
        "parameters": cfg.cleanup.model_dump(mode="json") | {"timezone": cfg.timezone},
    }
    if old is None:
        conn.execute(CleanupRun.__table__.insert().values(as_of=as_of, **row))
    else:
        conn.execute(CleanupRun.__table__.update().where(CleanupRun.as_of == as_of).values(**row))


def _examples(conn: Connection, as_of: date, limit: int) -> dict[str, list[str]]:
    """A few customer ids per reason for the date (ids only: the report is shared, profiles are not)."""
    if not limit:
        return {}
    a, m = ArchivedCustomer, CustomerMerge
    out: dict[str, list[str]] = {}
    for reason in ARCHIVE_REASONS:
        ids = conn.execute(select(a.customer_id).where(a.archived_on == as_of, a.reason == reason)
                           .order_by(a.customer_id).limit(limit)).scalars().all()
        if ids:
            out[reason] = list(ids)
    for rule in MERGE_RULES:
        pairs = conn.execute(select(m.merged_id, m.survivor_id).where(m.merged_on == as_of, m.rule == rule)
                             .order_by(m.merged_id).limit(limit)).all()
        if pairs:
            out[rule] = [f"{merged} -> {survivor}" for merged, survivor in pairs]
    for reason in ARCHIVE_REASONS:
        ids = conn.execute(select(a.customer_id).where(a.purged_on == as_of, a.status == ArchiveStatus.PURGED,
                                                       a.reason == reason)
                           .order_by(a.customer_id).limit(limit)).scalars().all()
        if ids:
            out[PURGED + reason] = list(ids)
    return out


# --- reading ----------------------------------------------------------------------------------


def format_report(r: dict) -> str:
    """The report of a cleanup result's ``to_dict()``, as the CLI and the demo print it."""
    dry = " (dry run: nothing stored)" if r["dry_run"] else ""
    lines = [
        f"cleanup as of {r['as_of']}{dry}",
        (f"  profiles before {r['profiles_before']} = kept {r['kept']} + archived {r['archived']} "
         f"+ merged away {r['merged']}"),
        (f"  archive: {r['archived_total']} = restored {r['restored_total']} + purged {r['purged_total']} "
         f"+ in grace {r['in_grace']}   (this date: restored {r['restored']}, purged {r['purged']})"),
    ]
    for reason, n in r["reasons"].items():
        shown = r.get("examples", {}).get(reason, [])
        label = ("merged" if reason in MERGE_RULES else "purged" if reason.startswith(PURGED) else "archived")
        lines.append(f"  {label}, {reason.removeprefix(PURGED)}: {n}" + (f"  e.g. {', '.join(shown)}" if shown else ""))
    if r["skipped_groups"]:
        lines.append(f"  not merged: {r['skipped_groups']} groups sharing one address or phone among more than "
                     "max_duplicate_group profiles (a placeholder, not a person)")
    lines.append(f"  freshness: active {r['active_share']:.1%}, at risk of going stale {r['at_risk_share']:.1%}, "
                 f"archived {r['archived_share']:.1%}")
    if r.get("blocked"):
        lines.append(f"  BLOCKED{' (a real run would fail)' if r['dry_run'] else ''}: {r['blocked']}")
    elif not r["reconciles"]:
        lines.append("  WARNING: the counts do not reconcile")
    return "\n".join(lines)


# --- Airflow ----------------------------------------------------------------------------------


