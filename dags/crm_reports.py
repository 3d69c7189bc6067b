"""
### Reports: did each campaign work? — after every segment recompute, and daily
Runs when `crm_segments` announces a new as-of date (the night's purchases are in),
and every morning at 06:30 in any case, and measures as of that date:
- **attribution**: each purchase is credited to at most one campaign message — the
  one whose coupon it redeems, else the last message sent to the buyer within the
  campaign's `attribution_days` (7) before it; refunds in the window count against it;
- **campaign results** (`campaign_results`): per run, A/B variant and group, everyone
  assigned (intention to treat: failed and suppressed sends included) against the
  run's holdout over the same window — conversion and revenue per customer with 95%
  intervals, incremental revenue, a verdict that says "not enough data yet" when that
  is the truth, and each variant's probability of being best;
- **the global control group** (`control_results`): marketed customers against the
  `results.global_control_share` (5%) that no marketing campaign mails, month by month;
- **the sales cube** (`sales_daily`): revenue, refunds, orders, items and buyers per
  business day, store, category and currency; only the days whose purchases changed
  (a late or corrected file too) are recomputed;
- **the revenue forecast** (`revenue_forecasts`): the next 90 days with 80% and 95%
  intervals, fitted on the cube's days, and a backtest that says whether it beats
  seasonal naive;
- **customer lifetime value** (`customer_clv`): BG/NBD and Gamma-Gamma fitted on the
  purchases up to the date; every buyer's P(alive), expected purchases in 90 and 365
  days and 12-month CLV, usable in segment rules from the next recompute.
- **the pages' figures** (`report_figures`): the KPIs, cohorts, sales by day, week and
  month and the CLV reports the CRM pages open with, stored so that a page reads them
  instead of recounting purchases (used while the data behind them is unchanged);
- **recommendations** (`customer_recommendations`): co-purchase statistics over the
  `recommendations.window_days` up to the date, and each customer's products to suggest
  (cross-sell, up-sell, best sellers), each with its reason.

Re-running a date replaces its results. **Trigger by hand** with *As of* to measure
as of another day. From a shell: `crm report campaign NAME`, `crm report lift`,
`crm report control`, `crm report sales --by month`, `crm report kpis`, `crm report forecast`,
`crm report clv`, `crm report figures`, `crm recommendations evaluate`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from crm_tasks.airflow.defaults import SEGMENTS, default_args
from crm_tasks.settings import settings


@dag(
    dag_id="crm_reports",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("30 6 * * *", timezone=settings().timezone),
                                 assets=SEGMENTS),
    start_date=pendulum.datetime(2025, 1, 1, tz=settings().timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["crm", "reports"],
    # A missing exchange rate or an unmigrated database does not fix itself: fail at once.
    default_args=default_args(reason="the configuration or the schema must be fixed first"),
    params={
        "as_of": Param(None, type=["null", "string"], format="date", title="As of",
                       description="Measure purchases up to the end of this day. Empty: the date the triggering "
                                   "segment recompute announced, else yesterday."),
    },
)
def crm_reports():
    @task
    def refresh() -> dict:
        """Attribute purchases and measure every campaign run and the control group; returns counts."""
        from crm_tasks.airflow import tasks

        return tasks.refresh_results()

    @task
    def sales() -> dict:
        """Bring the daily sales cube up to date: only the days whose purchases changed are recomputed."""
        from crm_tasks.airflow import tasks

        return tasks.refresh_sales()

    @task
    def forecast() -> dict:
        """Fit the 90-day revenue forecast on the cube's days, with its backtest against seasonal naive."""
        from crm_tasks.airflow import tasks

        return tasks.forecast_revenue()

    @task
    def clv() -> dict:
        """Fit BG/NBD and Gamma-Gamma and score every buyer: P(alive), expected purchases, 12-month CLV."""
        from crm_tasks.airflow import tasks

        return tasks.fit_clv()

    @task
    def recommendations() -> dict:
        """Recompute the co-purchase statistics and every customer's recommendations, with their reasons."""
        from crm_tasks.airflow import tasks

        return tasks.refresh_recommendations()

    @task(trigger_rule="all_done")
    def figures() -> dict:
        """Store the reports the CRM pages open with, so they read them instead of recounting purchases
        (after the cube and the fits; also when one failed: the figures describe the data as it stands)."""
        from crm_tasks.airflow import tasks

        return tasks.store_figures()

    refresh()
    [sales() >> forecast(), clv()] >> figures()
    recommendations()


crm_reports()
