"""
### Segments: RFM, lifecycle stages, value tiers and custom rules, after every ingest

Runs whenever `crm_ingest` publishes fresh customers or purchases (the assets
`crm://customers` and `crm://purchases`) and recomputes every segment as of the
latest business date that ingest loaded:

- **RFM**: recency, frequency and monetary scored 1-5 by quintile, and the
  eleven named segments (`rfm:champions` ... `rfm:lost`);
- **lifecycle**: `lifecycle:prospect`, `new`, `active`, `at_risk`, `churned`, `reactivated`;
- **value tiers**: `value:high_value`, `value:high_potential`, `value:other`;
- **custom segments** from `segments/*.yaml` (marketing's own rules). A broken
  file is reported in the task log and in `crm segments list`; its last good
  membership is kept and every other segment is computed as usual.

Each run records the membership history (who entered and left which segment)
and a size snapshot per segment, then updates the asset `crm://segments`, which
campaign DAGs schedule on. Re-running a date gives the same result.

**Trigger by hand** with *as of* (and *through* for a backfill, one history
step per day). Thresholds, exchange rates and the RFM window live in
`crm.yaml` under `segments:`. From a shell: `crm segments list`,
`crm segments show NAME`, `crm segments transitions --since DATE`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from crm_tasks.config import settings
from crm_tasks.runs import CUSTOMERS_ASSET, PURCHASES_ASSET, RETRY_DEFAULTS, SEGMENTS_ASSET

SEGMENTS = Asset(SEGMENTS_ASSET)

# A missing exchange rate or an unmigrated database does not fix itself: fail at once.
CONFIG_ERRORS = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=["crm_tasks.errors.ConfigError", "crm_tasks.errors.SchemaNotReady"],
            action=RetryAction.FAIL,
            reason="the configuration or the schema must be fixed first",
        )
    ]
)


@dag(
    dag_id="crm_segments",
    schedule=Asset(CUSTOMERS_ASSET) | Asset(PURCHASES_ASSET),
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "segments"],
    default_args={**RETRY_DEFAULTS, "retry_policy": CONFIG_ERRORS},
    params={
        "as_of": Param(None, type=["null", "string"], format="date", title="As of",
                       description="Business date to compute the segments as of. Empty: the latest date ingest "
                                   "loaded."),
        "through": Param(None, type=["null", "string"], format="date", title="Through (backfill)",
                         description="With As of: recompute every date up to this one, in order."),
    },
)
def crm_segments():
    @task(outlets=[SEGMENTS])
    def recompute() -> dict:
        """Recompute every segment and announce the result to campaign DAGs."""
        from crm_tasks.runs import segments_for_task

        ctx = get_current_context()
        # The dates the triggering ingest runs loaded (none for a manual run).
        loaded = [d for events in ctx["triggering_asset_events"].values() for e in events
                  for d in (e.extra or {}).get("dates", [])]
        summary = segments_for_task(ctx["params"].get("as_of"), ctx["params"].get("through"), loaded)
        ctx["outlet_events"][SEGMENTS].extra = {"as_of": summary["as_of"]}
        return summary

    recompute()


crm_segments()
