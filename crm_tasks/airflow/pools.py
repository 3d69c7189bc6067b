"""The send tasks' pool, when crm.yaml names one: created as soon as a scheduler starts if it does
not exist, so that a campaign never waits forever on a pool nobody made.

Airflow schedules no task of a pool that does not exist and says so only in the scheduler's log;
tasks cannot see the pool table. The CRM plugin registers this module as a listener, and Airflow
calls ``on_starting`` when a scheduler (or dag-processor, or triggerer) job starts, in a process
that may use the metadata database.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

from crm_tasks.settings import DeliverySettings, settings

log = logging.getLogger(__name__)


@hookimpl
def on_starting(component) -> None:
    from airflow.jobs.job import Job

    if isinstance(component, Job):  # not a task process: those cannot reach the metadata database
        try:
            ensure_pool(settings().delivery)
        except Exception:  # a listener must not stop a scheduler; the admin reads why in its log
            log.exception("the CRM could not check or create its send pool")


def ensure_pool(delivery: DeliverySettings) -> str | None:
    """Create ``delivery.pool`` with ``delivery.parallel_sends`` slots if it is named and missing;
    returns the name of a pool created now, else None. An existing pool is left as the admin sized it."""
    from airflow.models.pool import Pool

    if not delivery.pool or Pool.get_pool(delivery.pool) is not None:
        return None
    Pool.create_or_update_pool(delivery.pool, slots=delivery.parallel_sends, include_deferred=False,
                               description="SMTP sends of all CRM campaigns (created by the CRM plugin)")
    log.warning("created the Airflow pool %r with %d slots for the CRM's send tasks (delivery.pool in crm.yaml); "
                "resize it with: airflow pools set %s N \"SMTP sends of all CRM campaigns\"",
                delivery.pool, delivery.parallel_sends, delivery.pool)
    return delivery.pool
