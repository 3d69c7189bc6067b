"""
### Nightly ingest: purchases and customer profiles into the CRM store

Every night at 02:00 (time zone from `crm.yaml`, default Asia/Kolkata) this DAG
loads the previous local day's landing partitions:

- `landing/customers/dt=YYYY-MM-DD/*.csv`, profiles (the latest `updated_at` wins);
- `landing/purchases/dt=YYYY-MM-DD/*.csv|*.parquet`, transactions.

Each file is one batch: good rows load, bad rows go to the `quarantine` table
with file, line, raw text and reason, and the batch reconciles
(read = loaded + quarantined + duplicates). A file with more than 5% bad rows
loads nothing and fails the run; re-running a date changes nothing; a
corrected file replaces what its earlier version loaded. Per-customer metrics
are refreshed for the customers each batch touched.

**Trigger by hand** with *start date* and *end date* to (re)load a range,
for example a backfill or the demo's year of data.

On success it updates the assets `crm://customers` and `crm://purchases`
(their events carry the dates loaded), which `crm_segments` schedules on.
Failures caused by the data (rejected or unreadable files) fail at once without
retries; see the task log for the file, the counts and the first reasons.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from crm_tasks.config import settings
from crm_tasks.runs import CUSTOMERS_ASSET, PURCHASES_ASSET, RETRY_DEFAULTS

CUSTOMERS = Asset(CUSTOMERS_ASSET)
PURCHASES = Asset(PURCHASES_ASSET)

# Bad data does not get better by waiting: fail at once. Anything else
# (a database restart, a full disk being cleared) gets the retries.
DATA_ERRORS = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[
                "crm_tasks.errors.IngestFailed",
                "crm_tasks.errors.SchemaNotReady",
                "crm_tasks.errors.ConfigError",
            ],
            action=RetryAction.FAIL,
            reason="the input or the configuration must be fixed first",
        )
    ]
)


@dag(
    dag_id="crm_ingest",
    schedule=CronTriggerTimetable(
        f"0 {settings().ingest_hour} * * *", timezone=settings().timezone, interval=timedelta(days=1)
    ),
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "ingest"],
    default_args={**RETRY_DEFAULTS, "retry_policy": DATA_ERRORS},
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="Start date",
                            description="First partition date to load. Empty: the run's own day."),
        "end_date": Param(None, type=["null", "string"], format="date", title="End date",
                          description="Last partition date to load (inclusive). Empty: same as start date."),
    },
)
def crm_ingest():
    @task
    def business_dates() -> list[str]:
        """The partition dates this run loads, from its data interval or the trigger form."""
        from crm_tasks.runs import business_dates as dates_for_run

        ctx = get_current_context()
        run = ctx["dag_run"]
        dates = dates_for_run(
            ctx["params"].get("start_date"), ctx["params"].get("end_date"),
            run.data_interval_start, run.data_interval_end, run.run_after, settings().timezone,
        )
        return [d.isoformat() for d in dates]

    @task
    def ingest_customers(dates: list[str]) -> dict:
        from crm_tasks.runs import ingest_for_task

        return ingest_for_task(dates, "customers")

    # Purchases do not depend on profiles; a rejected profile file must not hold them back.
    @task(trigger_rule="all_done")
    def ingest_purchases(dates: list[str]) -> dict:
        from crm_tasks.runs import ingest_for_task

        return ingest_for_task(dates, "purchases")

    @task(outlets=[CUSTOMERS, PURCHASES])
    def publish(dates: list[str], customers: dict, purchases: dict) -> dict:
        """Reconcile the run's counts and announce fresh data, with the dates loaded, to downstream DAGs."""
        from crm_tasks.ingest import combine_summaries

        outlets = get_current_context()["outlet_events"]
        for asset in (CUSTOMERS, PURCHASES):
            outlets[asset].extra = {"dates": dates}
        return combine_summaries(customers, purchases)

    # Each ingest task checks the schema itself (purchases run even when profiles failed).
    dates = business_dates()
    customers = ingest_customers(dates)
    purchases = ingest_purchases(dates)
    customers >> purchases
    publish(dates, customers, purchases)


crm_ingest()
