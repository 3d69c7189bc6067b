"""The CRM engine's library: plain Python, importable and tested without Airflow.

One room per stage, in the order data flows: ``ingest`` → ``segments`` → ``campaigns`` →
``messages`` → ``delivery`` → ``cleanup``. Shared by all of them: ``settings``,
``contracts``, ``errors``, ``clock`` and the ``store``. The Airflow adapter is ``airflow``
(only the DAGs import it); the ``crm`` command is ``cli``.
"""
