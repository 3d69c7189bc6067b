"""The ledger's state machine: only legal transitions, atomic claims, and the takeover of dead or
silent senders (never of a live one that renews its claims)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, update

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.delivery import ledger
from crm_tasks.delivery.send import prepare_delivery
from crm_tasks.store.models import Message
from crm_tasks.store.models import MessageState as S
from tests.factories import add_customers, campaign

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
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
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
    where = [Message.run_id == run_id, Message.batch_no == batch_no]
    with engine.begin() as conn:
        ledger.claim(conn, run_id, batch_no, live, NOW)
        assert ledger.recover(conn, where, NOW + TIMEOUT / 2, TIMEOUT) == {"unknown": 0, "released": 0}
        ledger.heartbeat(conn, where, live, NOW + TIMEOUT / 2)
        assert ledger.recover(conn, where, NOW + TIMEOUT, TIMEOUT) == {"unknown": 0, "released": 0}
        # Silent for longer than the timeout: presumed lost (another host, a hung worker).
        assert ledger.recover(conn, where, NOW + 2 * TIMEOUT, TIMEOUT)["released"] == 4
    assert set(states(engine).values()) == {S.PLANNED}
