"""Real Airflow processes for the end-to-end tests: a fresh AIRFLOW_HOME on free ports with this repository's
dags/ and plugins/, a REST client with a token, waiting with the servers' logs on failure, and a stop that
ends every process the test started (also when it fails).

Two shapes: ``airflow standalone`` (LocalExecutor: scheduler, dag-processor, triggerer and api-server in one
process group) or the separate components a deployment runs (api-server, scheduler, dag-processor,
triggerer and Celery workers), each in its own process group with its own log.

The tests that use a stack go to whichever xdist worker is free, like any other test, and two may run at once:
they share no port (every server, the log servers included, listens on a free one), no home, no database and
no Celery queue. Kept on one worker, one after another, they made a chain of over four minutes in a suite that
is bound by its two cores anyway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.smtp_servers import free_port

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# Seconds between two looks at what a test waits for (a DAG run's state, the api-server's health): each wait
# ends on average half of it after the thing happened. Not less: each look costs the api-server a request,
# and the suite is bound by its two cores.
POLL = 0.5


def write_config(folder: Path, **delivery) -> Path:
    """The repository's crm.yaml with ``delivery`` settings changed, written into ``folder``."""
    config = yaml.safe_load((REPO / "crm.yaml").read_text(encoding="utf-8"))
    config["delivery"].update(delivery)
    path = folder / "crm.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def airflow_env(home: Path, port: int, metadata_url: str, crm: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of every Airflow process of one test: its own home, metadata database and ports."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The DAG files do not change during a test: parse each once, and leave the two cores to the tasks.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # LocalExecutor forks all of `parallelism` workers when it starts (32 by default); a test runs a few
        # tasks at a time on two cores.
        "AIRFLOW__CORE__PARALLELISM": "8",
        # The log servers of the scheduler and the triggerer on free ports, not 8793 and 8794: no clash with
        # another Airflow on the machine.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **crm,
        **extra,
    }


def _tail(logs: list[Path], lines: int = 30) -> str:
    parts = []
    for log in logs:
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
        parts.append(f"--- {log.name}:\n" + "\n".join(text))
    return "\n".join(parts)


class Stack:
    """The processes of one test, each in its own process group so that its children stop with it."""

    def __init__(self, folder: Path, env: dict[str, str], port: int) -> None:
        self.folder, self.env, self.port = folder, env, port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs: list[Path] = []

    def start(self, name: str, *args: str, **env: str) -> None:
        log = self.folder / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen([AIRFLOW, *args], env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))

    def run(self, name: str, *args: str, timeout: float = 180) -> None:
        """A one-off command (``airflow db migrate``) that must succeed."""
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            done = subprocess.run([AIRFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        if done.returncode:
            pytest.fail(f"airflow {' '.join(args)} exited with {done.returncode}:\n{_tail([log])}")

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL whatever is still there after 30 s."""
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children a component left behind (task runners)
            except ProcessLookupError:
                pass

    def wait(self, what: str, check: Callable, timeout: float):
        """Poll ``check`` until it returns something truthy; fail with the logs' tails (and sooner if a
        process died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = check()
            except httpx.HTTPError:
                found = None
            if found:
                return found
            dead = [name for name, proc in self.procs if proc.poll() is not None]
            if dead:
                pytest.fail(f"{', '.join(dead)} exited while waiting for {what}:\n{_tail(self.logs)}")
            time.sleep(POLL)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; the Airflow logs said:\n{_tail(self.logs)}")

    def client(self, home: Path) -> httpx.Client:
        """A REST client for /api/v2 with the admin's token (the simple auth manager's generated password)."""
        self.wait("the api-server", lambda: httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).is_success,
                  180)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        self.wait("the admin password", passwords.exists, 60)
        password = json.loads(passwords.read_text())["admin"]
        token = httpx.post(f"{self.base}/auth/token", json={"username": "admin", "password": password},
                           timeout=10).json()["access_token"]
        return httpx.Client(base_url=f"{self.base}/api/v2", headers={"Authorization": f"Bearer {token}"},
                            timeout=10)


@contextmanager
def stack(folder: Path, metadata_url: str | None, crm: dict[str, str], **extra: str) -> Iterator[tuple[Stack, Path]]:
    """A Stack on a fresh AIRFLOW_HOME in ``folder`` (SQLite metadata there unless ``metadata_url``);
    every process it started is stopped on the way out, whatever happened."""
    home = folder / "airflow"
    home.mkdir()
    port = free_port()
    url = metadata_url or f"sqlite:///{home / 'airflow.db'}"
    procs = Stack(folder, airflow_env(home, port, url, crm, **extra), port)
    try:
        yield procs, home
    finally:
        procs.stop()


def dag_run_state(client: httpx.Client, dag_id: str, run_id: str) -> str | None:
    """The run's final state, None while it is still going."""
    state = client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    return state if state in ("success", "failed") else None
