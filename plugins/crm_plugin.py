"""The CRM engine's Airflow plugin: it only registers.

One FastAPI app under ``/crm`` (``crm_tasks.pages.app.create_crm_app``) holds two kinds of routes.

The CRM pages (``/crm/overview``, ``/crm/segments``, ``/crm/sales``, ``/crm/campaigns``, ``/crm/customers``,
``/crm/data-quality``; ``crm_tasks.pages``) show the engine's data inside the Airflow UI, from a "CRM" menu. A plugin's app is not
behind Airflow's login, so every page route depends on Airflow's own ``requires_authenticated()``: the
UI's ``_token`` cookie (sent by the same-origin iframe) or a Bearer token, else 401/403. ``page_user``
tells the pages who that is and which Airflow roles they hold: customer records and exports of personal
data need Admin or Op, erasure and restore Admin.

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

from functools import cache
from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin

from crm_tasks.airflow import pools


def page_user(user):
    """The logged-in Airflow user (Airflow's own ``get_user``: cookie or Bearer token) as a
    ``crm_tasks.pages.access.PageUser`` with their role names: the simple auth manager's one ``role``
    ("admin", "op", "user", "viewer"), or the FAB auth manager's ``roles`` ("Admin", "Op", ...), upper-cased
    alike."""
    from crm_tasks.pages.access import PageUser

    roles = {user.role} if isinstance(getattr(user, "role", None), str) else set()
    roles |= {getattr(r, "name", r) for r in getattr(user, "roles", None) or []}
    return PageUser(user.get_name(), frozenset(str(r).upper() for r in roles if r))


def login_user():
    """``page_user`` as a FastAPI dependency of Airflow's ``get_user``. Airflow's security module is imported
    here, not at the top: every Airflow process loads this plugin, every task process included (for its
    listeners), and only the api-server needs it."""
    from airflow.api_fastapi.core_api.security import GetUserDep

    def who(user: GetUserDep):
        return page_user(user)

    return who


@cache
def crm_app():
    """The /crm app, with Airflow's own login for the pages (the UI's _token cookie or a Bearer token, else
    401/403). Built once, when the api-server first asks the plugin for its apps: with FastAPI, Airflow's
    security and the pages, the imports cost about 1.4 s of CPU, which no scheduler, dag-processor,
    triggerer or task process should pay."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    from crm_tasks.pages.app import create_crm_app

    return create_crm_app(login=requires_authenticated(), who=login_user(), airflow_runs=airflow_runs)


def _view(name: str, path: str) -> dict:
    # A relative href (no leading slash) survives a sub-path deployment: the UI sets <base href>.
    # url_route opens the page inside the UI (an iframe at plugin/<url_route>), which sends the login cookie.
    return {"name": name, "href": f"crm/{path}", "destination": "nav", "category": "CRM", "url_route": f"crm-{path}"}


RUNS_SHOWN = 10


def airflow_runs() -> dict:
    """For the overview, from Airflow's metadata database through the api-server's own session: the next
    scheduled runs of the campaign DAGs (unpaused, in the order they come) and the CRM DAGs' latest failed
    runs, each with what the UI's link to it needs."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    def iso(t):
        return t.isoformat(timespec="minutes") if t else None

    d, r = DagModel, DagRun
    with create_session() as session:
        upcoming = session.execute(
            select(d.dag_id, d.next_dagrun_create_after, d.next_dagrun)
            .where(d.dag_id.startswith("crm_campaign_", autoescape=True), d.dag_id != "crm_campaign_errors",
                   d.is_paused.is_(False), d.is_stale.is_(False), d.next_dagrun_create_after.is_not(None))
            .order_by(d.next_dagrun_create_after, d.dag_id).limit(RUNS_SHOWN)).all()
        failed = session.execute(
            select(r.dag_id, r.run_id, r.run_after, r.end_date)
            .where(r.dag_id.startswith("crm_", autoescape=True), r.state == DagRunState.FAILED)
            .order_by(r.run_after.desc(), r.id.desc()).limit(RUNS_SHOWN)).all()
    return {"next": [{"dag_id": i, "runs_after": iso(after), "logical_date": iso(logical)}
                     for i, after, logical in upcoming],
            "failed": [{"dag_id": i, "run_id": run, "run_after": iso(after), "end_date": iso(end)}
                       for i, run, after, end in failed]}


class CrmPlugin(AirflowPlugin):
    name = "crm"
    external_views: ClassVar[list[dict]] = [
        _view("Overview", "overview"),
        _view("Segments", "segments"),
        _view("Sales", "sales"),
        _view("Campaigns", "campaigns"),
        _view("Customers", "customers"),
        _view("Data quality", "data-quality"),
    ]
    listeners: ClassVar[list] = [pools]

    @property
    def fastapi_apps(self) -> list[dict]:
        # Airflow reads this from the plugin's instance, in the api-server only (see crm_app).
        return [{"app": crm_app(), "url_prefix": "/crm", "name": "CRM"}]
