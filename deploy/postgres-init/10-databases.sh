#!/usr/bin/env bash
# One PostgreSQL server, two databases with their own logins:
#   airflow  Airflow's metadata (and the Celery result backend), login `airflow`
#   crm      the CRM's data (customers, purchases, segments, campaigns, the send ledger), login `crm`
# so that neither application can read or change the other's tables.
#
# The postgres image runs this once, on the first start with an empty data volume
# (/docker-entrypoint-initdb.d). Changing a password in .env later does not change it here:
#   docker compose exec postgres psql -U postgres -c "ALTER ROLE crm PASSWORD '...'"
# The passwords come from the environment (docker-compose.yml passes them from .env) and reach SQL
# as psql variables (:'name' quotes them), so no character in them can break the statement.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${CRM_DB_PASSWORD:?CRM_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" -v crm_password="$CRM_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

CREATE ROLE crm LOGIN PASSWORD :'crm_password';
CREATE DATABASE crm OWNER crm;
REVOKE ALL ON DATABASE crm FROM PUBLIC;
SQL
