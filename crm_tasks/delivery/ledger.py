"""The send ledger's state machine: every change of a message's state goes through here.

At most once rests on one rule: a message is handed to the SMTP server only by
the sender whose conditional update moved it from ``claimed`` (held by that
sender's token) to ``sending``, committed before the SMTP transaction starts,
and nothing ever moves a message out of ``sending`` into a state that is sent
again. A sender that dies leaves its ``sending`` messages to be marked
``unknown`` (maybe delivered: counted and shown, never retried) and its
``claimed`` ones to be taken over (never handed to the server).

A sender's token is ``host:pid:nonce``. A live sender renews its claims every
heartbeat interval (``heartbeat_interval``: 30 s, or a third of a shorter
``claim_timeout_seconds``). A claim is stale, and taken over by the next sender of
its batch on any host, when its process is seen to be gone (same host: a pid
check) or when its last heartbeat is older than ``silence_limit`` (four missed
beats, two minutes by default, never more than ``claim_timeout_seconds``): a
worker on another machine that died or lost the network is taken over without
waiting out the claim timeout. Taking over a sender that was only slow costs no
duplicate: its claimed messages are no longer its own (every move checks the
token) and its in-flight ones become ``unknown``, which is never sent again.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, case, func, or_, select, update

from crm_tasks.errors import IllegalTransition
from crm_tasks.store.bulk import IN_CHUNK
from crm_tasks.store.models import Message
from crm_tasks.store.models import MessageState as S

TRANSITIONS: dict[str, frozenset[str]] = {
    S.PLANNED: frozenset({S.CLAIMED, S.SUPPRESSED, S.EXPIRED}),
    # Released (back to planned or deferred) by a takeover; failed when it cannot even be built.
    S.CLAIMED: frozenset({S.SENDING, S.SUPPRESSED, S.FAILED, S.PLANNED, S.DEFERRED}),
    S.SENDING: frozenset({S.SENT, S.DEFERRED, S.FAILED, S.UNKNOWN}),
    S.DEFERRED: frozenset({S.CLAIMED, S.SUPPRESSED, S.FAILED, S.EXPIRED}),
    S.SENT: frozenset(),
    S.FAILED: frozenset(),
    S.UNKNOWN: frozenset(),
    S.SUPPRESSED: frozenset(),
    S.EXPIRED: frozenset(),
}
FINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
PENDING = frozenset(TRANSITIONS) - FINAL


def check_transition(sources, target: str) -> None:
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise IllegalTransition(f"a message cannot go from {source} to {target}")


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


HEARTBEAT = timedelta(seconds=30)
MISSED_BEATS = 4


def heartbeat_interval(timeout: timedelta) -> timedelta:
    """How often a live sender renews its claims: every 30 s, or a third of a shorter claim timeout."""
    return min(HEARTBEAT, timeout / 3)


def silence_limit(timeout: timedelta) -> timedelta:
    """How long a claim may go without a heartbeat before a sender on any host takes it over: four missed
    beats (one late beat on a busy machine is not a death), never longer than the claim timeout."""
    return min(MISSED_BEATS * heartbeat_interval(timeout), timeout)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def owner_gone(token: str | None) -> bool:
    """True when the token's process is on this host and no longer runs."""
    if not token:
        return True
    host, _, rest = token.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and _process_gone(int(pid))


def move(conn: Connection, keys: list[str], sources: set[str], target: str, token: str | None = None,
         **values) -> list[str]:
    """Move the messages ``keys`` that are in one of ``sources`` (and, with ``token``, held by it) to
    ``target``; returns the keys that moved. Others are left as they are: someone else has them."""
    check_transition(sources, target)
    m = Message
    cond = [m.idempotency_key.in_(bindparam("keys", expanding=True)), m.state.in_(sorted(sources))]
    if token is not None:
        cond.append(m.claimed_by == token)
    stmt = update(m).where(*cond).values(state=target, **values).returning(m.idempotency_key)
    moved: list[str] = []
    for i in range(0, len(keys), IN_CHUNK):
        moved += conn.execute(stmt, {"keys": keys[i:i + IN_CHUNK]}).scalars().all()
    return moved


def move_each(conn: Connection, rows: list[dict], source: str, token: str) -> None:
    """Per-message outcomes of ``source`` messages held by ``token``: each row has ``key``, ``state`` and
    the columns ``smtp_code``, ``last_error``, ``sent_at``, ``next_attempt_at`` and ``updated_at``."""
    if not rows:
        return
    for target in {r["state"] for r in rows}:
        check_transition([source], target)
    m = Message
    stmt = (update(m)
            .where(m.idempotency_key == bindparam("key"), m.state == source, m.claimed_by == token)
            .values(state=bindparam("state"), smtp_code=bindparam("smtp_code"), last_error=bindparam("last_error"),
                    sent_at=bindparam("sent_at"), next_attempt_at=bindparam("next_attempt_at"),
                    updated_at=bindparam("updated_at")))
    conn.execute(stmt.execution_options(synchronize_session=False), rows)


def _fresh(now: datetime):
    return or_(Message.expires_at.is_(None), Message.expires_at > now)


def expire(conn: Connection, where: list, now: datetime) -> int:
    """Move the planned and deferred messages among ``where`` that are past their lateness limit to
    ``expired``, each with the reason planning gave it; returns how many. A stale message is never sent:
    a birthday e-mail a week late, or a coupon that no longer works, does more harm than none."""
    m = Message
    check_transition([S.PLANNED, S.DEFERRED], S.EXPIRED)
    return conn.execute(
        update(m).where(*where, m.state.in_([S.PLANNED, S.DEFERRED]), m.expires_at <= now)
        .values(state=S.EXPIRED, updated_at=now, next_attempt_at=None,
                last_error=func.coalesce(m.expiry_reason, "past its lateness limit"))).rowcount


def claim(conn: Connection, run_id: int, batch_no: int, token: str, now: datetime) -> list[str]:
    """Claim the batch's messages that are due and not stale: planned with their send time reached (test
    messages at once), or deferred with their retry time reached. Atomic per row on both dialects: a
    second sender gets none of them."""
    m = Message
    check_transition([S.PLANNED, S.DEFERRED], S.CLAIMED)
    due = or_(m.state == S.PLANNED,
              and_(m.state == S.DEFERRED, or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now)))
    # A test recipient wants to see the messages now, whatever the customers' send window.
    stmt = (update(m).where(m.run_id == run_id, m.batch_no == batch_no, or_(m.test, m.send_at <= now), due,
                            _fresh(now))
            .values(state=S.CLAIMED, claimed_by=token, claimed_at=now, updated_at=now)
            .returning(m.idempotency_key))
    return sorted(conn.execute(stmt).scalars().all())


def heartbeat(conn: Connection, where: list, token: str, now: datetime) -> None:
    """A live sender renews its claims, so that a slow batch (a tight rate limit) is not taken for dead."""
    m = Message
    conn.execute(update(m).where(*where, m.state.in_([S.CLAIMED, S.SENDING]), m.claimed_by == token)
                 .values(claimed_at=now))


def recover(conn: Connection, where: list, now: datetime, timeout: timedelta) -> dict[str, int]:
    """Take over the claims among ``where`` of senders that are gone (same host) or whose heartbeat stopped
    (any host: ``silence_limit(timeout)``): their ``sending`` messages become unknown, their ``claimed``
    ones go back to be sent. A sender's claims are judged by its latest heartbeat (``claimed_at`` is
    renewed by each one), not by its oldest claim."""
    m = Message
    held = conn.execute(select(m.claimed_by, func.max(m.claimed_at))
                        .where(m.state.in_([S.CLAIMED, S.SENDING]), *where)
                        .group_by(m.claimed_by)).all()
    silent = now - silence_limit(timeout)
    stale = sorted({tok for tok, at in held if owner_gone(tok) or at is None or at < silent})
    out = {"unknown": 0, "released": 0}
    if not stale:
        return out
    check_transition([S.SENDING], S.UNKNOWN)
    check_transition([S.CLAIMED], S.PLANNED)
    check_transition([S.CLAIMED], S.DEFERRED)
    owners = m.claimed_by.in_(stale)
    out["unknown"] = conn.execute(
        update(m).where(owners, m.state == S.SENDING, *where)
        .values(state=S.UNKNOWN, updated_at=now,
                last_error="its sender stopped during the SMTP transaction; it may have been delivered")).rowcount
    out["released"] = conn.execute(
        update(m).where(owners, m.state == S.CLAIMED, *where)
        .values(state=_released_state(), claimed_by=None, claimed_at=None, updated_at=now)).rowcount
    return out


def _released_state():
    """A released claim goes back to where it came from: deferred if it was tried before, else planned."""
    return case((Message.attempts > 0, S.DEFERRED.value), else_=S.PLANNED.value)


def assign_batches(conn: Connection, run_id: int, batch_size: int) -> None:
    """Number the run's messages into send batches once, in key order, so that a retried task
    claims the same messages. Set-based: one UPDATE joined to a ROW_NUMBER() over the run."""
    position = func.row_number().over(order_by=Message.idempotency_key) - 1
    # Integers on both dialects: a plain "/" divides as integers (Core's // would add FLOOR, which
    # SQLite builds without the math functions lack).
    numbered = (select(Message.idempotency_key.label("k"), position.self_group().op("/")(int(batch_size)).label("b"))
                .where(Message.run_id == int(run_id)).subquery("n"))
    conn.execute(update(Message).where(Message.idempotency_key == numbered.c.k, Message.batch_no.is_(None))
                 .values(batch_no=numbered.c.b))


def state_counts(conn: Connection, where: list) -> dict[str, int]:
    m = Message
    rows = conn.execute(select(m.state, func.count()).where(*where).group_by(m.state)).all()
    return {state: n for state, n in sorted(rows)}
