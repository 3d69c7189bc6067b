"""The README's picture of the CRM overview inside Airflow's UI, from the demo's database (`make demo` first).

    make screenshot        # writes docs/overview.png

Starts `airflow api-server` on a free port with `make airflow`'s home, dags and plugins, logs in through
Airflow's own form with the simple auth manager's generated admin password, opens the overview from the
CRM menu's in-app route and saves it; headless Chromium from Debian's package, as the browser test uses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / "var" / "airflow"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    if not (ROOT / "var" / "crm.db").exists():
        sys.exit("var/crm.db does not exist: run `make demo` first")
    port = _free_port()
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {**os.environ, "AIRFLOW_HOME": str(HOME), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    log = HOME / "screenshot-api-server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([airflow, "api-server", "--port", str(port), "--host", "127.0.0.1"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"the api-server did not start in 120 s; see {log}")
            time.sleep(1)
        password = json.loads((HOME / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=30_000)
            page.goto(f"{base}/plugin/crm-overview")
            page.frame_locator("iframe").locator("h1").wait_for(timeout=60_000)
            page.wait_for_timeout(1_000)  # the frame's fonts and charts settle
            target = ROOT / "docs" / "overview.png"
            page.screenshot(path=str(target))
            browser.close()
        print(f"wrote {target.relative_to(ROOT)}")
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)


if __name__ == "__main__":
    main()
