"""
### Bounces: late bounces and complaints from the bounce mailbox — every hour

Reads the bounce mailbox at 15 minutes past every hour. Delivery status
notifications (RFC 3464) that receiving servers send back after accepting a
message, and complaint reports (RFC 5965, a provider's feedback loop), are
matched to their message by Message-ID and recorded once in `delivery_events`:

- a **hard bounce** (failed, 5.x.x) and a **complaint** suppress the address
  (reasons `hard_bounce`, `complaint`): planning and sending skip it from then on;
- a **soft bounce** (delayed, or failed with 4.x.x) counts toward
  `delivery.soft_bounce_limit`, like a temporary refusal at send time;
- an event naming no message of ours is recorded as `unmatched`, and a report
  read twice as `duplicate`: counted, never applied.

Reports are moved to `crm-processed` once their events are committed; anything
that is not a report this engine reads (an auto-reply, a bounce in free text)
is moved to `crm-unparsed` for a person, and counted. Nothing is deleted.

**Where the mailbox is**: `CRM_BOUNCE_IMAP_URL`
(`imaps://user:password@host:993`), else the Airflow connection `crm_bounces`
(type imap), else `delivery.feedback.maildir` in `crm.yaml` for a maildir on the
worker. With none of them the run fails at once, naming them: an unread
feedback loop is not a green run. The task returns the counts, which reconcile
(messages = reports + unparsed; events = applied + unmatched + forged + duplicate).

Provider webhooks (Amazon SES, Mailgun) need no DAG: they post to the CRM app's
`/crm/webhooks/ses` and `/crm/webhooks/mailgun` (README, "Late bounces and complaints").
From a shell: `crm bounces read [--maildir PATH]`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, task

from crm_tasks.airflow.defaults import default_args
from crm_tasks.settings import settings


@dag(
    dag_id="crm_bounces",
    # Off the hour, away from the campaigns' and the nightly jobs' starts.
    schedule=CronTriggerTimetable("15 * * * *", timezone=settings().timezone),
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    # Two readers at once would only record each other's reports as duplicates.
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "delivery", "bounces"],
    # No mailbox configured, a refused login or certificate, an unmigrated schema (ConfigError, SchemaNotReady):
    # a retry does not fix them. A mailbox that cannot be reached is retried.
    default_args=default_args(reason="the mailbox's settings or the schema must be looked at first"),
)
def crm_bounces():
    @task
    def read_mailbox() -> dict:
        """Record and apply the bounce mailbox's reports; returns the counts, which reconcile."""
        from crm_tasks.airflow import tasks

        return tasks.read_bounces()

    read_mailbox()


crm_bounces()
