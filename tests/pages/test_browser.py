"""The overview in a real browser: a real ``airflow api-server`` with this repository's plugin, headless
Chromium (Debian's package, driven by Playwright), logged in through Airflow's own login form. The test
checks a number on the page against the library, opens every page from the menu, finds a customer through
the search form, and keeps screenshots as artefacts in its tmp dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from crm_tasks.analytics.kpis import lifecycle_kpis
from tests.pages import scenario
from tests.smtp_servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _wait(what: str, check, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else "(no log)"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; the api-server said:\n{tail}")


@pytest.fixture
def api_server(airflow_db, airflow_token, tmp_path, db_url):
    """``airflow api-server`` on a free port over the session's migrated metadata database (its simple auth
    manager's admin password already generated), reading this test's CRM database."""
    port = free_port()
    env = {**os.environ, "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "CRM_DATABASE_URL": db_url, "CRM_LANDING_DIR": str(tmp_path / "landing"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "api-server", "--port", str(port),
                                 "--host", "127.0.0.1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait("the api-server", lambda: httpx.get(f"{base}/api/v2/monitor/health", timeout=2).is_success, 90, log)
        passwords = json.loads((airflow_db / "simple_auth_manager_passwords.json.generated").read_text())
        yield base, passwords["admin"], log
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(3)  # a graceful stop takes several seconds more, for nothing this test needs
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                    reason="Debian's chromium package is not installed (.ci/run installs it)")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_logged_in_admin_reads_the_overview_in_chromium(api_server, engine, cfg, tmp_path):
    from playwright.sync_api import sync_playwright

    scenario.ingest(engine, cfg)
    scenario.nightly(engine, cfg)
    base, password, _ = api_server
    active = lifecycle_kpis(engine, cfg, scenario.AS_OF, months=1)[-1].stages["active"]
    assert active

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Without a login the page is refused, in the browser too.
            assert page.goto(f"{base}/crm/overview").status == 401
            # Airflow's own login form sets the UI's cookie.
            page.goto(f"{base}/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=30_000)
            assert any(c["name"] == "_token" for c in page.context.cookies())

            response = page.goto(f"{base}/crm/overview")
            assert response.status == 200
            shown = page.locator('[data-key="stage:active"]').inner_text()
            assert int(shown.replace(",", "")) == active
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            # Every other page through the pages' own menu: it opens, and is kept as a screenshot.
            for link in page.locator("nav.crm a").all()[1:]:
                name = link.get_attribute("href")
                link.click()
                page.wait_for_url(f"**/crm/{name}")
                assert page.locator("h1").inner_text()
                page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            # The customer search is a form POST: the address never reaches a URL; the result opens the
            # record under its opaque id (the admin may: Admin role).
            page.goto(f"{base}/crm/customers")
            page.get_by_label("Customer id, e-mail or phone").fill("c1@example.com")
            page.get_by_role("button", name="Find").click()
            page.get_by_role("link", name="C1", exact=True).click()
            page.wait_for_url("**/crm/customers/C1")
            assert "@" not in page.url and page.locator("h1").inner_text() == "Customer C1"
            page.screenshot(path=str(tmp_path / "customer.png"), full_page=True)
            # Inside the UI: the menu entry's in-app route frames the page.
            page.goto(f"{base}/plugin/crm-overview")
            frame = page.frame_locator("iframe")
            assert int(frame.locator('[data-key="stage:active"]').inner_text(timeout=30_000)
                       .replace(",", "")) == active
            page.screenshot(path=str(tmp_path / "overview-in-airflow.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "overview.png").stat().st_size > 10_000
