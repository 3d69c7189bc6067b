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
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine, select

from crm_tasks.delivery.suppression import add_suppressions, email_hash, verify_unsubscribe_token
from crm_tasks.errors import InvalidToken
from crm_tasks.settings import Settings, settings
from crm_tasks.store.models import Customer

NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}


def unsubscribe(engine: Engine, cfg: Settings, customer_id: str, reason: str = "unsubscribed") -> bool:
    """Suppress the customer's address for marketing mail; True if a new suppression was recorded.
    Idempotent: a second click changes nothing."""
    with engine.begin() as conn:
        email = conn.execute(select(Customer.email).where(Customer.customer_id == customer_id)).scalar()
        if not email:
            return False  # no profile or no address: there is nothing to mail
        return add_suppressions(conn, [{"email_hash": email_hash(email, cfg.secret_key), "customer_id": customer_id,
                                        "reason": reason, "created_at": datetime.now(UTC)}]) == 1


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(text, status_code=status, headers=NO_STORE)


def create_app(get_settings=settings, get_engine=None) -> FastAPI:
    """The app; settings and the engine are read on the first request, never at import (plugins load early)."""
    app = FastAPI(title="CRM unsubscribe", docs_url=None, redoc_url=None, openapi_url=None)

    @lru_cache(maxsize=1)
    def engine() -> Engine:
        if get_engine is not None:
            return get_engine()
        from crm_tasks.store.engine import make_engine

        return make_engine(get_settings().resolved_database_url())

    def customer_for(token: str) -> str | None:
        try:
            return verify_unsubscribe_token(token, get_settings().secret_key)
        except InvalidToken:
            return None

    invalid = ("Link not valid", ("<p>This unsubscribe link is not valid. Use the link from your e-mail, "
                                  "or reply to it asking to be removed.</p>"), 400)

    @app.get("/unsubscribe/{token}")
    def confirm(token: str):
        if customer_for(token) is None:
            return _page(*invalid)
        action = html.escape(token)
        return _page("Unsubscribe", f"<p>Stop marketing e-mails from {html.escape(get_settings().campaigns.sender.name)}"
                                    f"?</p><form method='post' action='{action}'>"
                                    "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
                                    "<button type='submit'>Unsubscribe</button></form>")

    @app.post("/unsubscribe/{token}")
    async def one_click(token: str, request: Request):
        customer_id = customer_for(token)
        if customer_id is None:
            return _page(*invalid)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return _page("Unsubscribe", "<p>Nothing was changed: the request did not ask to unsubscribe "
                                        "(List-Unsubscribe=One-Click).</p>", 400)
        unsubscribe(engine(), get_settings(), customer_id)
        return _page("You are unsubscribed", "<p>You will get no more marketing e-mails from us.</p>")

    return app
