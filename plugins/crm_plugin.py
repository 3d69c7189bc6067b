"""The CRM engine's Airflow plugin: it only registers.

``/crm/unsubscribe/<token>`` is the one-click unsubscribe endpoint of the campaign e-mails
(``crm_tasks.delivery.unsubscribe``); ``/crm/r/<token>`` redirects a tracked link of an e-mail to its
target and counts the click, and ``/crm/o/<token>.gif`` is the open pixel (when opens are tracked)
(``crm_tasks.delivery.clicks``). They are deliberately outside Airflow's login: mail clients and readers
reach them without credentials, and the signed token is the proof. They show no customer data, and a
token that is not ours gets 404 without a redirect.

Its listener (``crm_tasks.airflow.pools``) creates the send pool named in crm.yaml, if any, when a
scheduler starts: a campaign never waits on a pool nobody created.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from crm_tasks.airflow import pools
from crm_tasks.delivery.unsubscribe import create_app


class CrmPlugin(AirflowPlugin):
    name = "crm"
    fastapi_apps: ClassVar[list[dict]] = [{"app": create_app(), "url_prefix": "/crm", "name": "CRM one-click unsubscribe"}]
    listeners: ClassVar[list] = [pools]
