"""The package's layout keeps its promises: the library imports without Airflow, only the DAGs
(and the plugin) reach the Airflow adapter, and every retry policy names error classes."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap

import crm_tasks
from tests.conftest import REPO

ADAPTER = "crm_tasks.airflow"


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(crm_tasks.__path__, "crm_tasks.")
                  if ".migrations" not in m.name and m.name != "crm_tasks.cli.__main__")


def _imports(path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_library_module_imports_without_airflow():
    library = [m for m in _modules() if not m.startswith(ADAPTER)]
    assert len(library) > 30  # the walk found the subpackages, not an empty namespace
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class NoAirflow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ImportError(f"{{name}} is made unimportable by this test")

        sys.meta_path.insert(0, NoAirflow())
        for name in {library!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
        assert not leaked, leaked
        print(len({library!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(library))


def test_only_dags_and_the_plugin_import_the_airflow_adapter():
    library = [p for p in (REPO / "crm_tasks").rglob("*.py") if "airflow" not in p.relative_to(REPO).parts[1:2]]
    offenders = [str(p.relative_to(REPO)) for p in library
                 if any(m == ADAPTER or m.startswith(ADAPTER + ".") for m in _imports(p))]
    assert offenders == []
    # ...and nothing outside the adapter imports Airflow itself, even inside a function.
    airflow_users = [str(p.relative_to(REPO)) for p in library
                     if any(m == "airflow" or m.startswith("airflow.") for m in _imports(p))]
    assert airflow_users == []


def test_dag_files_reach_the_library_only_through_tasks_of_the_adapter():
    for path in sorted((REPO / "dags").glob("*.py")):
        reached = {m for m in _imports(path) if m.startswith("crm_tasks.")}
        # At parse time a DAG may read settings, campaign definitions (the factory) and error
        # classes for its retry policy; everything a task does goes through the adapter.
        allowed = ("crm_tasks.airflow", "crm_tasks.settings", "crm_tasks.errors",
                   "crm_tasks.campaigns.definitions")
        stray = sorted(m for m in reached if not m.startswith(allowed))
        assert stray == [], f"{path.name} reaches {stray} directly"


def test_retry_policies_name_error_classes_not_strings():
    from airflow.dag_processing.dagbag import DagBag

    from crm_tasks.errors import CrmError

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    for dag_id, dag in bag.dags.items():
        policy = dag.default_args["retry_policy"]
        specs = [s for rule in policy.rules
                 for s in (rule.exception if isinstance(rule.exception, list) else [rule.exception])]
        assert specs, dag_id
        assert all(isinstance(s, type) and issubclass(s, CrmError) for s in specs), (dag_id, specs)


def test_every_domain_error_lives_in_errors():
    from crm_tasks import errors

    defined_elsewhere = []
    for name in _modules():
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        for attr, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, errors.CrmError)
                    and value.__module__ != "crm_tasks.errors"):
                defined_elsewhere.append(f"{name}.{attr}")
    assert defined_elsewhere == []


def test_the_web_app_starts_without_pandas_or_arrow():
    # Every Airflow process loads the plugin, hence this app; the analytics and ingest modules load pandas and
    # Arrow (about half a second) where a page or a task needs them, not at each process start.
    script = ("import sys, crm_tasks.pages.app; "
              "print(sorted(m for m in ('pandas', 'pyarrow', 'lifetimes', 'statsmodels') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
