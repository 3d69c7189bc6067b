"""Delivering planned messages: batches, the sending gate, outcomes, bounces and retries.

A campaign run's ledger rows (``messages``, written by planning) are numbered
into batches once; each batch is one Airflow mapped task (or one step of
``crm campaign run``). A batch:

1. takes over the claims of senders that died (``ledger.recover``);
2. expires what is past its lateness limit (``expired``, with planning's
   reason: its day passed, its coupon expired), then claims its due messages
   (planned with the send time reached, or deferred with the retry time
   reached);
3. checks consent and suppression again, at send time: a customer who opted
   out, was suppressed or removed since planning is ``suppressed``, not mailed;
4. renders and builds every message of a checkpoint (``delivery.checkpoint``,
   50; after a batch's first, in a forked process beside the SMTP loop:
   ``delivery.build_process``),
   moves them to ``sending`` in one commit, sends them over the pool's reused
   connections, and records each outcome in one commit, while the next
   checkpoint is being built;
5. retries within the task what is due again within ``inline_retry_seconds``,
   and reports when the rest is due, so that the DAG can reschedule the task.

Outcomes: 250 is ``sent``; a 4xx or a connection lost before the content was
written is ``deferred`` (retried with backoff, ``failed`` after
``max_attempts``); a 5xx is ``failed`` and, when the recipient was refused, a
hard bounce that suppresses the address; a connection lost after the content
is ``unknown``. Recipient 4xx replies count as soft bounces: ``soft_bounce_limit``
in a row suppress the address too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, Engine, func, select

from crm_tasks.delivery import clicks, ledger
from crm_tasks.delivery.smtp import (
    DEFERRED,
    FAILED,
    SENT,
    Outcome,
    RateLimit,
    Sender,
    SmtpPool,
    SmtpTarget,
    parse_smtp_url,
    prepare_payload,
)
from crm_tasks.delivery.suppression import add_soft_bounces, add_suppressions, clear_soft_bounces, email_hash
from crm_tasks.errors import ConfigError, CrmError, HeaderInjection, RenderError
from crm_tasks.messages.mime import Envelope, build_message, message_id_for
from crm_tasks.messages.render import Renderer, renderer_for
from crm_tasks.messages.slices import forked
from crm_tasks.settings import Settings
from crm_tasks.store.bulk import rows_in
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import AddressBounce, CampaignRun, Customer, Message, Suppression
from crm_tasks.store.models import MessageState as S

log = logging.getLogger(__name__)

MAX_BATCHES = 1000  # Airflow maps at most 1024 tasks; the batch size grows instead


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Outcomes:
    """How many messages ended each way (a message's final or deferred state)."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    suppressed: int = 0
    expired: int = 0  # past its lateness limit before it could be sent

    def add(self, other: Outcomes) -> None:
        for name in ("sent", "deferred", "failed", "unknown", "suppressed", "expired"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        """Counts only: safe for XCom and logs."""
        return asdict(self)


@dataclass(kw_only=True)
class BatchResult(Outcomes):
    """What one batch did."""

    run_id: int
    batch_no: int
    claimed: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)  # the batch's messages by state at the end
    retry_at: str | None = None  # when the earliest message left in the batch is due (ISO 8601, UTC)
    connections: int = 0
    seconds: float = 0.0


@dataclass(kw_only=True)
class DeliveryResult(Outcomes):
    """What delivering a campaign's pending batches did."""

    campaign: str
    run_id: int | None
    batches: int
    states: dict[str, int] = field(default_factory=dict)  # the run's ledger at the end
    retry_at: str | None = None
    seconds: float = 0.0


@dataclass
class _Built:
    key: str
    customer_id: str
    recipient: str
    test: bool
    attempts: int
    payload: bytes
    address_hash: str | None  # the suppression key of the recipient; None for test messages


def smtp_target(cfg: Settings, airflow_target: SmtpTarget | None = None) -> SmtpTarget:
    """CRM_SMTP_URL, else (inside Airflow) the connection smtp_default."""
    if cfg.smtp_url:
        return parse_smtp_url(cfg.smtp_url)
    if airflow_target is not None:
        return airflow_target
    raise ConfigError("no SMTP server is configured: set CRM_SMTP_URL (for example smtp://user:password@host:587, "
                      "or smtp+insecure://127.0.0.1:8025 for `crm smtp-sink`) or the Airflow connection smtp_default")


@contextmanager
def _write(conn: Connection):
    """One write transaction; on SQLite the write lock is taken first, so that two senders queue
    instead of failing to upgrade a read lock."""
    if conn.in_transaction():  # a read ended here: its snapshot must not outlive it
        conn.commit()
    with conn.begin():
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


# --- preparing the batches -------------------------------------------------------------------


def prepare_delivery(engine: Engine, cfg: Settings, campaign: str) -> list[dict]:
    """Number every not yet batched run of ``campaign`` into batches, and list the batches that still
    hold messages to send (this run's, and deferred or interrupted ones of earlier runs)."""
    m = Message
    with engine.connect() as conn, _write(conn):
        unbatched = conn.execute(select(m.run_id, func.count()).where(m.campaign == campaign,
                                                                       m.batch_no.is_(None))
                                 .group_by(m.run_id)).all()
        for run_id, n in unbatched:
            ledger.assign_batches(conn, run_id, max(cfg.delivery.batch_size, math.ceil(n / MAX_BATCHES)))
        rows = conn.execute(select(m.run_id, m.batch_no, func.count())
                            .where(m.campaign == campaign, m.state.in_(sorted(ledger.PENDING)))
                            .group_by(m.run_id, m.batch_no).order_by(m.run_id, m.batch_no)).all()
    batches = [{"run_id": run_id, "batch_no": batch_no, "messages": n} for run_id, batch_no, n in rows]
    if len(batches) > MAX_BATCHES:
        log.warning("campaign %s: %d batches are pending; the first %d are sent now, the rest on the next run",
                    campaign, len(batches), MAX_BATCHES)
    return batches[:MAX_BATCHES]


# --- one batch -------------------------------------------------------------------------------


def send_batch(engine: Engine, cfg: Settings, run_id: int, batch_no: int, *, target: SmtpTarget | None = None,
               sender: Sender | None = None, renderer: Renderer | None = None,
               clock: Callable[[], datetime] = utcnow) -> BatchResult:
    """Send one batch (see the module docstring). ``sender`` replaces the SMTP pool (tests, benchmarks)."""
    started = time.perf_counter()
    result = BatchResult(run_id=run_id, batch_no=batch_no)
    renderer = renderer or renderer_for(cfg)
    batch = _Batch(engine, cfg, run_id, batch_no, renderer, clock, result)
    if sender is None:
        d = cfg.delivery
        pool = SmtpPool(target or smtp_target(cfg), d.connections, d.timeout_seconds,
                        RateLimit(d.rate_per_second, d.rate_per_hour))
        asyncio.run(batch.run_with(pool))
        result.connections = pool.opened
    else:
        asyncio.run(batch.run(sender))
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("campaign run %d batch %d: claimed %d, sent %d, deferred %d, failed %d, unknown %d, suppressed %d, "
             "expired %d (%.1f s)", run_id, batch_no, result.claimed, result.sent, result.deferred, result.failed,
             result.unknown, result.suppressed, result.expired, result.seconds)
    return result


class _Batch:
    def __init__(self, engine: Engine, cfg: Settings, run_id: int, batch_no: int, renderer: Renderer,
                 clock: Callable[[], datetime], result: BatchResult) -> None:
        self.engine, self.cfg, self.run_id, self.batch_no = engine, cfg, run_id, batch_no
        self.renderer, self.clock, self.result = renderer, clock, result
        self.token = ledger.new_token()
        self.where = [Message.run_id == run_id, Message.batch_no == batch_no]
        self.domain = cfg.campaigns.sender.domain

    async def run_with(self, pool: SmtpPool) -> None:
        async with pool:
            await self.run(pool)

    async def run(self, sender: Sender) -> None:
        with self.engine.connect() as conn:
            self.conn = conn
            with conn.begin():  # links are signed with the key in force when the batch starts
                self.tracker = clicks.tracker_for(self.cfg, load_keys(conn, self.cfg).signing)
            beating = asyncio.ensure_future(self._heartbeats())
            try:
                await self._run(sender)
            finally:
                beating.cancel()

    async def _heartbeats(self) -> None:
        """Renew this sender's claims every heartbeat interval, also while it waits on a rate limit, a slow
        server or an inline retry: claims whose heartbeat stopped are taken over from any host
        (``ledger.recover``). It runs between the batch's awaits, when its connection holds no transaction."""
        every = ledger.heartbeat_interval(timedelta(seconds=self.cfg.delivery.claim_timeout_seconds))
        while True:
            await asyncio.sleep(every.total_seconds())
            with _write(self.conn):
                ledger.heartbeat(self.conn, self.where, self.token, self.clock())

    async def _run(self, sender: Sender) -> None:
        d, conn = self.cfg.delivery, self.conn
        while True:
            now = self.clock()
            with _write(conn):
                got = ledger.recover(conn, self.where, now, timedelta(seconds=d.claim_timeout_seconds))
            for k, v in got.items():
                self.result.recovered[k] = self.result.recovered.get(k, 0) + v
            with _write(conn):
                self.result.expired += ledger.expire(conn, self.where, now)
                keys = ledger.claim(conn, self.run_id, self.batch_no, self.token, now)
            self.result.claimed += len(keys)
            if keys:
                await self._send(sender, self._still_allowed(keys))
            due = self._next_due()
            if due is None:
                break
            wait = (due - self.clock()).total_seconds()
            if wait > d.inline_retry_seconds:
                self.result.retry_at = due.isoformat()
                break
            if wait > 0:
                await asyncio.sleep(wait)
        with conn.begin():
            self.result.states = ledger.state_counts(conn, self.where)

    def _next_due(self) -> datetime | None:
        """When the batch's next planned or deferred message is due (claimed ones belong to a sender)."""
        m = Message
        with self.conn.begin():
            planned = self.conn.execute(select(func.min(m.send_at)).where(*self.where, m.state == S.PLANNED)).scalar()
            deferred = self.conn.execute(select(func.min(m.next_attempt_at))
                                         .where(*self.where, m.state == S.DEFERRED)).scalar()
        times = [t for t in (planned, deferred) if t is not None]
        return min(times) if times else None

    def _still_allowed(self, keys: list[str]) -> list[tuple]:
        """The claimed rows still allowed to be mailed, each with its address's suppression hash (None for
        a test message); the others are moved to suppressed, with why.

        Consent, suppression and the address are read again now: someone who opted out after
        planning is never mailed. Test messages go to the tester and skip these checks."""
        with self.conn.begin():
            rows, by_customer, by_hash, hashes = self._profiles(keys)
        why: dict[str, list[str]] = {}
        for r in rows:
            if r.test:
                continue
            reason = ("the profile no longer exists" if r.profile is None
                      else "no e-mail consent at send time" if not r.email_consent
                      else "suppressed since planning" if r.customer_id in by_customer
                      or hashes[r.idempotency_key] in by_hash
                      else "the address changed since planning" if r.email != r.recipient else None)
            if reason:
                why.setdefault(reason, []).append(r.idempotency_key)
        if why:
            now = self.clock()
            with _write(self.conn):
                for reason, ks in why.items():
                    moved = ledger.move(self.conn, ks, {S.CLAIMED}, S.SUPPRESSED, self.token,
                                        last_error=reason, updated_at=now)
                    self.result.suppressed += len(moved)
        dropped = {k for ks in why.values() for k in ks}
        return [(r, hashes.get(r.idempotency_key)) for r in rows if r.idempotency_key not in dropped]

    def _profiles(self, keys: list[str]):
        """The claimed rows with their profile's consent and address now, and the suppressions among them."""
        m, c, s = Message, Customer, Suppression
        rows = rows_in(self.conn, select(m.idempotency_key, m.customer_id, m.recipient, m.context, m.template,
                                         m.campaign, m.test, m.attempts, m.message_id,
                                         c.customer_id.label("profile"),
                                         c.email_consent, c.email)
                       .outerjoin(c, c.customer_id == m.customer_id)
                       .where(m.state == S.CLAIMED, m.claimed_by == self.token), m.idempotency_key, keys)
        rows.sort(key=lambda r: r.idempotency_key)
        real = [r for r in rows if not r.test]
        hashing = load_keys(self.conn, self.cfg).hashing
        hashes = {r.idempotency_key: email_hash(r.recipient, hashing) for r in real}
        by_customer = {x for (x,) in rows_in(self.conn, select(s.customer_id), s.customer_id,
                                             {r.customer_id for r in real})}
        by_hash = {x for (x,) in rows_in(self.conn, select(s.email_hash), s.email_hash, set(hashes.values()))}
        return rows, by_customer, by_hash, hashes

    def _build(self, row, address_hash: str | None) -> _Built:
        ctx = row.context
        rendered = self.renderer.render(row.template, ctx)
        url = ctx["unsubscribe_url"]
        links = [url]
        if self.cfg.delivery.unsubscribe_mailto:
            links.append(f"mailto:{self.cfg.delivery.unsubscribe_mailto}?subject=unsubscribe%20"
                         f"{url.rsplit('/', 1)[-1]}")
        sender = self.cfg.campaigns.sender
        mid = row.message_id or message_id_for(row.idempotency_key, self.domain)
        env = Envelope(sender.name, sender.email, row.recipient, ctx["customer"]["first_name"], rendered.subject,
                       mid, tuple(links), f"{row.campaign}.{self.domain}")
        # The HTML part's links become tracked redirects (test messages too, so that testers see them work);
        # the unsubscribe link stays direct.
        html = clicks.track(rendered.html, mid, self.tracker, keep=(url,))
        return _Built(row.idempotency_key, row.customer_id, row.recipient, row.test, row.attempts,
                      prepare_payload(build_message(env, rendered.text, html)), address_hash)

    def _built(self, rows: list) -> tuple[list[_Built], list[dict]]:
        """Each row's message built, or the row failed alone (a template or header that does not build)."""
        built, bad = [], []
        now = self.clock()
        for row, address_hash in rows:
            try:
                built.append(self._build(row, address_hash))
            except (HeaderInjection, RenderError) as exc:
                bad.append(_row(row.idempotency_key, S.FAILED, None, f"not built: {exc}", now))
        return built, bad

    async def _render(self, rows: list) -> tuple[list[_Built], list[dict]]:
        """``_built`` here, yielding after every message: a reply waiting unread for a whole checkpoint of
        renders is a server waiting too."""
        built, bad = [], []
        for row in rows:
            b, f = self._built([row])
            built += b
            bad += f
            await asyncio.sleep(0)
        return built, bad

    async def _checkpoint(self, rows: list, future: Future | None) -> tuple[list[_Built], list[dict]]:
        """A checkpoint's messages: from the builder process (``future``) when there is one, else built here."""
        if future is not None:
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                log.warning("campaign run %d batch %d: the process building its messages died; building them here",
                            self.run_id, self.batch_no)
        return await self._render(rows)

    async def _send(self, sender: Sender, rows: list) -> None:
        """Checkpoint by checkpoint: build, gate (commit 'sending'), send, record. The next checkpoint is
        built and gated while the previous one is still sending, so that the connections never wait for
        the database: at most two checkpoints are 'sending' at any moment.

        A batch of more than one checkpoint has its messages after the first rendered and built in a forked
        process (``delivery.build_process``; crm_tasks/messages/slices.py), checkpoint by checkpoint, in order:
        rendering is most of a message's CPU, and done here it would hold every connection's reply unread
        while it runs. Only what this process gated is sent; a builder that dies leaves its checkpoints to
        be built here."""
        step = self.cfg.delivery.checkpoint
        starts = range(0, len(rows), step)
        builders = 1 if self.cfg.delivery.build_process and len(starts) > 1 else 0
        with forked(lambda start, stop: self._built(rows[start:stop]), builders) as submit:
            # The first checkpoint is built here while the builder starts: nothing is in flight yet to wait for it.
            futures = [None] + [submit(i, i + step) if submit else None for i in starts[1:]]
            inflight: deque[asyncio.Future] = deque()
            for i, future in zip(starts, futures, strict=True):
                built, bad = await self._checkpoint(rows[i:i + step], future)
                if bad:
                    for b in bad:  # logged with the key, never the address; the message fails alone
                        log.warning("message %s %s", b["key"], b["last_error"])
                    with _write(self.conn):
                        ledger.move_each(self.conn, bad, S.CLAIMED, self.token)
                    self.result.failed += len(bad)
                now = self.clock()
                with _write(self.conn):
                    gated = set(ledger.move(self.conn, [b.key for b in built], {S.CLAIMED}, S.SENDING, self.token,
                                            attempts=Message.attempts + 1, claimed_at=now, updated_at=now))
                todo = [b for b in built if b.key in gated]
                inflight.append(asyncio.ensure_future(self._transmit(sender, todo)))
                if len(inflight) > 1:
                    self._record(*await inflight.popleft())
            while inflight:
                self._record(*await inflight.popleft())

    async def _transmit(self, sender: Sender, todo: list[_Built]) -> tuple[list[_Built], list[Outcome]]:
        mail_from = self.cfg.campaigns.sender.email
        outcomes = await asyncio.gather(*(sender.send(mail_from, b.recipient, b.payload) for b in todo))
        return todo, list(outcomes)

    def _record(self, built: list[_Built], outcomes: list[Outcome]) -> None:
        """Each outcome of a checkpoint, the bounces and the suppressions they cause, in one commit."""
        d, now = self.cfg.delivery, self.clock()
        soft = {b.key: b.address_hash for b, o in zip(built, outcomes, strict=True)
                if o.bounce and o.state == DEFERRED and not b.test}
        with self.conn.begin():
            counts = dict(rows_in(self.conn, select(AddressBounce.email_hash, AddressBounce.soft_bounces),
                                  AddressBounce.email_hash, set(soft.values())))
        rows, sent, hard, bounced, delivered = [], [], [], Counter(), []
        for b, o in zip(built, outcomes, strict=True):
            state, error, retry = o.state, o.error, None
            if state == DEFERRED:
                h = soft.get(b.key)
                if h is not None:
                    bounced[h] += 1
                if h is not None and counts.get(h, 0) + bounced[h] >= d.soft_bounce_limit:
                    state, error = FAILED, (f"{error}; the address is suppressed after {d.soft_bounce_limit} "
                                            f"temporary recipient failures in a row")
                    hard.append((b, "soft_bounce"))
                elif b.attempts + 1 >= d.max_attempts:
                    state, error = FAILED, f"gave up after {b.attempts + 1} temporary failures; last: {error}"
                else:
                    delay = min(d.retry_seconds * d.retry_factor ** b.attempts, d.max_retry_seconds)
                    retry = now + timedelta(seconds=delay)
            elif state == FAILED and o.bounce and not b.test:
                hard.append((b, "hard_bounce"))
            elif state == SENT and not b.test:
                delivered.append(b.address_hash)
            if state == SENT:
                sent.append(b.key)
            else:
                rows.append(_row(b.key, state, o.code, error, now, retry=retry))
            setattr(self.result, state, getattr(self.result, state) + 1)
        with _write(self.conn):
            # The accepted ones in one statement (most of a checkpoint); the others each with their reply.
            ledger.move(self.conn, sent, {S.SENDING}, S.SENT, self.token, smtp_code=250, last_error=None,
                        sent_at=now, next_attempt_at=None, updated_at=now)
            ledger.move_each(self.conn, rows, S.SENDING, self.token)
            add_soft_bounces(self.conn, bounced, now)
            add_suppressions(self.conn, [{"email_hash": b.address_hash, "customer_id": b.customer_id,
                                          "reason": why, "created_at": now} for b, why in hard])
            clear_soft_bounces(self.conn, delivered)  # an accepted message ends a run of soft bounces
        for b, o in zip(built, outcomes, strict=True):
            if o.state != SENT:
                log.info("message %s: %s %s", b.key, o.state, o.error or "")


def _row(key: str, state: str, code: int | None, error: str | None, now: datetime, *, retry=None) -> dict:
    """An outcome other than sent, for ``ledger.move_each``."""
    return {"key": key, "state": state, "smtp_code": code, "last_error": error, "sent_at": None,
            "next_attempt_at": retry, "updated_at": now}


# --- a whole run, and its status -------------------------------------------------------------


def deliver(engine: Engine, cfg: Settings, campaign: str, run_id: int | None, *, target: SmtpTarget | None = None,
            sender: Sender | None = None, renderer: Renderer | None = None,
            clock: Callable[[], datetime] = utcnow) -> DeliveryResult:
    """Send every pending batch of ``campaign``, one after another (``crm campaign run``; the DAG maps them).
    ``clock`` tells the time that send times, retries and lateness are measured by."""
    started = time.perf_counter()
    batches = prepare_delivery(engine, cfg, campaign)
    result = DeliveryResult(campaign=campaign, run_id=run_id, batches=len(batches))
    if batches and sender is None:
        target = target or smtp_target(cfg)
    renderer = renderer or renderer_for(cfg)
    retry = []
    for b in batches:
        r = send_batch(engine, cfg, b["run_id"], b["batch_no"], target=target, sender=sender, renderer=renderer,
                       clock=clock)
        result.add(r)
        if r.retry_at:
            retry.append(r.retry_at)
    result.retry_at = min(retry) if retry else None
    if run_id is not None:
        with engine.connect() as conn:
            result.states = ledger.state_counts(conn, [Message.run_id == run_id])
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def campaign_status(engine: Engine, cfg: Settings, campaign: str, as_of: date | None = None) -> dict:
    """The runs of ``campaign`` for ``as_of`` (default: the latest date it ran for) with their ledger by
    state and the most common failures. An unknown name gets the same error as everywhere else."""
    from crm_tasks.campaigns.definitions import get_campaign

    r, m = CampaignRun, Message
    with engine.connect() as conn:
        latest = conn.execute(select(func.max(r.as_of)).where(r.campaign == campaign)).scalar()
        if latest is None:
            get_campaign(cfg, campaign)  # a name that is no campaign: "no campaign ..., Known: ..."
            raise CrmError(f"campaign {campaign} has no recorded run yet; plan or run it first "
                           f"(crm campaign run {campaign} --as-of YYYY-MM-DD)")
        as_of = as_of or latest
        runs = conn.execute(select(r.id, r.dry_run, r.test_run, r.status, r.recipients, r.created_at)
                            .where(r.campaign == campaign, r.as_of == as_of).order_by(r.id)).all()
        out = []
        for run in runs:
            errors = conn.execute(select(m.state, m.last_error, func.count()).where(
                m.run_id == run.id, m.last_error.is_not(None)).group_by(m.state, m.last_error)
                .order_by(func.count().desc()).limit(5)).all()
            out.append({"run_id": run.id, "dry_run": run.dry_run, "test_run": run.test_run, "status": run.status,
                        "recipients": run.recipients, "planned_at": run.created_at.isoformat(),
                        "states": ledger.state_counts(conn, [m.run_id == run.id]),
                        "problems": [{"state": s, "error": e, "messages": n} for s, e, n in errors]})
    if not out:
        raise CrmError(f"campaign {campaign} has no recorded run for {as_of}; its latest is for {latest} "
                       f"(crm campaign status {campaign} --as-of {latest})")
    return {"campaign": campaign, "as_of": as_of.isoformat(), "runs": out}


def run_report(engine: Engine, campaign: str, plan: dict) -> dict:
    """A planned run's ledger by state after every batch; raises CrmError when a message is left in
    flight or the ledger does not hold exactly the plan's recipients (nothing may be lost)."""
    run_id = plan.get("run_id")
    if run_id is None:
        return {"campaign": campaign, "states": {}}
    with engine.connect() as conn:
        states = ledger.state_counts(conn, [Message.run_id == run_id])
    if not plan.get("dry_run"):
        left = {s: n for s, n in states.items() if s not in ledger.FINAL}
        if left:
            raise CrmError(f"campaign {campaign}, run {run_id}: messages not in a final state after every batch: "
                           f"{left}; another sender may hold them (see crm campaign status)")
        if sum(states.values()) != plan["recipients"]:
            raise CrmError(f"campaign {campaign}, run {run_id}: {plan['recipients']} recipients planned but the "
                           f"ledger holds {sum(states.values())} messages ({states}); nothing may be lost")
    return {"campaign": campaign, "run_id": run_id, "states": states, "reconciles": True}
