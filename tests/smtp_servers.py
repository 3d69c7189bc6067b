"""Real SMTP servers on 127.0.0.1 for the delivery tests (aiosmtpd), one of them injecting faults.

The fault is chosen by the recipient's local part, so that one run meets several:
``temp451...`` answers 451 to RCPT, ``full452...`` 452 to DATA's content, ``gone421...``
421 to RCPT, ``perm550...`` 550 to RCPT, ``reject554...`` 554 after the content,
``drop...`` closes the connection after the content arrived (before replying),
``flaky...`` answers 451 to RCPT the first time only, ``slow...`` waits before replying.
Everything else is accepted and kept.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import Counter
from email import policy
from email.parser import BytesParser
from typing import Self

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyHandler:
    def __init__(self, slow_seconds: float = 0.2) -> None:
        self.messages: list[bytes] = []
        self.rcpt_tries: Counter[str] = Counter()
        self.rcpt_times: dict[str, list[float]] = {}  # monotonic time of every RCPT, per address
        self.lock = threading.Lock()
        self.slow_seconds = slow_seconds
        self.connections = 0  # EHLOs seen: one per connection, two with STARTTLS

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        with self.lock:
            self.rcpt_tries[address] += 1
            self.rcpt_times.setdefault(address, []).append(time.monotonic())
            tries = self.rcpt_tries[address]
        if local.startswith("temp451"):
            return "451 4.3.0 mailbox busy, try again later"
        if local.startswith("gone421"):
            return "421 4.3.2 service shutting down"
        if local.startswith("perm550"):
            return f"550 5.1.1 <{address}>: no such user"
        if local.startswith("flaky") and tries == 1:
            return "451 4.7.1 greylisted, try again"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        local = envelope.rcpt_tos[0].split("@", 1)[0]
        if local.startswith("slow"):
            await asyncio.sleep(self.slow_seconds)
        if local.startswith("full452"):
            return "452 4.2.2 mailbox full"
        if local.startswith("reject554"):
            return "554 5.7.1 message refused"
        if local.startswith("drop"):
            with self.lock:
                self.messages.append(envelope.original_content or envelope.content)
            server.transport.close()  # the content arrived; the reply never will
            return "250 OK"
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def parsed(self):
        return [BytesParser(policy=policy.default).parsebytes(m) for m in self.messages]


class SmtpServer:
    """``with SmtpServer() as srv``: a real server on a free port; ``srv.url`` for CRM_SMTP_URL."""

    def __init__(self, **kw) -> None:
        self.handler = FaultyHandler(**kw)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True)

    @property
    def url(self) -> str:
        return f"smtp+insecure://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def self_signed_context(folder) -> ssl.SSLContext:
    """A server TLS context with a throw-away certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class SecureSmtpServer(SmtpServer):
    """STARTTLS required and a login (user ``crm``, password ``s3cret``), or implicit TLS with ``implicit``."""

    def __init__(self, folder, implicit: bool = False, **kw) -> None:
        from aiosmtpd.smtp import AuthResult

        self.handler = FaultyHandler(**kw)
        self.port = free_port()
        self.logins: list[str] = []
        ctx = self_signed_context(folder)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == b"crm" and auth_data.password == b"s3cret"
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=ok, handled=False)

        # With implicit TLS aiosmtpd cannot see the socket is encrypted: it is, so AUTH may be offered.
        options = ({"ssl_context": ctx, "auth_require_tls": False} if implicit
                   else {"tls_context": ctx, "require_starttls": True})
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, auth_required=True,
                                     authenticator=authenticator, enable_SMTPUTF8=True, **options)
        self.implicit = implicit

    def url_with(self, password: str) -> str:
        scheme = "smtps" if self.implicit else "smtp+starttls"
        return f"{scheme}://crm:{password}@127.0.0.1:{self.port}?validate_certs=false"
