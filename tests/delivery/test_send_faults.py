"""At most once under the faults that matter: a sender killed with SIGKILL mid-batch and then
retried, two senders of the same campaign at once, and a re-run of the same date."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime

from sqlalchemy import select

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery.ledger import FINAL
from crm_tasks.delivery.send import deliver
from crm_tasks.store.models import Message
from tests.conftest import REPO
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)
SENT_AT = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata: inside the window, on the day

SENDER = """
import sys
from crm_tasks.settings import settings
from crm_tasks.store.engine import make_engine
from crm_tasks.delivery.send import deliver
from datetime import UTC, datetime
from crm_tasks.clock import running_from
SENT_AT = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)
cfg = settings()
deliver(make_engine(cfg.resolved_database_url()), cfg, "birthday", int(sys.argv[1]), clock=running_from(SENT_AT))
"""


def people(engine, n: int, prefix: str = "slow") -> None:
    add_customers(engine, *[{"customer_id": f"C{i:04d}", "email": f"{prefix}{i}@example.com",
                             "birthday": date(1990, 5, 10)} for i in range(n)])


def ledger(engine):
    with engine.connect() as conn:
        return conn.execute(select(Message.idempotency_key, Message.state, Message.message_id,
                                   Message.last_error)).all()


def received_ids(srv) -> Counter:
    return Counter(m["message-id"] for m in srv.handler.parsed())


def test_a_sender_killed_mid_batch_then_retried_delivers_each_message_at_most_once(engine, cfg, db_url):
    n = 120
    people(engine, n)
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    with SmtpServer(slow_seconds=0.03) as srv:
        env = {**os.environ, "CRM_DATABASE_URL": db_url, "CRM_SMTP_URL": srv.url, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", SENDER, str(plan.run_id)], env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while len(srv.handler.messages) < 25 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = ledger(engine)
        states = Counter(r.state for r in before)
        assert states["sent"] < n and (states["sending"] or states["claimed"] or states["planned"])
        # The retry (a new process in Airflow; here this one) takes over the dead sender's claims.
        result = deliver(engine, cfg.model_copy(update={"smtp_url": srv.url}), "birthday", plan.run_id,
                         clock=running_from(SENT_AT))
        got = received_ids(srv)
    after = ledger(engine)
    assert len(after) == n and all(r.state in FINAL for r in after)
    assert max(got.values()) == 1, "a message arrived twice"
    sent = {r.message_id for r in after if r.state == "sent"}
    unknown = [r for r in after if r.state == "unknown"]
    assert sent <= set(got)
    # What arrived but is not recorded as sent was in flight when the sender died: unknown, never resent.
    assert set(got) - sent <= {r.message_id for r in unknown} | {None}
    assert len(unknown) == states["sending"] <= 2 * cfg.delivery.checkpoint  # two checkpoints in flight at most
    assert all("sender stopped" in r.last_error for r in unknown)
    assert result.sent + len(unknown) == n - states["sent"]


def test_two_senders_of_the_same_campaign_at_once_never_send_a_message_twice(engine, cfg):
    n = 80
    people(engine, n)
    plan = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0)
    with SmtpServer(slow_seconds=0.01) as srv:
        c = cfg.model_copy(update={"smtp_url": srv.url,
                                   "delivery": cfg.delivery.model_copy(update={"checkpoint": 5})})
        results, errors = [], []

        def run():
            try:
                results.append(deliver(engine, c, "birthday", plan.run_id, clock=running_from(SENT_AT)))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        got = received_ids(srv)
    assert errors == []
    assert len(got) == n and max(got.values()) == 1
    assert sum(r.sent for r in results) == n
    assert {r.state for r in ledger(engine)} == {"sent"}


def test_re_running_the_same_date_after_delivery_sends_nothing_again(engine, cfg):
    people(engine, 6, prefix="ok")
    c = campaign()
    with SmtpServer() as srv:
        cfg = cfg.model_copy(update={"smtp_url": srv.url})
        first = plan_campaign(engine, cfg, c, AS_OF, RUN_AT, sample=0)
        assert deliver(engine, cfg, c.name, first.run_id, clock=running_from(SENT_AT)).sent == 6
        again = plan_campaign(engine, cfg, c, AS_OF, RUN_AT, sample=0)
        assert again.recipients == 0 and again.reasons == {"already_sent": 6}
        assert deliver(engine, cfg, c.name, again.run_id, clock=running_from(SENT_AT)).sent == 0
        assert len(srv.handler.messages) == 6
    # The first run, whose messages went out, is kept (replaced) so that its ledger stays visible.
    from crm_tasks.delivery.send import campaign_status

    runs = campaign_status(engine, cfg, c.name, AS_OF)["runs"]
    assert [(r["run_id"], r["status"], r["states"]) for r in runs] == [
        (first.run_id, "replaced", {"sent": 6}), (again.run_id, "planned", {})]
