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
from airflow.sdk import Param, dag, task

from crm_tasks.airflow.defaults import CUSTOMERS, PURCHASES, SEGMENTS, default_args
from crm_tasks.settings import settings


@dag(
    dag_id="crm_segments",
    schedule=CUSTOMERS | PURCHASES,
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "segments"],
    # A missing exchange rate or an unmigrated database does not fix itself: fail at once.
    default_args=default_args(reason="the configuration or the schema must be fixed first"),
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
        from crm_tasks.airflow import tasks

        return tasks.recompute_segments()

    recompute()


crm_segments()
