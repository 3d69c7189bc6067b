"""SMTP I/O: where the server is, a pool of reused connections, a rate limit, and a local sink.

Delivery talks to the ``Sender`` protocol only: ``SmtpPool`` is the real one.
A transaction is run step by step (MAIL, RCPT, DATA, content) so that a failure
says whether the server could have received the message: a reply or a broken
connection before the content was written means it was not delivered (safe to
retry); a connection lost after the content means nobody knows (never retried).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self
from urllib.parse import parse_qs, unquote, urlsplit

from crm_tasks.errors import ConfigError

# Outcomes of one SMTP transaction, as the ledger records them.
SENT, DEFERRED, FAILED, UNKNOWN = "sent", "deferred", "failed", "unknown"

_ADDRESSES = re.compile(r"<?[^\s<>]+@[^\s<>]+>?")
_PERIOD = re.compile(rb"(?m)^\.")
# Implicit TLS, STARTTLS required, STARTTLS when offered, never TLS (a local sink).
TLS_MODES = ("implicit", "starttls", "auto", "none")


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or a traceback
    tls: str = "auto"
    validate_certs: bool = True

    def describe(self) -> str:
        """For logs and reports: no password."""
        user = f"{self.username}@" if self.username else ""
        return f"smtp://{user}{self.host}:{self.port} (tls: {self.tls})"


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://`` (STARTTLS when offered), ``smtp+starttls://`` (required), ``smtps://`` (implicit TLS),
    ``smtp+insecure://`` (no TLS, for a local sink); ``?validate_certs=false`` for self-signed servers."""
    parts = urlsplit(url)
    modes = {"smtp": "auto", "smtp+starttls": "starttls", "smtps": "implicit", "smtp+insecure": "none"}
    if parts.scheme not in modes or not parts.hostname:
        raise ConfigError("CRM_SMTP_URL must look like smtp://user:password@host:587 (schemes: smtp, "
                          "smtp+starttls, smtps, smtp+insecure)")
    tls = modes[parts.scheme]
    port = parts.port or {"implicit": 465, "starttls": 587}.get(tls, 25)
    query = parse_qs(parts.query)
    validate = query.get("validate_certs", ["true"])[0].lower() not in ("false", "0", "no")
    return SmtpTarget(parts.hostname, port, unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None, tls, validate)


def target_from_connection(host: str | None, port: int | None, login: str | None, password: str | None,
                           extra: dict | None) -> SmtpTarget:
    """An Airflow SMTP connection, read as the SMTP provider reads it: implicit TLS unless
    ``disable_ssl``, then STARTTLS unless ``disable_tls``."""
    if not host:
        raise ConfigError("the Airflow connection smtp_default has no host")
    extra = extra or {}

    def flag(name: str) -> bool:
        return str(extra.get(name, False)).lower() in ("true", "1", "yes")

    tls = "implicit" if not flag("disable_ssl") else "starttls" if not flag("disable_tls") else "none"
    return SmtpTarget(host, port or {"implicit": 465, "starttls": 587}.get(tls, 25), login or None,
                      password or None, tls, not flag("skip_cert_validation"))


def scrub(text: str, limit: int = 200) -> str:
    """A server reply fit for the ledger and logs: addresses removed, one line, bounded."""
    return " ".join(_ADDRESSES.sub("<address>", text).split())[:limit]


@dataclass(frozen=True)
class Outcome:
    state: str  # SENT | DEFERRED | FAILED | UNKNOWN
    code: int | None = None
    error: str | None = None
    # The recipient's server refused it (a bounce), rather than our server or the network failing.
    bounce: bool = False


class Sender(Protocol):
    async def send(self, mail_from: str, rcpt: str, payload: bytes) -> Outcome: ...


def prepare_payload(message: bytes) -> bytes:
    """DATA content: dots at line starts doubled, the final ``.`` line added. Done once per message."""
    # Built messages never start a line with a dot (headers, base64); the scan is for any other input.
    body = _PERIOD.sub(b"..", message) if message.startswith(b".") or b"\n." in message else message
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class RateLimit:
    """At most ``per_second`` and ``per_hour`` sends, spread evenly; shared by the pool's connections."""

    def __init__(self, per_second: float | None, per_hour: int | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.per_hour = per_hour
        self.next_at = 0.0
        self.hour: deque[float] = deque()

    async def wait(self) -> None:
        if not (self.interval or self.per_hour):
            return
        while True:
            now = time.monotonic()
            if self.per_hour:
                while self.hour and self.hour[0] <= now - 3600:
                    self.hour.popleft()
                if len(self.hour) >= self.per_hour:
                    await asyncio.sleep(self.hour[0] + 3600 - now)
                    continue
            if now < self.next_at:
                await asyncio.sleep(self.next_at - now)
                continue
            self.next_at = max(now, self.next_at) + self.interval
            if self.per_hour:
                self.hour.append(now)
            return


class SmtpPool:
    """Up to ``size`` connections to one server, each reused for message after message.

    Use as ``async with SmtpPool(...) as pool``; ``await pool.send(...)`` from at most
    ``size`` tasks at a time. A connection that failed is dropped and reopened on next use.
    """

    def __init__(self, target: SmtpTarget, size: int, timeout: float, rate: RateLimit | None = None) -> None:
        self.target = target
        self.size = size
        self.timeout = timeout
        self.rate = rate
        self.idle: asyncio.Queue = asyncio.Queue()
        self.opened = 0

    async def __aenter__(self) -> Self:
        for _ in range(self.size):
            self.idle.put_nowait(None)  # a slot; connected on first use
        return self

    async def __aexit__(self, *exc) -> None:
        while not self.idle.empty():
            client = self.idle.get_nowait()
            if client is not None and client.is_connected:
                try:
                    await client.quit()
                except Exception:  # noqa: BLE001 - closing politely is best effort
                    client.close()

    async def _connect(self):
        import aiosmtplib

        t = self.target
        client = aiosmtplib.SMTP(hostname=t.host, port=t.port, timeout=self.timeout, use_tls=t.tls == "implicit",
                                 start_tls={"starttls": True, "none": False}.get(t.tls), validate_certs=t.validate_certs,
                                 username=t.username, password=t.password)
        await client.connect()
        self.opened += 1
        return client

    async def send(self, mail_from: str, rcpt: str, payload: bytes) -> Outcome:
        """One transaction; ``payload`` from ``prepare_payload``. Never raises for SMTP or network faults."""
        import aiosmtplib

        if self.rate:
            await self.rate.wait()
        client = await self.idle.get()
        written = False
        try:
            if client is None or not client.is_connected:
                client = None
                try:
                    client = await self._connect()
                except aiosmtplib.SMTPAuthenticationError as exc:
                    return Outcome(DEFERRED, exc.code, f"login refused by the SMTP server: {scrub(exc.message)}")
                except (aiosmtplib.SMTPException, OSError) as exc:
                    return Outcome(DEFERRED, getattr(exc, "code", None),
                                   f"cannot connect to {self.target.host}:{self.target.port}: "
                                   f"{exc.__class__.__name__}: {scrub(str(exc))}")
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            # MAIL and RCPT are written directly: the addresses were checked when the message was built,
            # and aiosmtplib's own address parsing would cost more than the rest of the command.
            utf8 = not (rcpt.isascii() and mail_from.isascii())
            commands = ((b"MAIL FROM:<" + mail_from.encode() + b">" + (b" SMTPUTF8" if utf8 else b""), False),
                        (b"RCPT TO:<" + rcpt.encode() + b">", True))
            for command, about_recipient in commands:
                reply = await client.execute_command(command)
                if reply.code not in (250, 251):
                    await self._reset(client)
                    return _refused(reply.code, reply.message, bounce=about_recipient)
            start = await client.execute_command(b"DATA")
            if start.code != 354:
                await self._reset(client)
                return _refused(start.code, start.message, bounce=True)
            client.protocol.write(payload)
            written = True
            reply = await client.protocol.read_response(timeout=self.timeout)
            if reply.code == 250:
                return Outcome(SENT, 250)
            return _refused(reply.code, reply.message, bounce=True)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            if client is not None:
                client.close()
            what = f"{exc.__class__.__name__}: {scrub(str(exc))}"
            if written:
                return Outcome(UNKNOWN, None, f"connection lost after the message was sent, before the reply "
                                              f"({what}); it may have been delivered")
            return Outcome(DEFERRED, None, f"connection lost before the message was sent ({what})")
        finally:
            self.idle.put_nowait(client)

    async def _reset(self, client) -> None:
        try:
            await client.rset()
        except Exception:  # noqa: BLE001 - a broken connection is reopened on next use
            client.close()


def _refused(code: int, message: str, bounce: bool) -> Outcome:
    """A definite answer: 4xx defers, 5xx fails. 421 is the server going away, not the recipient."""
    state = DEFERRED if 400 <= code < 500 else FAILED
    return Outcome(state, code, f"{code} {scrub(message)}", bounce=bounce and code != 421)


# --- a local sink for development, the demo and the benchmark --------------------------------


class SinkHandler:
    """aiosmtpd handler: stores each message as ``<n>-<digest>.eml`` in ``folder`` (or only counts)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.received = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received += 1
        if self.folder is not None:
            data = envelope.original_content or envelope.content
            digest = hashlib.sha256(data).hexdigest()[:12]
            (self.folder / f"{self.received:07d}-{digest}.eml").write_bytes(data)
        return "250 OK"


def run_sink(host: str, port: int, folder: Path | None) -> None:
    """Serve until interrupted; used by ``crm smtp-sink``."""
    from aiosmtpd.controller import Controller

    handler = SinkHandler(folder)
    controller = Controller(handler, hostname=host, port=port, enable_SMTPUTF8=True,
                            data_size_limit=10 * 1024 * 1024)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()
