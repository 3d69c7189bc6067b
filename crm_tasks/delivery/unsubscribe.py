"""One-click unsubscribe (RFC 8058): a small ASGI app, mounted by the Airflow plugin under ``/crm``.

``POST /unsubscribe/<token>`` with ``List-Unsubscribe=One-Click`` (what mail clients send) or
the confirmation page's button unsubscribes at once: no login, no cookies, since the signed
token is the proof. ``GET`` only shows the confirmation page and changes nothing, because
link scanners and previews follow GETs. A token is an HMAC of the customer id
(``crm_tasks.delivery.suppression``): it cannot be forged, nor changed to name another customer.

The unsubscribe is a suppression row (a keyed hash of the address, with the customer id),
which planning and delivery both read, and which outlives a later re-import of the profile.
"""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, Engine, select

from crm_tasks.delivery import clicks, webhooks
from crm_tasks.delivery.suppression import add_suppressions, email_hash, verify_unsubscribe_token
from crm_tasks.errors import InvalidToken
from crm_tasks.settings import Settings, settings
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import ArchivedCustomer, ArchiveStatus, Customer, CustomerMerge, Suppression

NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}
# The one-click body is "List-Unsubscribe=One-Click": a public route reads no more than this.
MAX_BODY_BYTES = 1024
# What a link of ours looks like: a base64url customer id (at most 64 bytes) and a 16-byte signature.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,86}\.[A-Za-z0-9_-]{22}")


class Outcome(StrEnum):
    """What an unsubscribe did, for the page and the tests."""

    RECORDED = "recorded"  # a new suppression now stops every later plan and send
    ALREADY = "already"  # the address was suppressed before (an earlier click, a purge, an erasure)
    UNKNOWN = "unknown"  # the CRM keeps no trace of the customer: nothing could be recorded


class Strikes:
    """Sources that keep sending links that are not valid (guessing ids, scanning) are refused for the
    rest of the minute: a valid link is never counted, so no real opt-out is ever turned away. In memory,
    per api-server process, for at most ``max_sources`` sources (past that it starts afresh)."""

    def __init__(self, limit: int = 30, window: float = 60.0, clock=time.monotonic, max_sources: int = 10_000):
        self.limit, self.window, self.clock, self.max_sources = limit, window, clock, max_sources
        self._seen: dict[str, tuple[float, int]] = {}

    def blocked(self, source: str) -> bool:
        start, count = self._seen.get(source, (0.0, 0))
        return count >= self.limit and self.clock() - start < self.window

    def strike(self, source: str) -> None:
        now = self.clock()
        start, count = self._seen.get(source, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if len(self._seen) >= self.max_sources:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            if len(self._seen) >= self.max_sources:
                self._seen.clear()
        self._seen[source] = (start, count + 1)


# A merged-away profile names its survivor; a survivor may itself be merged later.
MAX_MERGE_HOPS = 10


def _address(conn: Connection, customer_id: str) -> str | None:
    """The customer's address: the live profile's, else the archived copy's (in its grace period)."""
    live = conn.execute(select(Customer.email).where(Customer.customer_id == customer_id)).scalar()
    if live:
        return live
    a = ArchivedCustomer
    return conn.execute(select(a.email).where(a.customer_id == customer_id, a.status == ArchiveStatus.ARCHIVED,
                                              a.email.is_not(None)).order_by(a.id.desc()).limit(1)).scalar()


def _current_id(conn: Connection, customer_id: str) -> str:
    """The profile a customer id lives on now: itself, or the survivor it was merged into."""
    for _ in range(MAX_MERGE_HOPS):
        survivor = conn.execute(select(CustomerMerge.survivor_id).where(CustomerMerge.merged_id == customer_id)
                                .order_by(CustomerMerge.id.desc()).limit(1)).scalar()
        if survivor is None:
            break
        customer_id = survivor
    return customer_id


def unsubscribe(engine: Engine, cfg: Settings, customer_id: str, reason: str = "unsubscribed") -> Outcome:
    """Suppress the customer's address for marketing mail, whatever state the profile is in: live,
    archived (in its grace period), merged into another profile, purged or erased (their address is
    suppressed by hash already). Idempotent: a second click changes nothing."""
    with engine.begin() as conn:
        current = _current_id(conn, customer_id)
        email = _address(conn, current)
        if email:
            hashing = load_keys(conn, cfg).hashing
            new = add_suppressions(conn, [{"email_hash": email_hash(email, hashing), "customer_id": current,
                                           "reason": reason, "created_at": datetime.now(UTC)}])
            return Outcome.RECORDED if new else Outcome.ALREADY
        known = conn.execute(select(Suppression.email_hash).where(Suppression.customer_id.in_({customer_id, current}))
                             .limit(1)).first()
        return Outcome.ALREADY if known else Outcome.UNKNOWN


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(text, status_code=status, headers=NO_STORE)


def create_app(get_settings=settings, get_engine=None, strikes: Strikes | None = None) -> FastAPI:
    """The app; settings and the engine are read on the first request, never at import (plugins load early)."""
    app = FastAPI(title="CRM unsubscribe", docs_url=None, redoc_url=None, openapi_url=None)
    strikes = strikes or Strikes()

    @lru_cache(maxsize=1)
    def engine() -> Engine:
        if get_engine is not None:
            return get_engine()
        from crm_tasks.store.engine import make_engine

        return make_engine(get_settings().resolved_database_url())

    def customer_for(token: str, request: Request) -> str | None:
        """The customer a valid link names; None (and a strike for its source) for any other."""
        if TOKEN_SHAPE.fullmatch(token):  # no database read for what cannot be a link of ours
            with engine().connect() as conn:
                keys = load_keys(conn, get_settings())
            try:
                return verify_unsubscribe_token(token, keys.verifying)
            except InvalidToken:
                pass
        strikes.strike(_source(request))
        return None

    def refused(request: Request):
        if strikes.blocked(_source(request)):
            page = _page("Too many links that are not valid", "<p>Try again in a minute.</p>", 429)
            page.headers["Retry-After"] = str(int(strikes.window))
            return page
        return None

    invalid = ("Link not valid", ("<p>This unsubscribe link is not valid. Use the link from your e-mail, "
                                  "or reply to it asking to be removed.</p>"), 400)

    @app.get("/unsubscribe/{token}")
    def confirm(token: str, request: Request):
        if (page := refused(request)) is not None:
            return page
        if customer_for(token, request) is None:
            return _page(*invalid)
        action = html.escape(token)
        return _page("Unsubscribe", f"<p>Stop marketing e-mails from {html.escape(get_settings().campaigns.sender.name)}"
                                    f"?</p><form method='post' action='{action}'>"
                                    "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
                                    "<button type='submit'>Unsubscribe</button></form>")

    @app.post("/unsubscribe/{token}")
    async def one_click(token: str, request: Request):
        if (page := refused(request)) is not None:
            return page
        customer_id = customer_for(token, request)
        if customer_id is None:
            return _page(*invalid)
        body = await _bounded_body(request, MAX_BODY_BYTES)
        if body is None:
            return _page("Request too large", "<p>Nothing was changed.</p>", 413)
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return _page("Unsubscribe", "<p>Nothing was changed: the request did not ask to unsubscribe "
                                        "(List-Unsubscribe=One-Click).</p>", 400)
        if unsubscribe(engine(), get_settings(), customer_id) is Outcome.UNKNOWN:
            return _page("Address not found", "<p>We keep no e-mail address for this link, so there was nothing "
                                              "to unsubscribe. If you still get e-mails from us, reply to one "
                                              "asking to be removed.</p>", 404)
        return _page("You are unsubscribed", "<p>You will get no more marketing e-mails from us.</p>")

    clicks.add_routes(app, engine, get_settings, strikes)  # /r/{token}, /o/{token}.gif
    webhooks.add_routes(app, engine, get_settings, strikes)  # /webhooks/ses, /webhooks/mailgun
    return app


def _source(request: Request) -> str:
    """Who sent a request, for the count of links that are not valid: the client's address."""
    return request.client.host if request.client else "unknown"


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is (or says it will be) longer than ``limit`` bytes:
    an anonymous sender must not make the server hold a large body in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
