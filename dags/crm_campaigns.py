"""
### Campaigns: one DAG per file in `campaigns/`

Each enabled campaign definition (`campaigns/<name>.yaml`) becomes the DAG
`crm_campaign_<name>`, scheduled by its own cron expression and time zone. A run
plans the campaign for its date: who receives which message when, who is left
out and why (no consent, suppressed, no valid address, frequency cap, holdout,
outside the send window, already sent), issues coupons and renders every
message. Then `send` delivers the plan over SMTP in batches (one mapped task per
batch, at most `delivery.parallel_sends` at once, in the pool `delivery.pool` if one is set), each message at most
once; a batch whose messages are due later (send window, retry backoff) is
rescheduled, not held. `report` checks every message ended in a final state:
sent, failed, suppressed or unknown (see `crm campaign status`).

The SMTP server is the Airflow connection `smtp_default` (or `CRM_SMTP_URL`).

**Trigger by hand** with the form: *Dry run* (on by default: records the plan,
sends nothing), *As of* (any past or future date), *Audience limit*,
and *Test recipient* (every rendered message goes to that address instead, and is sent even with
*Dry run* on).
Scheduled runs are never dry runs.

A guardrail fails the run, with nothing planned for sending, when the audience
exceeds the campaign's `max_audience` or jumps far above the previous run.

A broken campaign file does not stop the others: it shows as an import error of
this file that names the campaign file, the field and the fix.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from crm_tasks.airflow.defaults import default_args
from crm_tasks.campaigns.definitions import Campaign, load_campaigns
from crm_tasks.errors import CampaignBlocked, IllegalTransition, RenderError
from crm_tasks.settings import settings


def campaign_dag(campaign: Campaign) -> DAG:
    tz = campaign.schedule.timezone or settings().timezone

    @dag(
        dag_id=f"crm_campaign_{campaign.name}",
        schedule=CronTriggerTimetable(campaign.schedule.cron, timezone=tz),
        start_date=pendulum.datetime(2025, 1, 1, tz=tz),
        catchup=False,
        max_active_runs=1,
        description=campaign.description or None,
        doc_md=f"#### {campaign.name} ({campaign.kind})\n\n{campaign.description}\n\n"
               f"Defined in `campaigns/{campaign.name}.yaml`, template `{campaign.template}`.\n" + __doc__,
        tags=["crm", "campaign", campaign.kind, *campaign.tags],
        # Guardrails, bad templates and bad settings do not fix themselves on a retry.
        default_args=default_args(CampaignBlocked, RenderError, IllegalTransition,
                                  reason="a guardrail, a template or the configuration must be looked at first"),
        params={
            "dry_run": Param(True, type="boolean", title="Dry run",
                             description="Manual runs only: record the plan without handing anything to delivery. "
                                         "Scheduled runs always plan for real."),
            "as_of": Param(None, type=["null", "string"], format="date", title="As of",
                           description="The day the messages are for. Empty: the day of the run."),
            "audience_limit": Param(None, type=["null", "integer"], minimum=1, title="Audience limit",
                                    description="At most this many recipients (a stable slice); the rest are "
                                                "excluded with the reason audience_limit."),
            "test_recipient": Param(None, type=["null", "string"], format="email", title="Test recipient",
                                    description="Send the rendered messages to this address instead of the "
                                                "customers (5 messages unless an audience limit is given)."),
        },
    )
    def build():
        @task
        def plan() -> dict:
            """Plan the campaign for the run's date; returns counts by outcome and exclusion reason."""
            from crm_tasks.airflow import tasks

            return tasks.plan_campaign(campaign.name)

        @task
        def batches(planned: dict) -> list[dict]:
            """The send batches: ids and counts only (Airflow maps at most 1024; batches grow instead)."""
            from crm_tasks.airflow import tasks

            return tasks.send_batches(campaign.name, planned)

        @task(pool=settings().delivery.pool, max_active_tis_per_dag=settings().delivery.parallel_sends)
        def send(batch: dict) -> dict:
            """Deliver one batch; rescheduled (no worker held) until its remaining messages are due."""
            from crm_tasks.airflow import tasks

            return tasks.send(batch)

        @task(trigger_rule="none_failed")
        def report(planned: dict) -> dict:
            """The run's ledger by state; fails if a message is left in flight."""
            from crm_tasks.airflow import tasks

            return tasks.delivery_report(campaign.name, planned)

        planned = plan()
        sent = send.expand(batch=batches(planned))
        sent >> report(planned)

    return build()


class BrokenCampaigns(DAG):
    """Stands for the campaign files that failed validation: Airflow validates every DAG it
    finds, so this one's failure becomes an import error of this file that names them,
    while every valid campaign's DAG loads."""

    def validate(self):
        raise ValueError(self.description)


_campaigns, _problems = load_campaigns(settings())
for _c in _campaigns:
    if _c.enabled:
        globals()[f"crm_campaign_{_c.name}"] = campaign_dag(_c)
if _problems:
    crm_campaign_errors = BrokenCampaigns(
        dag_id="crm_campaign_errors", schedule=None,
        description="broken campaign definitions, fix them in campaigns/: "
                    + " | ".join(str(p) for p in _problems),
    )
