"""The CRM database and the SMTP server as Airflow connections (``crm_db``, ``smtp_default``).

Environment variables win (``CRM_DATABASE_URL``, ``CRM_SMTP_URL``); a connection is read only
where they are unset, and its absence is not an error: the embedded SQLite file and the
settings' SMTP default remain.
"""

from __future__ import annotations

from airflow.sdk import Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy import Engine

from crm_tasks.settings import Settings, settings
from crm_tasks.store.engine import make_engine, url_from_connection


def _connection(conn_id: str) -> Connection | None:
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def crm_db_url() -> str | None:
    """The URL of the Airflow connection ``crm_db``, or None where it is not defined."""
    conn = _connection("crm_db")
    if conn is None:
        return None
    return url_from_connection(conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema,
                               conn.extra_dejson)


def task_engine(cfg: Settings | None = None) -> Engine:
    """The CRM engine for a task: CRM_DATABASE_URL, else connection crm_db, else embedded SQLite."""
    cfg = cfg or settings()
    return make_engine(cfg.resolved_database_url(cfg.database_url or crm_db_url()))


def smtp_target(cfg: Settings):
    """The SMTP server for a send task: CRM_SMTP_URL, else connection smtp_default (ConfigError if neither)."""
    from crm_tasks.delivery.send import smtp_target as resolve
    from crm_tasks.delivery.smtp import target_from_connection

    conn = None if cfg.smtp_url else _connection("smtp_default")
    found = conn and target_from_connection(conn.host, conn.port, conn.login, conn.password, conn.extra_dejson)
    return resolve(cfg, found or None)


def bounce_mailbox(cfg: Settings):
    """The bounce mailbox for crm_bounces: CRM_BOUNCE_IMAP_URL, else connection crm_bounces (type imap), else
    delivery.feedback.maildir (ConfigError naming all three if none)."""
    from crm_tasks.delivery.bounce_mailbox import open_mailbox, target_from_connection

    conn = None if cfg.bounce_imap_url else _connection("crm_bounces")
    found = conn and target_from_connection(conn.host, conn.port, conn.login, conn.password, conn.extra_dejson)
    return open_mailbox(cfg, found or None)
