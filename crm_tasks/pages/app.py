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

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from crm_tasks.delivery.unsubscribe import create_app
from crm_tasks.pages.routes import page_router, render
from crm_tasks.settings import settings

# The e-mail endpoints answer mail readers and providers, not people in the UI: their errors stay as they are.
PUBLIC = ("/unsubscribe", "/r/", "/o/", "/webhooks")
HINTS = {401: "You are not logged in to Airflow, or your login expired: open the CRM from Airflow's menu "
              "(Plugins, CRM) after logging in.",
         403: "Your Airflow login does not allow this. Customer records, segment members and their exports "
              "need Airflow's Admin or Op role; erase and restore need Admin. An Airflow admin can grant a role."}


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

    @app.exception_handler(HTTPException)
    async def page_error(request: Request, exc: HTTPException):
        """A page's refusal as a page (what went wrong and what to do), for a browser; JSON for anyone else."""
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if "text/html" not in request.headers.get("accept", "") or path.startswith(PUBLIC) or exc.status_code < 400:
            return await http_exception_handler(request, exc)
        response = render("error.html", status_code=exc.status_code, root="../" * max(path.count("/") - 1, 0),
                          current=None, status=exc.status_code, detail=str(exc.detail), hint=HINTS.get(exc.status_code))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    return app
