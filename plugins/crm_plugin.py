"""The CRM engine's Airflow plugin: it only registers.

One FastAPI app under ``/crm`` (``crm_tasks.pages.app.create_crm_app``) holds two kinds of routes.

The CRM pages (``/crm/overview``, ``/crm/segments``, ``/crm/sales``, ``/crm/campaigns``,
``/crm/data-quality``; ``crm_tasks.pages``) show the engine's data inside the Airflow UI, from a "CRM" menu. A plugin's app is not
behind Airflow's login, so every page route depends on Airflow's own ``requires_authenticated()``: the
UI's ``_token`` cookie (sent by the same-origin iframe) or a Bearer token, else 401/403.

``/crm/unsubscribe/<token>`` is the one-click unsubscribe endpoint of the campaign e-mails
(``crm_tasks.delivery.unsubscribe``); ``/crm/r/<token>`` redirects a tracked link of an e-mail to its
target and counts the click, and ``/crm/o/<token>.gif`` is the open pixel (when opens are tracked)
(``crm_tasks.delivery.clicks``). ``POST /crm/webhooks/ses`` and ``/crm/webhooks/mailgun`` take the
providers' bounce and complaint notifications (``crm_tasks.delivery.webhooks``). They are deliberately
outside Airflow's login: mail clients, readers and providers reach them without credentials, and a
signed token or the provider's signature is the proof. They show no customer data, read bounded request
bodies, and a token or signature that is not valid gets no redirect and changes nothing.

Its listener (``crm_tasks.airflow.pools``) creates the send pool named in crm.yaml, if any, when a
scheduler starts: a campaign never waits on a pool nobody created.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin

from crm_tasks.airflow import pools
from crm_tasks.pages.app import create_crm_app


def _view(name: str, path: str) -> dict:
    # A relative href (no leading slash) survives a sub-path deployment: the UI sets <base href>.
    # url_route opens the page inside the UI (an iframe at plugin/<url_route>), which sends the login cookie.
    return {"name": name, "href": f"crm/{path}", "destination": "nav", "category": "CRM", "url_route": f"crm-{path}"}


class CrmPlugin(AirflowPlugin):
    name = "crm"
    # Airflow's own login for the pages: the UI's _token cookie or a Bearer token, else 401/403.
    fastapi_apps: ClassVar[list[dict]] = [
        {"app": create_crm_app(login=requires_authenticated()), "url_prefix": "/crm", "name": "CRM"}]
    external_views: ClassVar[list[dict]] = [
        _view("Overview", "overview"),
        _view("Segments", "segments"),
        _view("Sales", "sales"),
        _view("Campaigns", "campaigns"),
        _view("Data quality", "data-quality"),
    ]
    listeners: ClassVar[list] = [pools]
