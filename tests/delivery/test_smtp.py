"""The SMTP side on its own: TLS and login, timeouts, the rate limit, and where the server is configured."""

from __future__ import annotations

import asyncio
import time

import pytest

from crm_tasks.delivery.smtp import (
    RateLimit,
    SmtpPool,
    SmtpTarget,
    parse_smtp_url,
    prepare_payload,
    target_from_connection,
)
from crm_tasks.errors import ConfigError
from crm_tasks.messages.mime import Envelope, build_message
from tests.smtp_servers import SecureSmtpServer, SmtpServer

MESSAGE = prepare_payload(build_message(Envelope("S", "s@example.com", "r@example.com", "", "hi", "<1@example.com>"),
                                        "text", "<p>html</p>"))


def send_all(target: SmtpTarget, rcpts: list[str], size: int = 2, timeout: float = 5, rate=None):
    async def main():
        async with SmtpPool(target, size, timeout, rate) as pool:
            outcomes = await asyncio.gather(*(pool.send("s@example.com", r, MESSAGE) for r in rcpts))
            return outcomes, pool.opened

    return asyncio.run(main())


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS: it is encrypted
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_tls_and_login_then_connections_are_reused(tmp_path, implicit):
    with SecureSmtpServer(tmp_path, implicit=implicit) as srv:
        outcomes, opened = send_all(parse_smtp_url(srv.url_with("s3cret")), [f"r{i}@example.com" for i in range(6)])
        assert [o.state for o in outcomes] == ["sent"] * 6 and len(srv.handler.messages) == 6
        # Six messages, two connections: one EHLO each (two with STARTTLS, before and after it).
        assert opened == 2 and srv.handler.connections == (2 if implicit else 4)
        wrong, _ = send_all(parse_smtp_url(srv.url_with("wrong")), ["r@example.com"])
    assert wrong[0].state == "deferred" and "login refused" in wrong[0].error and "wrong" not in wrong[0].error


def test_a_server_slower_than_the_timeout_after_the_content_is_unknown_not_retried(tmp_path):
    with SmtpServer(slow_seconds=1.0) as srv:
        [outcome], _ = send_all(parse_smtp_url(srv.url), ["slow@example.com"], timeout=0.3)
    assert outcome.state == "unknown" and "may have been delivered" in outcome.error


def test_the_rate_limit_spreads_sends_and_caps_an_hour():
    with SmtpServer() as srv:
        target = parse_smtp_url(srv.url)
        started = time.monotonic()
        outcomes, _ = send_all(target, [f"r{i}@example.com" for i in range(11)], rate=RateLimit(50, None))
        assert time.monotonic() - started >= 0.2  # 11 sends at 50 a second: at least 10 intervals of 20 ms
        assert {o.state for o in outcomes} == {"sent"}

        async def hourly():
            async with SmtpPool(target, 1, 5, RateLimit(None, 3)) as pool:
                for i in range(3):
                    await pool.send("s@example.com", f"h{i}@example.com", MESSAGE)
                with pytest.raises(TimeoutError):  # the fourth of the hour waits for the hour to pass
                    await asyncio.wait_for(pool.send("s@example.com", "h3@example.com", MESSAGE), 0.3)

        asyncio.run(hourly())
        assert len(srv.handler.messages) == 14


def test_smtp_urls_and_airflow_connections_are_read_like_their_owners_do():
    t = parse_smtp_url("smtp://user%40corp:p%3Ass@mail.example.com")
    assert (t.host, t.port, t.username, t.password, t.tls) == ("mail.example.com", 25, "user@corp", "p:ss", "auto")
    assert "p:ss" not in t.describe()
    assert parse_smtp_url("smtps://m.example.com").port == 465
    assert parse_smtp_url("smtp+starttls://m.example.com").port == 587
    assert parse_smtp_url("smtp+insecure://127.0.0.1:8025?validate_certs=false").validate_certs is False
    with pytest.raises(ConfigError, match="CRM_SMTP_URL must look like"):
        parse_smtp_url("http://mail.example.com")
    # The SMTP provider's defaults: implicit TLS unless disable_ssl, then STARTTLS unless disable_tls.
    assert target_from_connection("m", None, "u", "p", {}).tls == "implicit"
    assert target_from_connection("m", None, None, None, {"disable_ssl": True}).tls == "starttls"
    plain = target_from_connection("m", 2525, None, None, {"disable_ssl": "true", "disable_tls": "true"})
    assert (plain.tls, plain.port) == ("none", 2525)
    with pytest.raises(ConfigError, match="no host"):
        target_from_connection(None, None, None, None, None)
