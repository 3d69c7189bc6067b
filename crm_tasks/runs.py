"""What a run covers, and how a task inside Airflow reaches the CRM database.

Nothing here imports Airflow at module level: crm_tasks must import and test
without it. The DAGs call these functions from inside their tasks.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from crm_tasks.config import Settings, settings
from crm_tasks.db import make_engine
from crm_tasks.errors import ConfigError

MAX_RANGE_DAYS = 3660

# The assets that connect the DAGs (Airflow's Asset takes these URIs; crm_tasks does not import Airflow).
CUSTOMERS_ASSET = "crm://customers"
PURCHASES_ASSET = "crm://purchases"
SEGMENTS_ASSET = "crm://segments"

# Every DAG's retries: transient failures (a database restart) get a few, further apart.
RETRY_DEFAULTS = {
    "owner": "crm",
    "retries": 3,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}


def date_range(start: str, end: str, start_name: str, end_name: str) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive, from trigger-form text; errors name the fields."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError:
        raise ConfigError(f"{start_name}/{end_name} must be dates in YYYY-MM-DD form, got {start!r}, {end!r}") from None
    if last < first:
        raise ConfigError(f"{end_name} {last} is before {start_name} {first}")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ConfigError(f"a range of more than {MAX_RANGE_DAYS} days is refused; split it")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def business_dates(
    start: str | None,
    end: str | None,
    interval_start: datetime | None,
    interval_end: datetime | None,
    run_after: datetime,
    tz: str,
) -> list[date]:
    """The partition dates a run loads.

    An explicit range (trigger-form parameters) wins; otherwise the local date
    of the run's data interval; a run without one (manual or asset-triggered)
    loads the local day before it was triggered. Never ``now()``.
    """
    zone = ZoneInfo(tz)
    if start or end:
        return date_range(start or end, end or start, "start_date", "end_date")  # type: ignore[arg-type]
    if interval_start is not None and interval_end is not None and interval_end > interval_start:
        return [interval_start.astimezone(zone).date()]
    return [run_after.astimezone(zone).date() - timedelta(days=1)]


def url_from_connection(conn_type: str, host: str | None, login: str | None, password: str | None,
                        port: int | None, schema: str | None, extra: dict | None = None) -> str:
    """A SQLAlchemy URL from an Airflow connection's fields.

    Airflow's own ``get_uri()`` percent-encodes a SQLite path into something
    SQLAlchemy reads as a relative file name, so the URL is built from the fields.
    For ``sqlite`` the host is the database file; for ``postgres`` the schema is
    the database and extras such as ``options`` or ``sslmode`` become query parameters.
    """
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise ConfigError("Airflow connection crm_db (sqlite) needs the database file as its host")
        return f"sqlite:///{host}"
    if kind in ("postgres", "postgresql"):
        query = {k: str(v) for k, v in (extra or {}).items() if k in ("options", "sslmode", "application_name")}
        return URL.create("postgresql+psycopg", username=login, password=password, host=host, port=port,
                          database=schema, query=query).render_as_string(hide_password=False)
    raise ConfigError(f"Airflow connection crm_db has type {conn_type!r}; use postgres (or sqlite for development)")


def airflow_crm_db_url() -> str | None:
    """The URL of the Airflow connection ``crm_db``, or None where it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get("crm_db")
    except AirflowNotFoundException:
        return None
    return url_from_connection(conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema,
                               conn.extra_dejson)


def task_engine(cfg: Settings | None = None) -> Engine:
    """The CRM engine for a task: CRM_DATABASE_URL, else connection crm_db, else embedded SQLite."""
    cfg = cfg or settings()
    url = cfg.database_url or airflow_crm_db_url()
    return make_engine(cfg.resolved_database_url(url))


def ingest_for_task(dates: list[str], source: str) -> dict:
    """Ingest one source for the run's dates; returns the counts only (small enough for XCom)."""
    from crm_tasks.db import check_schema
    from crm_tasks.ingest import ingest_dates

    engine = task_engine()
    check_schema(engine)  # purchases run even when the profile task failed: check again
    report = ingest_dates(engine, settings(), [date.fromisoformat(d) for d in dates], [source])
    return report.summary()


def segment_dates(as_of: str | None, through: str | None, loaded_dates: list[str], latest: date | None,
                  fallback: date | None) -> list[date]:
    """The as-of dates a segments run computes, in order.

    An explicit date (trigger form) wins, with ``through`` for a backfill range. A run
    triggered by ingest computes as of the latest date it loaded, but never before the
    latest recorded recompute: a corrected old partition changes today's segments, and
    must not undo the history recorded since. Otherwise: ``fallback``, the latest
    loaded partition.
    """
    if through and not as_of:
        raise ConfigError("through needs an as_of date to start from")
    if as_of:
        return date_range(as_of, through or as_of, "as_of", "through")
    if loaded_dates:
        newest = max(date.fromisoformat(d) for d in loaded_dates)
        return [max(newest, latest) if latest else newest]
    if fallback is None:
        raise ConfigError("nothing has been ingested yet and no as_of date was given")
    return [fallback]


def segments_for_task(as_of: str | None, through: str | None, loaded_dates: list[str]) -> dict:
    """Recompute segments for a DAG run; returns the last recompute's counts (no customer data)."""
    from crm_tasks import segments
    from crm_tasks.db import check_schema
    from crm_tasks.errors import CrmError

    engine = task_engine()
    check_schema(engine)
    try:
        fallback = segments.default_as_of(engine)
    except CrmError:
        fallback = None
    dates = segment_dates(as_of, through, loaded_dates, segments.latest_as_of(engine), fallback)
    results = [segments.recompute(engine, settings(), d) for d in dates]
    out = results[-1].summary()
    out["dates"] = [d.isoformat() for d in dates]
    return out


def campaign_dates(as_of: str | None, tz: str, logical_date: datetime | None, run_after: datetime) -> date:
    """The occurrence day a campaign run plans: the trigger form's date, else the run's local date.

    A scheduled run's date is that of its logical date (the cron firing) in the schedule's
    time zone; a manual run without a date plans the day it was triggered.
    """
    if as_of:
        return date_range(as_of, as_of, "as_of", "as_of")[0]
    return (logical_date or run_after).astimezone(ZoneInfo(tz)).date()


def campaign_for_task(name: str, params: dict, manual: bool, logical_date: datetime | None,
                      run_after: datetime) -> dict:
    """Plan one campaign for a DAG run; returns counts only (no customer data).

    Scheduled runs always plan for real; a manual run is a dry run unless its form says otherwise.
    """
    from crm_tasks.campaigns import get_campaign
    from crm_tasks.db import check_schema
    from crm_tasks.planning import default_run_at, plan_campaign

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
    result = plan_campaign(
        engine, cfg, campaign, as_of, when,
        # Messages to a test recipient never consume a customer's occurrence: they are always sent.
        dry_run=bool(params.get("dry_run", True)) if manual and not test_recipient else False,
        audience_limit=int(limit) if limit not in (None, "") else None,
        test_recipient=test_recipient,
        sample=0,
    )
    return result.summary()


class NotYetDue(Exception):
    """A batch's remaining messages are due later (send window, retry backoff): come back at ``when``."""

    def __init__(self, when: datetime, result: dict) -> None:
        super().__init__(f"the batch's remaining messages are due at {when.isoformat()}")
        self.when = when
        self.result = result


def airflow_smtp_target():
    """The Airflow connection ``smtp_default`` as an SmtpTarget, or None where it is not defined."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from crm_tasks.smtp import target_from_connection

    try:
        conn = Connection.get("smtp_default")
    except AirflowNotFoundException:
        return None
    return target_from_connection(conn.host, conn.port, conn.login, conn.password, conn.extra_dejson)


def delivery_batches_for_task(name: str, plan: dict) -> list[dict]:
    """The send batches after a plan: none for a dry or blocked run; else this run's and any earlier
    run's messages still waiting (deferred, interrupted). Ids and counts only."""
    from crm_tasks.delivery import prepare_delivery

    if plan.get("dry_run") or plan.get("run_id") is None:
        return []
    return prepare_delivery(task_engine(), settings(), name)


def send_batch_for_task(batch: dict) -> dict:
    """Send one batch; raises NotYetDue when some of its messages are due later than the task can wait."""
    from crm_tasks.delivery import send_batch, smtp_target

    cfg = settings()
    result = send_batch(task_engine(cfg), cfg, batch["run_id"], batch["batch_no"],
                        target=smtp_target(cfg, None if cfg.smtp_url else airflow_smtp_target()))
    if result.retry_at:
        raise NotYetDue(datetime.fromisoformat(result.retry_at), result.summary())
    return result.summary()


def delivery_report_for_task(name: str, plan: dict) -> dict:
    """The run's ledger by final state; fails when a message is left neither sent nor accounted for."""
    from crm_tasks import ledger
    from crm_tasks.errors import CrmError
    from crm_tasks.models import Message

    if plan.get("run_id") is None:
        return {"campaign": name, "states": {}}
    with task_engine().connect() as conn:
        states = ledger.state_counts(conn, [Message.run_id == plan["run_id"]])
    left = {s: n for s, n in states.items() if s not in ledger.FINAL}
    if left and not plan.get("dry_run"):
        raise CrmError(f"campaign {name}, run {plan['run_id']}: messages not in a final state after every batch: "
                       f"{left}; another sender may hold them (see crm campaign status)")
    if not plan.get("dry_run") and sum(states.values()) != plan["recipients"]:
        raise CrmError(f"campaign {name}, run {plan['run_id']}: {plan['recipients']} recipients planned but the "
                       f"ledger holds {sum(states.values())} messages ({states}); nothing may be lost")
    return {"campaign": name, "run_id": plan["run_id"], "states": states, "reconciles": True}
