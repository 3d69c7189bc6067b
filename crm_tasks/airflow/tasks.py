"""One function per DAG task: read what the run says (its context, params and triggering
asset events), call the library, and return counts small enough for XCom, never customer data.

The DAG files call these from inside their tasks with one line each; the heavy imports
happen here, at run time, so that parsing a DAG file stays cheap.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from zoneinfo import ZoneInfo

from airflow.sdk import get_current_context

from crm_tasks.airflow.connections import smtp_target, task_engine
from crm_tasks.airflow.defaults import CUSTOMERS, PRODUCTS, PRODUCTS_LOADED, PURCHASES, SEGMENTS
from crm_tasks.clock import business_dates, campaign_dates, cleanup_as_of, report_as_of, segment_dates
from crm_tasks.settings import settings

log = logging.getLogger(__name__)


def _is_manual() -> bool:
    return get_current_context()["dag_run"].run_type == "manual"


# --- crm_ingest ----------------------------------------------------------------------------


def ingest_dates() -> list[str]:
    """The partition dates this run loads: the trigger form's range, else the run's data interval."""
    ctx = get_current_context()
    run, params = ctx["dag_run"], ctx["params"]
    dates = business_dates(params.get("start_date"), params.get("end_date"), run.data_interval_start,
                           run.data_interval_end, run.run_after, settings().timezone)
    return [d.isoformat() for d in dates]


def ingest(dates: list[str], source: str) -> dict:
    """Ingest one source for the run's dates; returns the counts only."""
    from crm_tasks.ingest.batches import ingest_dates as load
    from crm_tasks.store.engine import check_schema

    engine = task_engine()
    check_schema(engine)  # purchases run even when the profile task failed: check again
    return load(engine, settings(), [date.fromisoformat(d) for d in dates], [source]).summary()


def publish_ingest(dates: list[str], customers: dict, purchases: dict, products: dict | None = None) -> dict:
    """Reconcile the run's counts and announce the dates loaded to the consumer DAGs.

    Customers and purchases are announced every night; the catalogue only when a new or corrected
    products file was loaded (a file seen before, ``unchanged``, changed nothing).
    """
    from crm_tasks.ingest.batches import combine_summaries

    outlets = get_current_context()["outlet_events"]
    for asset in (CUSTOMERS, PURCHASES):
        outlets[asset].extra = {"dates": dates}
    summaries = [customers, purchases, *([products] if products else [])]
    combined = combine_summaries(*summaries)
    if products and products.get("by_status", {}).get("loaded", 0):
        outlets[PRODUCTS_LOADED].add(PRODUCTS, extra={"dates": dates})
    return combined


# --- crm_segments --------------------------------------------------------------------------


def recompute_segments() -> dict:
    """Recompute segments for the run's dates and announce the as-of date; returns the last recompute's counts."""
    from crm_tasks.errors import CrmError
    from crm_tasks.segments import compute
    from crm_tasks.store.engine import check_schema

    ctx = get_current_context()
    # The dates the triggering ingest runs loaded (none for a manual run).
    loaded = [d for events in ctx["triggering_asset_events"].values() for e in events
              for d in (e.extra or {}).get("dates", [])]
    engine = task_engine()
    check_schema(engine)
    try:
        fallback = compute.default_as_of(engine)
    except CrmError:
        fallback = None
    dates = segment_dates(ctx["params"].get("as_of"), ctx["params"].get("through"), loaded,
                          compute.latest_as_of(engine), fallback)
    results = [compute.recompute(engine, settings(), d) for d in dates]
    out = results[-1].summary() | {"dates": [d.isoformat() for d in dates]}
    ctx["outlet_events"][SEGMENTS].extra = {"as_of": out["as_of"]}
    return out


# --- crm_campaign_<name> -------------------------------------------------------------------


def plan_campaign(name: str) -> dict:
    """Plan one campaign for the run's date; returns counts by outcome and exclusion reason.

    Scheduled runs always plan for real; a manual run is a dry run unless its form says otherwise.
    """
    from crm_tasks.campaigns.definitions import get_campaign
    from crm_tasks.campaigns.planning import default_run_at
    from crm_tasks.campaigns.planning import plan_campaign as plan
    from crm_tasks.store.engine import check_schema

    ctx = get_current_context()
    params, logical_date, run_after = ctx["params"], ctx.get("logical_date"), ctx["dag_run"].run_after
    cfg = settings()
    campaign = get_campaign(cfg, name)
    engine = task_engine(cfg)
    check_schema(engine)
    tz = campaign.schedule.timezone or cfg.timezone
    as_of = campaign_dates(params.get("as_of"), tz, logical_date, run_after)
    when = logical_date or run_after
    if when.astimezone(ZoneInfo(tz)).date() != as_of:
        when = default_run_at(campaign, as_of, cfg.timezone)  # a date other than the run's: its usual time
    limit = params.get("audience_limit")
    test_recipient = params.get("test_recipient") or None
    result = plan(
        engine, cfg, campaign, as_of, when,
        # Messages to a test recipient never consume a customer's occurrence: they are always sent.
        dry_run=bool(params.get("dry_run", True)) if _is_manual() and not test_recipient else False,
        audience_limit=int(limit) if limit not in (None, "") else None,
        test_recipient=test_recipient,
        sample=0,
    )
    return result.summary()


def send_batches(name: str, plan: dict) -> list[dict]:
    """The send batches after a plan: none for a dry or blocked run; else this run's and any earlier
    run's messages still waiting (deferred, interrupted). Ids and counts only."""
    from crm_tasks.delivery.send import prepare_delivery

    if plan.get("dry_run") or plan.get("run_id") is None:
        return []
    return prepare_delivery(task_engine(), settings(), name)


def send(batch: dict) -> dict:
    """Send one batch; when some of its messages are due later than the task can wait (send window,
    retry backoff), the task is rescheduled for then instead of holding a worker."""
    from airflow.sdk.exceptions import AirflowRescheduleException

    from crm_tasks.delivery.send import send_batch

    cfg = settings()
    result = send_batch(task_engine(cfg), cfg, batch["run_id"], batch["batch_no"], target=smtp_target(cfg))
    if result.retry_at:
        raise AirflowRescheduleException(datetime.fromisoformat(result.retry_at))
    return result.summary()


def delivery_report(name: str, plan: dict) -> dict:
    """The run's ledger by final state; fails when a message is left neither sent nor accounted for."""
    from crm_tasks.delivery.send import run_report

    return run_report(task_engine(), name, plan)


# --- crm_cleanup ---------------------------------------------------------------------------


def clean() -> dict:
    """Merge, archive and purge as of the run's date; returns the counts (no customer data)."""
    from crm_tasks.cleanup.archive import format_report, run_cleanup
    from crm_tasks.store.engine import check_schema

    ctx = get_current_context()
    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    as_of = cleanup_as_of(ctx.get("data_interval_end"), ctx["dag_run"].run_after, cfg.timezone)
    result = run_cleanup(engine, cfg, as_of, dry_run=_is_manual() and bool(ctx["params"]["dry_run"]))
    log.info("%s", format_report(result.summary() | {"examples": {}}))
    return result.summary()


# --- crm_bounces ---------------------------------------------------------------------------


def read_bounces() -> dict:
    """Read the bounce mailbox: record and apply its late bounces and complaints; returns counts only.
    Fails at once (ConfigError) when no mailbox is configured: an unread feedback loop is no green run."""
    from crm_tasks.airflow.connections import bounce_mailbox
    from crm_tasks.delivery.bounce_mailbox import read_bounces as read
    from crm_tasks.errors import CrmError
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    result = read(engine, cfg, bounce_mailbox(cfg))
    if not result.reconciles:
        raise CrmError(f"the bounce mailbox's counts do not reconcile: {result.summary()}")
    return result.summary()


# --- crm_reports ---------------------------------------------------------------------------


def _report_as_of(cfg) -> date:
    """The as-of date of a crm_reports run: the form's, else what the triggering recomputes announced, else
    yesterday (clock.report_as_of)."""
    ctx = get_current_context()
    announced = [e.extra["as_of"] for events in ctx["triggering_asset_events"].values() for e in events
                 if (e.extra or {}).get("as_of")]
    return report_as_of(ctx["params"].get("as_of"), announced, ctx.get("data_interval_end"),
                        ctx["dag_run"].run_after, cfg.timezone)


def refresh_results() -> dict:
    """Attribution, campaign results and the control group as of the run's date; returns counts only."""
    from crm_tasks.results.campaigns import refresh_results as refresh
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    return refresh(engine, cfg, _report_as_of(cfg)).summary()


def refresh_sales() -> dict:
    """The daily sales cube up to the run's date (only the days that changed); returns counts only."""
    from crm_tasks.analytics.sales import refresh_sales as refresh
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    return refresh(engine, cfg, _report_as_of(cfg)).summary()


def forecast_revenue() -> dict:
    """The revenue forecast fitted as of the run's date (90 days, intervals, backtest); returns its summary.
    Too little history is a logged warning; a model that cannot be fitted fails the task, once recorded."""
    from crm_tasks.analytics.forecast import FAILED, NOT_ENOUGH_DATA
    from crm_tasks.analytics.forecast import forecast_revenue as fit
    from crm_tasks.errors import CrmError
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    result = fit(engine, cfg, _report_as_of(cfg))
    if result.status == FAILED:
        raise CrmError(f"the revenue forecast could not be fitted: {result.detail}")
    if result.status == NOT_ENOUGH_DATA:
        log.warning("no revenue forecast: %s", result.detail)
    return result.summary()


def fit_clv() -> dict:
    """Customer lifetime value fitted as of the run's date, every buyer scored; returns counts and parameters.
    Too few buyers is a logged warning; a fit that does not converge fails the task, once recorded (the
    previous scores stay in both cases)."""
    from crm_tasks.analytics.clv import ClvStatus
    from crm_tasks.analytics.clv import fit_clv as fit
    from crm_tasks.errors import CrmError
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    result = fit(engine, cfg, _report_as_of(cfg))
    if result.status == ClvStatus.FAILED:
        raise CrmError(f"the lifetime-value models could not be fitted: {result.detail}")
    if result.status == ClvStatus.NOT_ENOUGH_DATA:
        log.warning("no lifetime-value fit: %s", result.detail)
    return result.summary()


def store_figures() -> dict:
    """The reports the CRM pages open with, stored as of the run's date; returns counts and timings only."""
    from crm_tasks.analytics.figures import store_figures as store
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    return store(engine, cfg, _report_as_of(cfg)).summary()


def refresh_recommendations() -> dict:
    """Co-purchase statistics and every customer's recommendations as of the run's date (the previous ones
    replaced); returns counts only."""
    from crm_tasks.analytics.recommendations import refresh_recommendations as refresh
    from crm_tasks.store.engine import check_schema

    cfg = settings()
    engine = task_engine(cfg)
    check_schema(engine)
    return refresh(engine, cfg, _report_as_of(cfg)).summary()
