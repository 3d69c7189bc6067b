"""crm_tasks: the CRM engine's library. Plain Python; the DAGs in dags/ wrap it, the crm command calls it."""
