"""The plugin's one FastAPI app under ``/crm``: the public e-mail endpoints and the CRM pages together.

The public routes (``/unsubscribe``, ``/r``, ``/o``, ``/webhooks``) come unchanged from
``crm_tasks.delivery.unsubscribe.create_app``: readers and providers reach them without credentials, a
signed token or signature being the proof. The page router carries the login dependency on every route:
the plugin passes Airflow's own ``requires_authenticated()``, so that this package never imports Airflow
(tests/test_layout.py), and the argument has no default, so no app is built without a login. ``who``, also
required, gives the logged-in user's name and roles (``crm_tasks.pages.access.PageUser``): the customer
pages need the Admin or Op role, and the audit names the user. Both kinds of
route share one lazily created engine: nothing touches the database or the settings at import.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from fastapi import FastAPI
from sqlalchemy import Engine

from crm_tasks.delivery.unsubscribe import create_app
from crm_tasks.pages.routes import page_router
from crm_tasks.settings import settings


def create_crm_app(*, login: Callable, who: Callable, get_settings=settings, get_engine=None,
                   airflow_runs: Callable[[], dict] | None = None) -> FastAPI:
    """The ``/crm`` app, its pages behind ``login`` and the roles ``who`` reports; ``get_engine`` (tests)
    else an engine on the settings' database, made on first use; ``airflow_runs`` (the plugin's) reads
    Airflow's scheduled and failed runs for the overview."""

    @lru_cache(maxsize=1)
    def engine() -> Engine:
        if get_engine is not None:
            return get_engine()
        from crm_tasks.store.engine import make_engine

        return make_engine(get_settings().resolved_database_url())

    app = create_app(get_settings, engine)
    app.title = "CRM"
    app.include_router(page_router(login, who, engine, get_settings, airflow_runs))
    return app
