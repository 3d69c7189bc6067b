"""The Airflow adapter: the only code in crm_tasks that imports Airflow, reads a task
context or an Airflow connection. Only ``dags/`` (and the plugin) import it; everything
else in crm_tasks imports and is tested without Airflow installed.

- ``defaults``: what every DAG shares: retries, the fail-at-once policy, the assets between DAGs.
- ``connections``: the CRM database and the SMTP server as Airflow connections.
- ``tasks``: one function per DAG task, reading the run's context and calling the library.
- ``pools``: the plugin's listener that creates the send pool crm.yaml names, when a scheduler starts.
"""
