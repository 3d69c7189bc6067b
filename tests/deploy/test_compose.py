"""The Docker Compose deployment holds together without a Docker engine: docker-compose.yml is valid
Compose, its services wait only for services that exist and can report health, every variable it reads
is defaulted or documented in .env.example, the CRM gets every setting it needs, the image matches the
Airflow and Python the project is built for, and no secret is written in the files.

Each check is a function that returns its problems; each test runs it on the real files and, where that
is cheap, on a broken copy too, to prove the check can fail."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from crm_tasks import settings as crm_settings
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
POSTGRES_INIT = REPO / "deploy" / "postgres-init"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

SERVICES = {"postgres", "redis", "mailpit", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}
# The CRM settings a deployment cannot do without: crm_tasks would otherwise look for crm.yaml and the
# definition folders beside the installed package, use a SQLite file in the container, send nowhere
# and link e-mails to crm.example.com.
CRM_NEEDED = {"CRM_CONFIG", "CRM_DATABASE_URL", "CRM_LANDING_DIR", "CRM_SMTP_URL", "CRM_UNSUBSCRIBE_URL",
              "CRM_CAMPAIGNS_DIR", "CRM_SEGMENTS_DIR", "CRM_TEMPLATES_DIR"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|(^|_)KEYS?$|PRIVATE")


# --- reading the files ------------------------------------------------------------------------------


def load_compose(text: str) -> dict:
    """The compose document with its YAML anchors and `<<:` merges resolved."""
    return yaml.safe_load(text)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def crm_image_services(compose: dict) -> dict[str, dict]:
    """The services running this repository's image (x-airflow-common builds it)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def strings(node) -> list[str]:
    """Every string in a YAML document (keys and values): what Compose interpolates, comments excluded."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


# `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`; `$${...}` is a literal $.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?")
BARE_VARIABLE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(compose: dict) -> dict[str, bool]:
    """Each variable the compose file reads from the environment or .env: True where the file gives it a
    default (`:-`, `-`) at every use."""
    found: dict[str, bool] = {}
    for s in strings(compose):
        for name, op in VARIABLE.findall(s):
            found[name] = found.get(name, True) and op in (":-", "-")
    return found


def env_example(text: str) -> dict[str, str]:
    """The variables .env.example sets (uncommented NAME=value lines), with their values."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def dockerfile_env(text: str) -> dict[str, str]:
    """The ENV the Dockerfile sets (ENV K=V [K=V ...], with line continuations)."""
    found = {}
    for instruction in _instructions(text):
        if instruction.upper().startswith("ENV "):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", instruction[4:]):
                found[key] = value.strip('"')
    return found


def _instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def crm_env_vars() -> set[str]:
    """Every CRM_* variable crm_tasks/settings.py reads."""
    return {*crm_settings._ENV, *crm_settings._SEGMENT_ENV, *crm_settings._CAMPAIGN_ENV, "CRM_CONFIG"}


# --- the checks --------------------------------------------------------------------------------------


def schema_errors(path: Path) -> str | None:
    """check-jsonschema's verdict against the Compose specification (vendored in check-jsonschema, so no
    network is needed: the proxies below point nowhere); None when valid."""
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return None if done.returncode == 0 else done.stdout + done.stderr


def dependency_problems(compose: dict) -> list[str]:
    services = compose["services"]
    problems = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            condition = (spec or {}).get("condition", "service_started")
            if dep not in services:
                problems.append(f"{name} depends on {dep}, which is not a service")
                continue
            target = services[dep]
            if condition == "service_healthy" and (not target.get("healthcheck")
                                                   or target["healthcheck"].get("disable")):
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully" and target.get("restart") in ("always", "unless-stopped"):
                problems.append(f"{name} waits for {dep} to complete, but {dep} is restarted forever")
    return problems


def variable_problems(compose: dict, example: dict[str, str]) -> list[str]:
    problems = [f"${{{name}}} has no default in docker-compose.yml and is not in .env.example"
                for name, defaulted in sorted(compose_variables(compose).items())
                if not defaulted and name not in example]
    problems += [f"bare ${name} in docker-compose.yml: write ${{{name}}}, or $${name} for the shell"
                 for s in strings(compose) for name in BARE_VARIABLE.findall(s)]
    return problems


def crm_setting_problems(compose: dict, image_env: dict[str, str], example: dict[str, str]) -> list[str]:
    known = crm_env_vars()
    problems = [f"the CRM reads {var}, but .env.example does not document it" for var in sorted(known - set(example))]
    for name, svc in crm_image_services(compose).items():
        env = {**image_env, **environment(svc)}
        for var in sorted(v for v in env if v.startswith("CRM_") and v not in known):
            problems.append(f"{name} sets {var}, which the CRM does not read (a typo?)")
        for var in sorted(CRM_NEEDED):
            value = env.get(var, "")
            if not value or re.fullmatch(r"\$\{\w+:?-\}", value):
                problems.append(f"{name} does not set {var}, which the deployment needs")
        for var in sorted(known - CRM_NEEDED):
            if var not in env:
                problems.append(f"{name} does not pass {var} through from .env")
        mounts = [m.group(1) for v in svc.get("volumes", []) if (m := re.search(r":(/[^:]*)(:r[ow])?$", str(v)))]
        if env.get("CRM_LANDING_DIR") and env["CRM_LANDING_DIR"] not in mounts:
            problems.append(f"{name}: CRM_LANDING_DIR {env['CRM_LANDING_DIR']} is not a mounted volume")
    return problems


def version_problems(dockerfile: str, pyproject: dict, installed_airflow: str) -> list[str]:
    froms = [ln.split()[1] for ln in _instructions(dockerfile) if ln.upper().startswith("FROM ")]
    if len(froms) != 1:
        return [f"expected one FROM, found {froms}"]
    m = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", froms[0])
    if not m:
        return [f"FROM {froms[0]} is not apache/airflow:<x.y.z>-python<x.y>"]
    airflow, python = m.groups()
    problems = []
    if python + ".0" not in SpecifierSet(pyproject["project"]["requires-python"]):
        problems.append(f"the image's Python {python} is outside requires-python "
                        f"{pyproject['project']['requires-python']}")
    pin = next(Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "apache-airflow")
    if airflow not in pin.specifier:
        problems.append(f"the image's Airflow {airflow} is outside pyproject's {pin}")
    if airflow != installed_airflow:
        problems.append(f"the image's Airflow {airflow} is not the installed {installed_airflow}")
    return problems


# A literal credential in a URL (scheme://user:password@), where the password is not a ${VARIABLE}.
URL_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/\s:@]*:(?!\$\{)[^@\s/]+@")
# A long random-looking token: 32+ characters mixing digits and letters, as keys are.
TOKEN = re.compile(r"(?<![\w/.-])(?=[A-Za-z0-9+/_=-]*\d)(?=[A-Za-z0-9+/_=-]*[A-Za-z])[A-Za-z0-9+/_=-]{32,}")
# The only safe values for a secret-named variable: required (`:?`), or empty unless .env sets it.
SAFE_SECRET = re.compile(r"\$\{\w+(:?\?[^}]*|:?-)\}")


def secret_problems(compose_text: str, dockerfile: str) -> list[str]:
    compose = load_compose(compose_text)
    problems = []
    for name, svc in compose["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and not SAFE_SECRET.fullmatch(value):
                problems.append(f"{name}: {key} must be ${{{key}:?...}} from .env, not {value!r}")
    for where, text in (("docker-compose.yml", "\n".join(strings(compose))), ("Dockerfile", dockerfile)):
        problems += [f"{where}: a password written in the URL {m.group(0)!r}" for m in URL_PASSWORD.finditer(text)]
        problems += [f"{where}: a key-like literal {m.group(0)[:8]}..." for m in TOKEN.finditer(text)]
    for instruction in _instructions(dockerfile):
        words = instruction.split(None, 1)
        if words[0].upper() in ("ENV", "ARG") and SECRET_NAME.search(words[1].split("=")[0].split()[0]):
            problems.append(f"Dockerfile: {instruction[:60]} bakes a secret into the image")
        if words[0].upper() in ("COPY", "ADD") and re.search(r"(^|\s)(\.env\S*|\.)(\s|$)", words[1]):
            problems.append(f"Dockerfile: {instruction} may copy .env into the image")
    return problems


def example_secret_problems(compose: dict, example: dict[str, str]) -> list[str]:
    """.env.example gives no secret a value: a copied .env must fail until each is generated."""
    required = {name for s in strings(compose) for name, op in VARIABLE.findall(s) if op in (":?", "?")}
    return [f".env.example gives {name} a value; leave it empty so that docker compose refuses to start"
            for name, value in sorted(example.items()) if value and (name in required or SECRET_NAME.search(name))]


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return load_compose(compose_text)


@pytest.fixture(scope="module")
def example() -> dict[str, str]:
    return env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_compose_file_is_valid_compose_offline(compose_text, tmp_path):
    assert CHECK_JSONSCHEMA.exists(), "install the [dev] extra: .venv/bin/pip install -e '.[dev]'"
    assert schema_errors(COMPOSE) is None, schema_errors(COMPOSE)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(compose_text.replace("condition: service_completed_successfully",
                                           "condition: service_completed"), encoding="utf-8")
    assert "service_completed" in (schema_errors(broken) or "")


def test_the_services_of_the_official_layout_are_there(compose):
    assert set(compose["services"]) == SERVICES
    assert set(crm_image_services(compose)) == {s for s in SERVICES if s.startswith("airflow-")}
    for name, svc in crm_image_services(compose).items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["CRM_DATABASE_URL"].endswith("@postgres:5432/crm"), name
        if name != "airflow-init":
            assert svc["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}, name
            assert svc.get("healthcheck"), name
    # One JWT secret, Fernet key and API secret key for every component.
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        assert len({environment(svc)[key] for svc in crm_image_services(compose).values()}) == 1, key


def test_workers_scale(compose):
    def problems(compose):
        worker = compose["services"]["airflow-worker"]
        return [key for key in ("container_name", "ports", "hostname") if key in worker]

    assert problems(compose) == []
    broken = load_compose(COMPOSE.read_text(encoding="utf-8"))
    broken["services"]["airflow-worker"]["ports"] = ["8793:8793"]
    assert problems(broken) == ["ports"]


def test_depends_on_names_services_that_can_report_health(compose, compose_text):
    assert dependency_problems(compose) == []
    broken = load_compose(compose_text)
    del broken["services"]["redis"]["healthcheck"]
    broken["services"]["airflow-init"]["restart"] = "always"
    broken["services"]["airflow-scheduler"]["depends_on"]["airflw-init"] = {
        "condition": "service_completed_successfully"}
    problems = dependency_problems(broken)
    assert "airflow-scheduler depends on airflw-init, which is not a service" in problems
    assert "airflow-worker waits for redis to be healthy, but redis has no healthcheck" in problems
    assert "airflow-worker waits for airflow-init to complete, but airflow-init is restarted forever" in problems


def test_every_variable_is_defaulted_or_documented(compose, example, compose_text):
    assert variable_problems(compose, example) == []
    required = {n for n, defaulted in compose_variables(compose).items() if not defaulted}
    assert {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "CRM_DB_PASSWORD", "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD"} <= required
    broken = load_compose(compose_text.replace("${MAILPIT_MAX_MESSAGES:-5000}", "${MAILPIT_MAX_MESSAGES}")
                          .replace("$${HOSTNAME}", "$HOSTNAME"))
    assert variable_problems(broken, {k: v for k, v in example.items() if k != "MAILPIT_MAX_MESSAGES"}) == [
        "${MAILPIT_MAX_MESSAGES} has no default in docker-compose.yml and is not in .env.example",
        *["bare $HOSTNAME in docker-compose.yml: write ${HOSTNAME}, or $$HOSTNAME for the shell"] * 4]


def test_the_crm_gets_every_setting_it_needs(compose, dockerfile, example, compose_text):
    image_env = dockerfile_env(dockerfile)
    assert crm_setting_problems(compose, image_env, example) == []
    broken = load_compose(compose_text.replace("CRM_SMTP_URL: ${CRM_SMTP_URL:-smtp+insecure://mailpit:1025}",
                                               "CRM_SMTP_ULR: ${CRM_SMTP_URL:-}"))
    broken["services"]["airflow-worker"]["volumes"] = ["airflow-logs:/opt/airflow/logs"]
    problems = crm_setting_problems(broken, {k: v for k, v in image_env.items() if k != "CRM_CONFIG"},
                                    {k: v for k, v in example.items() if k != "CRM_CHUNK_ROWS"})
    assert "the CRM reads CRM_CHUNK_ROWS, but .env.example does not document it" in problems
    assert "airflow-worker sets CRM_SMTP_ULR, which the CRM does not read (a typo?)" in problems
    assert "airflow-worker does not set CRM_SMTP_URL, which the deployment needs" in problems
    assert "airflow-worker does not set CRM_CONFIG, which the deployment needs" in problems
    assert "airflow-worker: CRM_LANDING_DIR /opt/airflow/crm/landing is not a mounted volume" in problems
    assert not any(p.startswith("airflow-scheduler: CRM_LANDING_DIR") for p in problems)


def test_the_image_matches_the_project_airflow_and_python(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    installed = importlib.metadata.version("apache-airflow")
    assert version_problems(dockerfile, pyproject, installed) == []
    assert f"apache/airflow:{installed}-python3.11" in dockerfile
    wrong = dockerfile.replace(f"apache/airflow:{installed}-python3.11", "apache/airflow:3.2.1-python3.12")
    assert len(version_problems(wrong, pyproject, installed)) == 3
    assert version_problems(dockerfile.replace(f"{installed}-python3.11", "latest"), pyproject, installed)


def test_no_secret_is_written_in_the_compose_file_or_the_image(compose_text, dockerfile, compose, example):
    assert secret_problems(compose_text, dockerfile) == []
    assert example_secret_problems(compose, example) == []
    leaky_compose = (compose_text
                     .replace("${AIRFLOW__API_AUTH__JWT_SECRET:?set AIRFLOW__API_AUTH__JWT_SECRET in .env (see "
                              ".env.example)}", "${AIRFLOW__API_AUTH__JWT_SECRET:-airflow_jwt_secret}")
                     .replace("redis://:@redis:6379/0", "redis://:hunter2@redis:6379/0")
                     .replace("MP_MAX_MESSAGES: ${MAILPIT_MAX_MESSAGES:-5000}",
                              "MP_API_TOKEN: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
    leaky_dockerfile = dockerfile + "\nENV CRM_SECRET_KEY=abc\nCOPY .env /opt/airflow/.env\n"
    problems = "\n".join(secret_problems(leaky_compose, leaky_dockerfile))
    assert "AIRFLOW__API_AUTH__JWT_SECRET must be" in problems
    assert "redis://:hunter2@" in problems
    assert "MP_API_TOKEN must be" in problems and "key-like literal 9f86d081" in problems
    assert "bakes a secret into the image" in problems and "may copy .env" in problems
    assert example_secret_problems(compose, {**example, "CRM_DB_PASSWORD": "crm"}) == [
        ".env.example gives CRM_DB_PASSWORD a value; leave it empty so that docker compose refuses to start"]


def test_env_stays_out_of_git_and_the_image():
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()
    dockerignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".env", ".git", ".venv", "var/", "bench/data"} <= set(dockerignore)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False)
    assert ignored.returncode == 0


def test_postgres_init_creates_both_databases_with_their_own_logins(compose):
    postgres = compose["services"]["postgres"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    scripts = sorted(POSTGRES_INIT.glob("*.sh"))
    assert scripts and all(os.access(s, os.X_OK) for s in scripts)
    sql = "\n".join(s.read_text(encoding="utf-8") for s in scripts)
    for db in ("airflow", "crm"):
        assert re.search(rf"CREATE ROLE {db} LOGIN PASSWORD :'{db}_password';", sql), db
        assert f"CREATE DATABASE {db} OWNER {db};" in sql, db
        assert f"{db.upper()}_DB_PASSWORD" in environment(postgres), db
    # ...and the URLs log in as those roles.
    env = environment(compose["services"]["airflow-scheduler"])
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert env["CRM_DATABASE_URL"].startswith("postgresql+psycopg://crm:")
    for script in scripts:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, syntax.stderr
    broken = subprocess.run(["bash", "-n"], input="if true; then\n  psql\n", capture_output=True, text=True,
                            check=False)
    assert broken.returncode != 0


def test_the_image_layout_runs_the_crm_away_from_the_repository(dockerfile, tmp_path):
    """Rebuild the image's file layout from the Dockerfile's COPY and ENV lines under a temporary root,
    with crm_tasks importable from outside the repository (as from site-packages): the settings find
    crm.yaml and every campaign, the DAGs parse and the plugin registers /crm."""
    root = tmp_path / "image"
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "crm_tasks", site / "crm_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for instruction in _instructions(dockerfile):
        words = instruction.split()
        if words[0].upper() == "COPY":
            *sources, dest = [w for w in words[1:] if not w.startswith("--")]
            if dest.startswith("/tmp/"):
                continue  # the package's build context
            for source in sources:
                target = root / dest.lstrip("/")
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
    env = {k: str(root / v.lstrip("/")) for k, v in dockerfile_env(dockerfile).items() if k.startswith("CRM_")}
    env |= {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(root / "opt/airflow/dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "opt/airflow/plugins")}
    script = textwrap.dedent(f"""
        import crm_tasks
        assert crm_tasks.__file__.startswith({str(site)!r}), crm_tasks.__file__
        from crm_tasks.settings import settings
        from crm_tasks.campaigns.definitions import load_campaigns
        campaigns, problems = load_campaigns(settings())
        assert not problems, problems
        assert sorted(c.name for c in campaigns) == {sorted(p.stem for p in (REPO / "campaigns").glob("*.yaml"))!r}
        assert str(settings().segments.folder).startswith({str(root)!r})
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(root / "opt/airflow/dags")!r})
        assert bag.import_errors == {{}}, bag.import_errors
        assert {{"crm_ingest", "crm_segments", "crm_cleanup", "crm_bounces"}} <= set(bag.dags), sorted(bag.dags)
        from airflow import plugins_manager
        apps, _ = plugins_manager.get_fastapi_plugins()
        assert [a["url_prefix"] for a in apps] == ["/crm"], apps
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_the_documented_secret_generator_fills_every_required_secret(compose, tmp_path):
    """docs/deployment.md's snippet, run on a copy of .env.example, leaves no required variable empty."""
    docs = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    snippet = re.search(r"python3 - <<'EOF'\n(.*?)\nEOF\n", docs, re.DOTALL).group(1)
    required = {name for s in strings(compose) for name, op in VARIABLE.findall(s) if op in (":?", "?")}

    def empty_after(example_text: str) -> set[str]:
        (tmp_path / ".env").write_text(example_text, encoding="utf-8")
        done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        filled = env_example((tmp_path / ".env").read_text(encoding="utf-8"))
        return {name for name in required if not filled.get(name)}

    assert empty_after(ENV_EXAMPLE.read_text(encoding="utf-8")) == set()
    assert empty_after(ENV_EXAMPLE.read_text(encoding="utf-8").replace("CRM_DB_PASSWORD=", "CRM_DB_PASSWD=")) == {
        "CRM_DB_PASSWORD"}
