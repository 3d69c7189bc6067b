"""The time zone each table of local business days was built in.

The sales cube and the purchase days number their days in crm.yaml's zone. When the zone changes, every
stored day is a day of the old zone: the table is rebuilt from purchases, not patched night by night.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, insert, select, update

from crm_tasks.store.models import DerivedZone

log = logging.getLogger(__name__)


def zone_changed(conn: Connection, table: str, timezone: str) -> bool:
    """Whether ``table`` was last built in another zone than ``timezone``; records ``timezone`` either way.

    A table with no record (built before zones were recorded) is taken to be in the configured zone."""
    stored = conn.execute(select(DerivedZone.timezone).where(DerivedZone.name == table)).scalar_one_or_none()
    if stored is None:
        conn.execute(insert(DerivedZone).values(name=table, timezone=timezone))
        return False
    if stored == timezone:
        return False
    conn.execute(update(DerivedZone).where(DerivedZone.name == table).values(timezone=timezone))
    log.warning("%s was built in %s and crm.yaml now says %s: rebuilding it", table, stored, timezone)
    return True
