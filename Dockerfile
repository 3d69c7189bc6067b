# The CRM campaign engine on Apache Airflow: the official image, extended as Airflow's docs advise
# (https://airflow.apache.org/docs/docker-stack/build.html), with the `crm_tasks` package installed and
# the DAGs, the plugin and the CRM's definitions copied in. Nothing secret is in it: docker-compose.yml
# passes every password and key from .env at run time.
#
# The base image's Airflow and Python must match pyproject.toml (apache-airflow>=3.3,<3.4; Python 3.11)
# and the Airflow the test suite runs against; tests/deploy/test_compose.py checks both.
FROM apache/airflow:3.3.2-python3.11

# crm_tasks is installed into site-packages, away from crm.yaml and the definition folders, so its
# settings are told where they are (crm_tasks/settings.py reads these variables).
ENV CRM_CONFIG=/opt/airflow/crm/crm.yaml \
    CRM_CAMPAIGNS_DIR=/opt/airflow/crm/campaigns \
    CRM_SEGMENTS_DIR=/opt/airflow/crm/segments \
    CRM_TEMPLATES_DIR=/opt/airflow/crm/templates/email \
    CRM_LANDING_DIR=/opt/airflow/crm/landing \
    CRM_PREVIEW_DIR=/opt/airflow/crm/preview

# The package with its runtime dependencies. Naming apache-airflow at the image's own version
# (AIRFLOW_VERSION is set by the base image) keeps pip from upgrading or downgrading Airflow; the
# celery extra is the CeleryExecutor's provider. `pip check` fails the build on a conflict.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/crm-src/
COPY --chown=airflow:0 crm_tasks /tmp/crm-src/crm_tasks
RUN pip install --no-cache-dir "apache-airflow[celery]==${AIRFLOW_VERSION}" "/tmp/crm-src[celery]" \
 && pip check \
 && rm -rf /tmp/crm-src

# What the DAGs and the plugin read at run time. dags/ and plugins/ go where the image's Airflow looks.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 crm.yaml /opt/airflow/crm/crm.yaml
COPY --chown=airflow:0 campaigns /opt/airflow/crm/campaigns
COPY --chown=airflow:0 segments /opt/airflow/crm/segments
COPY --chown=airflow:0 templates /opt/airflow/crm/templates
RUN mkdir -p /opt/airflow/crm/landing
