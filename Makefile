PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ROOT := $(abspath .)
AIRFLOW_ENV := PATH=$(ROOT)/$(BIN):$$PATH AIRFLOW_HOME=$(ROOT)/var/airflow AIRFLOW__CORE__DAGS_FOLDER=$(ROOT)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(ROOT)/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False

.PHONY: install demo test airflow screenshot bench clean

## install: create .venv and install the project with its test dependencies
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,celery]"
	touch $@

## demo: install, migrate, generate a year of data and load it through the crm_ingest DAG
demo: install
	./scripts/demo.sh

## test: the whole test suite, on SQLite and on PostgreSQL (127.0.0.1:5432, database test)
test: install
	$(BIN)/pytest -q --numprocesses=auto --maxprocesses=4 --dist loadgroup

## screenshot: docs/overview.png, the CRM overview inside Airflow's UI on the demo's data (after make demo)
screenshot: install
	$(BIN)/python scripts/screenshot.py

## airflow: airflow standalone with this repo's dags/ and plugins/ on http://localhost:8080
airflow: install
	@mkdir -p var/airflow
	@echo "Airflow UI: http://localhost:8080  user: admin  password: see var/airflow/simple_auth_manager_passwords.json.generated"
	@$(AIRFLOW_ENV) $(BIN)/airflow db migrate > var/airflow/db-migrate.log 2>&1
	$(AIRFLOW_ENV) $(BIN)/airflow standalone

## bench: ingest benchmark (1M customers, 10M purchases) on SQLite and PostgreSQL
bench: install
	$(BIN)/python bench/bench_ingest.py

clean:
	rm -rf var/crm.db* var/landing var/airflow var/log
