"""
### Nightly ingest: purchases, customer profiles and the product catalogue into the CRM store

Every night at 02:00 (time zone from `crm.yaml`, default Asia/Kolkata) this DAG
loads the previous local day's landing partitions:

- `landing/customers/dt=YYYY-MM-DD/*.csv`, profiles (the latest `updated_at` wins);
- `landing/purchases/dt=YYYY-MM-DD/*.csv|*.parquet`, transactions;
- `landing/products/dt=YYYY-MM-DD/*.csv|*.parquet`, the product catalogue (the latest
  `updated_at` wins). Optional: a night without a products partition is an ordinary night,
  while a night without customers or purchases still fails.

Each file is one batch: good rows load, bad rows go to the `quarantine` table
with file, line, raw text and reason, and the batch reconciles
(read = loaded + quarantined + duplicates). A file with more than 5% bad rows
loads nothing and fails the run; re-running a date changes nothing; a
corrected file replaces what its earlier version loaded. Per-customer metrics
are refreshed for the customers each batch touched.

**Trigger by hand** with *start date* and *end date* to (re)load a range,
for example a backfill or the demo's year of data.

On success it updates the assets `crm://customers` and `crm://purchases`
(their events carry the dates loaded), which `crm_segments` schedules on, and
`crm://products` (through the alias `crm-products-loaded`) only when a new or corrected
products file was loaded.
Failures caused by the data (rejected or unreadable files) fail at once without
retries; see the task log for the file, the counts and the first reasons.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from crm_tasks.airflow.defaults import CUSTOMERS, PRODUCTS_LOADED, PURCHASES, default_args
from crm_tasks.errors import IngestFailed
from crm_tasks.settings import settings


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
    # Bad data does not get better by waiting: fail at once. Anything else
    # (a database restart, a full disk being cleared) gets the retries.
    default_args=default_args(IngestFailed, reason="the input or the configuration must be fixed first"),
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
        from crm_tasks.airflow import tasks

        return tasks.ingest_dates()

    @task
    def ingest_customers(dates: list[str]) -> dict:
        from crm_tasks.airflow import tasks

        return tasks.ingest(dates, "customers")

    # Purchases do not depend on profiles; a rejected profile file must not hold them back.
    @task(trigger_rule="all_done")
    def ingest_purchases(dates: list[str]) -> dict:
        from crm_tasks.airflow import tasks

        return tasks.ingest(dates, "purchases")

    # The catalogue neither needs nor holds back the others (a sale of an unlisted SKU still loads);
    # it runs after them so that two writers never share a SQLite file.
    @task(trigger_rule="all_done")
    def ingest_products(dates: list[str]) -> dict:
        from crm_tasks.airflow import tasks

        return tasks.ingest(dates, "products")

    # The alias lets the task announce crm://products only on a night that loaded a products file.
    @task(outlets=[CUSTOMERS, PURCHASES, PRODUCTS_LOADED])
    def publish(dates: list[str], customers: dict, purchases: dict, products: dict) -> dict:
        """Reconcile the run's counts and announce fresh data, with the dates loaded, to downstream DAGs."""
        from crm_tasks.airflow import tasks

        return tasks.publish_ingest(dates, customers, purchases, products)

    # Each ingest task checks the schema itself (purchases run even when profiles failed).
    dates = business_dates()
    customers = ingest_customers(dates)
    purchases = ingest_purchases(dates)
    products = ingest_products(dates)
    customers >> purchases >> products
    publish(dates, customers, purchases, products)


crm_ingest()
