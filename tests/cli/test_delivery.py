"""crm campaign run / status and crm smtp-sink, against real SMTP servers and a real database."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from email import policy
from email.parser import BytesParser

from click.testing import CliRunner
from sqlalchemy import func, select

from crm_tasks.cli import main
from crm_tasks.settings import settings
from crm_tasks.store.models import CampaignRun
from tests.factories import add_customers
from tests.helpers import born_on, lenient_campaigns, recent_day
from tests.smtp_servers import SmtpServer, free_port


def test_run_plans_delivers_and_prints_the_ledger_then_status_shows_it(use_settings, engine, monkeypatch, tmp_path):
    day = recent_day()
    monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(lenient_campaigns(tmp_path / "campaigns")))
    add_customers(engine, {"customer_id": "C1", "birthday": born_on(day)},
                  {"customer_id": "C2", "birthday": born_on(day), "email": "perm550@example.com"},
                  {"customer_id": "C3", "birthday": born_on(day), "email_consent": False})
    with SmtpServer() as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        settings.cache_clear()
        out = CliRunner().invoke(main, ["campaign", "run", "birthday", "--as-of", str(day), "--json"])
        assert out.exit_code == 0, out.output
        payload = json.loads(out.stdout)
        assert payload["plan"]["reasons"] == {"no_consent": 1}
        sent, failed = payload["delivery"]["sent"], payload["delivery"]["failed"]
        # The birthday campaign holds out 5% by hash: whoever is left is either sent or refused.
        assert payload["delivery"]["states"] == {k: v for k, v in {"failed": failed, "sent": sent}.items() if v}
        assert len(srv.handler.messages) == sent
    status = CliRunner().invoke(main, ["campaign", "status", "birthday", "--as-of", str(day)])
    assert status.exit_code == 0, status.output
    assert f"run {payload['plan']['run_id']}" in status.output
    if failed:
        assert "failed x1: 550 5.1.1 <address>: no such user" in status.output
    missing = CliRunner().invoke(main, ["campaign", "status", "birthday", "--as-of", str(day + timedelta(days=1))])
    assert missing.exit_code == 1 and "no recorded run" in missing.output
    assert f"its latest is for {day}" in missing.output
    latest = CliRunner().invoke(main, ["campaign", "status", "birthday", "--json"])  # no date: the latest run's
    assert latest.exit_code == 0 and json.loads(latest.stdout)["as_of"] == str(day)
    # A name that is no campaign gets the message every command gives, not advice to run it.
    nosuch = CliRunner().invoke(main, ["campaign", "status", "birthdy"])
    assert nosuch.exit_code == 1 and "no campaign 'birthdy'" in nosuch.output and "Did you mean 'birthday'" in nosuch.output
    assert "crm campaign run birthdy" not in nosuch.output
    never = CliRunner().invoke(main, ["campaign", "status", "thank_you"])
    assert never.exit_code == 1 and "no recorded run yet" in never.output


def test_run_without_an_smtp_server_fails_before_planning(use_settings, engine, monkeypatch):
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    monkeypatch.delenv("CRM_SMTP_URL", raising=False)
    settings.cache_clear()
    out = CliRunner().invoke(main, ["campaign", "run", "birthday", "--as-of", "2026-05-10"])
    assert out.exit_code == 1 and "no SMTP server is configured" in out.output
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CampaignRun)).scalar() == 0


def test_smtp_sink_stores_each_message_as_an_eml_file(tmp_path):
    import smtplib

    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "crm_tasks.cli", "smtp-sink", "--port", str(port),
                             "--dir", str(tmp_path / "mail")], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@example.com", ["b@example.com"], "Subject: =?utf-8?b?4LC44LGA4LCk?=\r\n\r\nhello\r\n")
    finally:
        sink.terminate()
        sink.wait()
    [eml] = list((tmp_path / "mail").glob("*.eml"))
    assert BytesParser(policy=policy.default).parsebytes(eml.read_bytes())["subject"] == "సీత"
