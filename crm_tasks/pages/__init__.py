"""The CRM's own pages inside the Airflow UI (issue 18): server-rendered HTML under ``/crm``, behind
Airflow's login.

- ``data``: what each page shows, built from the same library result objects as ``crm report ... --json``;
- ``charts``: small SVG charts (pure Python, every label escaped), readable without JavaScript or network;
- ``routes``: the thin FastAPI routes that render ``templates/`` with Jinja2 (autoescaped);
- ``app``: the plugin's single ``/crm`` app, public endpoints and protected pages together;
- ``access``: who may open what (roles), the audit of customer records, and the CSRF checks of the forms;
- ``customers``: the customer search and one customer's record.

No module here imports Airflow (tests/test_layout.py): the plugin passes Airflow's own login dependency,
``requires_authenticated()``, and a dependency naming the user and their roles, to ``app.create_crm_app``.
"""
