"""The ledger's state machine: only legal transitions, atomic claims, and the takeover of dead or
silent senders (never of a live one that renews its claims), on this host and across hosts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, update

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery import ledger
from crm_tasks.delivery.send import deliver, prepare_delivery, send_batch
from crm_tasks.store.models import Message
from crm_tasks.store.models import MessageState as S
from tests.conftest import REPO
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=15)


@pytest.fixture
def batch(engine, cfg):
    add_customers(engine, *[{"customer_id": f"C{i}", "birthday": date(1990, 5, 10)} for i in range(4)])
    plan = plan_campaign(engine, cfg, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC),
                         sample=0)
    [b] = prepare_delivery(engine, cfg, "birthday")
    return plan.run_id, b["batch_no"]


def states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Message.customer_id, Message.state)).all())


def test_every_state_has_its_exits_and_final_states_have_none():
    assert set(ledger.TRANSITIONS) == set(S)
    assert ledger.FINAL == {S.SENT, S.FAILED, S.UNKNOWN, S.SUPPRESSED, S.EXPIRED}
    for bad in [(S.SENDING, S.PLANNED), (S.SENDING, S.CLAIMED), (S.SENT, S.SENDING), (S.UNKNOWN, S.DEFERRED),
                (S.PLANNED, S.SENT), (S.DEFERRED, S.SENDING), (S.SENDING, S.EXPIRED), (S.CLAIMED, S.EXPIRED),
                (S.EXPIRED, S.CLAIMED)]:
        with pytest.raises(ledger.IllegalTransition):
            ledger.check_transition([bad[0]], bad[1])


def test_a_claim_is_exclusive_and_only_the_holder_can_move_it(engine, batch):
    run_id, batch_no = batch
    with engine.begin() as conn:
        mine = ledger.claim(conn, run_id, batch_no, "me", NOW)
        theirs = ledger.claim(conn, run_id, batch_no, "them", NOW)
        assert len(mine) == 4 and theirs == []
        assert ledger.move(conn, mine, {S.CLAIMED}, S.SENDING, "them") == []  # not theirs to send
        assert sorted(ledger.move(conn, mine, {S.CLAIMED}, S.SENDING, "me")) == mine
        with pytest.raises(ledger.IllegalTransition):
            ledger.move(conn, mine, {S.SENDING}, S.PLANNED, "me")
    assert set(states(engine).values()) == {S.SENDING}


def test_a_dead_senders_claims_are_taken_over_and_its_in_flight_messages_become_unknown(engine, batch):
    run_id, batch_no = batch
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    token = f"{ledger.new_token().split(':')[0]}:{dead.stdout.strip()}:abcd"
    assert ledger.owner_gone(token) and not ledger.owner_gone(ledger.new_token())
    where = [Message.run_id == run_id, Message.batch_no == batch_no]
    with engine.begin() as conn:
        keys = ledger.claim(conn, run_id, batch_no, token, NOW)
        ledger.move(conn, keys[:2], {S.CLAIMED}, S.SENDING, token)
        conn.execute(update(Message).where(Message.idempotency_key == keys[2]).values(attempts=1))
        assert ledger.recover(conn, where, NOW, TIMEOUT) == {"unknown": 2, "released": 2}
    got = states(engine)
    assert sorted(got.values()) == [S.DEFERRED, S.PLANNED, S.UNKNOWN, S.UNKNOWN]  # tried before: deferred


def test_a_live_sender_is_taken_over_only_when_silent_and_its_heartbeat_keeps_it(engine, batch):
    run_id, batch_no = batch
    live = ledger.new_token()  # this process: alive
    silence = ledger.silence_limit(TIMEOUT)
    where = [Message.run_id == run_id, Message.batch_no == batch_no]
    with engine.begin() as conn:
        ledger.claim(conn, run_id, batch_no, live, NOW)
        assert ledger.recover(conn, where, NOW + silence / 2, TIMEOUT) == {"unknown": 0, "released": 0}
        ledger.heartbeat(conn, where, live, NOW + silence / 2)
        assert ledger.recover(conn, where, NOW + silence, TIMEOUT) == {"unknown": 0, "released": 0}
        # Silent for longer than the limit: presumed lost (another host, a hung worker).
        assert ledger.recover(conn, where, NOW + 2 * silence, TIMEOUT)["released"] == 4
    assert set(states(engine).values()) == {S.PLANNED}


def test_a_silent_claim_is_free_after_a_few_missed_heartbeats_not_the_whole_claim_timeout():
    # The default 15-minute timeout: beats every 30 s, free after four missed ones.
    assert ledger.heartbeat_interval(TIMEOUT) == timedelta(seconds=30)
    assert ledger.silence_limit(TIMEOUT) == 4 * ledger.heartbeat_interval(TIMEOUT) < TIMEOUT
    # A short timeout is never exceeded: beats every third of it.
    short = timedelta(seconds=60)
    assert ledger.heartbeat_interval(short) == timedelta(seconds=20) and ledger.silence_limit(short) == short


OTHER_HOST = f"not-{socket.gethostname()}.workers.internal:4242:beef"  # its pid cannot be checked from here


def test_a_dead_worker_on_another_host_is_taken_over_once_its_heartbeat_stops(engine, cfg, batch):
    run_id, batch_no = batch
    where = [Message.run_id == run_id, Message.batch_no == batch_no]
    beat = NOW + timedelta(minutes=1)  # the other host's last heartbeat, then it died mid-batch
    with engine.begin() as conn:
        theirs = ledger.claim(conn, run_id, batch_no, OTHER_HOST, NOW)
        in_flight = ledger.move(conn, theirs[:2], {S.CLAIMED}, S.SENDING, OTHER_HOST)
        ledger.heartbeat(conn, where, OTHER_HOST, beat)
    assert not ledger.owner_gone(OTHER_HOST)  # no process check across hosts: only the heartbeat tells

    with SmtpServer() as sink:
        local = cfg.model_copy(update={"smtp_url": sink.url})
        # Within the silence limit the other host is presumed alive: nothing is taken or sent.
        early = send_batch(engine, local, run_id, batch_no, clock=lambda: beat + ledger.silence_limit(TIMEOUT) / 2)
        assert early.recovered == {"unknown": 0, "released": 0} and early.claimed == 0 and sink.handler.messages == []
        # Four beats missed, long before the 15-minute claim timeout: taken over from this host.
        late = beat + ledger.silence_limit(TIMEOUT) + timedelta(seconds=1)
        assert late - NOW < TIMEOUT
        taken = send_batch(engine, local, run_id, batch_no, clock=lambda: late)
        assert taken.recovered == {"unknown": 2, "released": 2} and taken.sent == 2
        # The other host wakes up: its claims are no longer its own, its in-flight outcomes are not recorded.
        with engine.begin() as conn:
            assert ledger.move(conn, theirs, {S.CLAIMED}, S.SENDING, OTHER_HOST) == []
            ledger.move_each(conn, [{"key": k, "state": S.SENT, "smtp_code": 250, "last_error": None,
                                     "sent_at": late, "next_attempt_at": None, "updated_at": late}
                                    for k in in_flight], S.SENDING, OTHER_HOST)
        again = send_batch(engine, local, run_id, batch_no, clock=lambda: late + TIMEOUT)
        assert again.claimed == 0
        arrived = [str(m["Message-ID"]) for m in sink.handler.parsed()]

    with engine.connect() as conn:
        rows = conn.execute(select(Message.idempotency_key, Message.state, Message.message_id)).all()
    got = {k: state for k, state, _ in rows}
    assert sorted(got[k] for k in in_flight) == [S.UNKNOWN, S.UNKNOWN]  # maybe delivered: never sent again
    assert sorted(got.values()) == [S.SENT, S.SENT, S.UNKNOWN, S.UNKNOWN]
    assert len(arrived) == len(set(arrived)) == 2
    assert sorted(arrived) == sorted(m for k, s, m in rows if s == S.SENT)


def test_a_slow_live_sender_keeps_its_claims_while_another_host_looks_for_dead_ones(engine, cfg, batch):
    """The heartbeat runs while the batch waits on its rate limit: a sender on another host that runs
    ``recover`` meanwhile takes nothing over, and every message goes out once."""
    run_id, batch_no = batch
    where = [Message.run_id == run_id, Message.batch_no == batch_no]
    timeout = timedelta(seconds=3)  # beats every second; free after three silent seconds
    clock = running_from(NOW)
    seen: list[dict] = []
    with SmtpServer() as sink:
        # One message a second: the batch's 4 messages take longer than the silence limit.
        slow = cfg.model_copy(update={"smtp_url": sink.url, "delivery": cfg.delivery.model_copy(
            update={"rate_per_second": 1.0, "claim_timeout_seconds": timeout.total_seconds()})})
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(send_batch, engine, slow, run_id, batch_no, clock=clock)
            while not sending.done():
                time.sleep(0.5)
                with engine.begin() as conn:
                    seen.append(ledger.recover(conn, where, clock(), timeout))
            result = sending.result()
        arrived = [str(m["Message-ID"]) for m in sink.handler.parsed()]
    assert len(seen) >= 6  # looked for dead senders past the silence limit, many times
    assert all(s == {"unknown": 0, "released": 0} for s in seen), seen
    assert result.sent == 4 and set(states(engine).values()) == {S.SENT}
    assert len(arrived) == len(set(arrived)) == 4


# A sender process that calls itself another host: this host cannot check its pid.
OTHER_HOST_SENDER = """
import socket
import sys
socket.gethostname = lambda: "worker-b.elsewhere.internal"
from datetime import UTC, datetime
from crm_tasks.clock import running_from
from crm_tasks.delivery.send import deliver
from crm_tasks.settings import settings
from crm_tasks.store.engine import make_engine
cfg = settings()
deliver(make_engine(cfg.resolved_database_url()), cfg, "birthday", int(sys.argv[1]),
        clock=running_from(datetime.fromisoformat(sys.argv[2])))
"""


def test_a_worker_on_another_host_killed_mid_batch_is_taken_over_without_a_duplicate(engine, cfg, db_url):
    n = 120
    sent_at = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata: inside the window, on the day
    add_customers(engine, *[{"customer_id": f"K{i:04d}", "email": f"slow{i}@example.com",
                             "birthday": date(1990, 5, 10)} for i in range(n)])
    plan = plan_campaign(engine, cfg, campaign(), date(2026, 5, 10), datetime(2026, 5, 10, 0, 30, tzinfo=UTC),
                         sample=0)
    with SmtpServer(slow_seconds=0.03) as srv:
        env = {**os.environ, "CRM_DATABASE_URL": db_url, "CRM_SMTP_URL": srv.url, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", OTHER_HOST_SENDER, str(plan.run_id), sent_at.isoformat()],
                                env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while len(srv.handler.messages) < 25 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with engine.connect() as conn:
            before = Counter(conn.execute(select(Message.state)).scalars())
        tokens = {t.split(":")[0] for t in claimers(engine)}
        assert tokens == {"worker-b.elsewhere.internal"} and before[S.SENT] < n
        local = cfg.model_copy(update={"smtp_url": srv.url})
        # At once: the dead worker's heartbeat is fresh and its pid cannot be checked from here.
        early = deliver(engine, local, "birthday", plan.run_id, clock=running_from(sent_at + timedelta(seconds=30)))
        assert early.sent == 0 and Counter(states(engine).values()) == before
        # Four heartbeats missed, well before the 15-minute claim timeout: taken over from this host.
        late = sent_at + ledger.silence_limit(TIMEOUT) + timedelta(seconds=30)
        assert late - sent_at < TIMEOUT
        taken = deliver(engine, local, "birthday", plan.run_id, clock=running_from(late))
        arrived = Counter(str(m["Message-ID"]) for m in srv.handler.parsed())
    with engine.connect() as conn:
        after = conn.execute(select(Message.state, Message.message_id)).all()
    assert {s for s, _ in after} <= {S.SENT, S.UNKNOWN} and len(after) == n
    assert max(arrived.values()) == 1, "a message arrived twice"
    unknown = {m for s, m in after if s == S.UNKNOWN}
    assert len(unknown) == before[S.SENDING] <= 2 * cfg.delivery.checkpoint  # in flight when it died
    assert {m for s, m in after if s == S.SENT} <= set(arrived) <= {m for _, m in after}
    assert taken.sent == n - before[S.SENT] - len(unknown)


def claimers(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(Message.claimed_by).where(Message.claimed_by.is_not(None))).scalars())
