"""
### Cleanup: stale profiles archived, then purged; duplicates merged — every week

Runs every Monday at 04:00 in the configured time zone (after the night's ingest
and segments) and cleans the customer base as of the last complete day of the week
its data interval covers (Sunday):

- **duplicates** (same e-mail address or phone) are merged into the most recently
  updated profile; purchases, metrics, coupons and the send ledger move with them,
  and `customer_merges` records which id went where;
- **stale profiles** are archived with a named reason: `inactive` (no purchase and
  no profile update for `inactive_months`, 24), `hard_bounce` (the address bounced
  and there is no phone), `no_contact` (neither address nor phone). Archived
  profiles leave campaigns at once and segments at the next recompute;
- after the grace period (`grace_days`, 30) an archived profile's **personal data is
  purged**; a keyed hash of its address stays in `suppressions`, and purchases and
  metrics stay under the pseudonymous id, so sales figures do not change.

**Guardrail**: a run that would archive or merge away more than `max_archive_share`
(10%) of the profiles fails at once, changing nothing, with the counts in the task
log: check with a dry run, then raise the share in `crm.yaml` if it is expected.
Every run records its reconciliation and a data-freshness figure in `cleanup_runs`.

**Trigger by hand** with *Dry run* (on by default: the report of a real run, nothing
stored); scheduled runs are never dry runs. From a shell: `crm cleanup --as-of DATE
--dry-run`, `crm cleanup restore ID`, `crm erase --email ADDRESS`. Settings live
under `cleanup:` in `crm.yaml`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from crm_tasks.airflow.defaults import default_args
from crm_tasks.errors import CleanupBlocked
from crm_tasks.settings import settings


@dag(
    dag_id="crm_cleanup",
    schedule=CronTriggerTimetable("0 4 * * 1", timezone=settings().timezone, interval=timedelta(days=7)),
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "cleanup"],
    # A blocked run, bad settings or an unmigrated schema do not fix themselves on a retry.
    default_args=default_args(CleanupBlocked,
                              reason="the guardrail, the configuration or the schema must be looked at first"),
    params={
        "dry_run": Param(True, type="boolean", title="Dry run",
                         description="Manual runs only: report what a real run would archive, merge and purge, "
                                     "and store nothing. Scheduled runs always clean for real."),
    },
)
def crm_cleanup():
    @task
    def clean() -> dict:
        """Merge, archive and purge as of the run's date; returns the counts and the freshness figure."""
        from crm_tasks.airflow import tasks

        return tasks.clean()

    clean()


crm_cleanup()
