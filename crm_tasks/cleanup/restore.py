"""Archived profiles put back: by hand within the grace period (``crm cleanup restore ID``), and by
the weekly run for those that came back (loaded again, or buying again)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Date, Engine, select, text

from crm_tasks.errors import RestoreRefused
from crm_tasks.settings import Settings
from crm_tasks.store import sql
from crm_tasks.store.models import ArchivedCustomer, ArchiveStatus

log = logging.getLogger(__name__)

# The personal columns of a profile: copied into the archive, emptied there on restore and purge.
PROFILE_COLUMNS = ("first_name", "last_name", "email", "phone", "birthday", "locale", "timezone", "country",
                   "email_consent", "attributes", "created_at", "updated_at", "batch_id")


@dataclass
class RestoreResult:
    customer_id: str
    reason: str
    archived_on: date
    restored_on: date

    def to_dict(self) -> dict:
        return {k: v.isoformat() if isinstance(v, date) else v for k, v in asdict(self).items()}


_RESTORE = f"""
INSERT INTO customers (customer_id, {', '.join(PROFILE_COLUMNS)})
SELECT customer_id, {', '.join(PROFILE_COLUMNS)} FROM archived_customers WHERE {{where}}
"""


EMPTIED = ", ".join(f"{c} = NULL" for c in PROFILE_COLUMNS)


def move_back(conn: Connection, where: str, params: dict, day: date, **types) -> int:
    """The archived rows ``where`` selects back into customers (the archive keeps their ids, reason
    and dates); returns how many."""
    where = f"status = 'archived' AND {where}"
    moved = sql.execute(conn, _RESTORE.format(where=where), params, **types).rowcount
    if moved:
        sql.execute(conn, f"UPDATE archived_customers SET status = 'restored', restored_on = :day, {EMPTIED} "
                   f"WHERE {where}", params | {"day": day}, day=Date, **types)
    return moved


def restore(engine: Engine, cfg: Settings, customer_id: str, on: date | None = None) -> RestoreResult:
    """Put an archived profile back into ``customers``, as it was when archived.

    Possible until the profile is purged (the first run on or after its grace period's end).
    ``on`` is the day recorded as the restore (default: today in the configured time zone).
    """
    on = on or datetime.now(ZoneInfo(cfg.timezone)).date()
    a = ArchivedCustomer
    with engine.begin() as conn:
        rows = conn.execute(select(a.id, a.status, a.reason, a.archived_on, a.purge_after, a.purged_on)
                            .where(a.customer_id == customer_id).order_by(a.id.desc())).all()
        current = conn.execute(text("SELECT 1 FROM customers WHERE customer_id = :c"), {"c": customer_id}).first()
        live = next((r for r in rows if r.status == ArchiveStatus.ARCHIVED), None)
        if live is None:
            if current is not None:
                raise RestoreRefused(f"{customer_id} is a current profile, not archived: nothing to restore")
            purged = next((r for r in rows if r.status == ArchiveStatus.PURGED), None)
            if purged is not None:
                raise RestoreRefused(
                    f"{customer_id} was archived on {purged.archived_on} ({purged.reason}) and purged on "
                    f"{purged.purged_on}, after its grace period ended on {purged.purge_after}: its personal "
                    "data is gone and cannot be restored; a new import of the profile starts it again")
            raise RestoreRefused(f"no archived profile with id {customer_id!r}")
        if current is not None:
            raise RestoreRefused(f"{customer_id} was loaded again since it was archived; the next cleanup run "
                                 "marks its archived copy restored")
        move_back(conn, "id = :id", {"id": live.id}, on)
    log.info("cleanup: restored %s (archived on %s, %s)", customer_id, live.archived_on, live.reason)
    return RestoreResult(customer_id, live.reason, live.archived_on, on)
