"""What every CRM DAG shares: retries, the fail-at-once policy for permanent errors, and the
assets that connect the producer DAGs to their consumers."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetAlias
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from crm_tasks.errors import ConfigError, CrmError, SchemaNotReady

# Producer and consumer DAGs meet here; an event's extra carries the dates it covers.
CUSTOMERS = Asset("crm://customers")
PURCHASES = Asset("crm://purchases")
# The catalogue: updated only on nights that loaded a new products/ file (it changes rarely). A task's
# outlet asset gets an event whenever the task succeeds; an alias as the outlet lets the task decide,
# adding the PRODUCTS event only when a file was loaded.
PRODUCTS = Asset("crm://products")
PRODUCTS_LOADED = AssetAlias("crm-products-loaded")
SEGMENTS = Asset("crm://segments")

# Every DAG's retries: transient failures (a database restart) get a few, further apart.
RETRY_DEFAULTS = {
    "owner": "crm",
    "retries": 3,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}


def fail_at_once(*errors: type[CrmError], reason: str) -> ExceptionRetryPolicy:
    """A retry policy that fails the task without retries on these errors (and on bad settings or an
    unmigrated schema, which never fix themselves); anything else gets RETRY_DEFAULTS' retries.

    The errors are classes, not dotted strings, so moving one breaks the DAG's import instead of
    silently disabling its policy.
    """
    return ExceptionRetryPolicy(
        rules=[RetryRule(exception=[ConfigError, SchemaNotReady, *errors], action=RetryAction.FAIL, reason=reason)]
    )


def default_args(*errors: type[CrmError], reason: str) -> dict:
    """A DAG's default_args: the shared retries plus a policy failing at once on ``errors``."""
    return {**RETRY_DEFAULTS, "retry_policy": fail_at_once(*errors, reason=reason)}
