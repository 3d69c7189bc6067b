"""The CRM engine's Airflow plugin: it only registers.

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

from airflow.plugins_manager import AirflowPlugin

from crm_tasks.airflow import pools
from crm_tasks.delivery.unsubscribe import create_app


class CrmPlugin(AirflowPlugin):
    name = "crm"
    fastapi_apps: ClassVar[list[dict]] = [{"app": create_app(), "url_prefix": "/crm", "name": "CRM public endpoints"}]
    listeners: ClassVar[list] = [pools]
