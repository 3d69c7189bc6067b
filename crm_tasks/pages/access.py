"""Who may open what on the CRM pages, and the audit of every look at a customer's record.

Every page needs a logged-in Airflow user (the plugin's ``login`` dependency). Customer-level pages, segment
member lists and CSV exports of personal data need Airflow's Admin or Op role ("staff"); erasing and
restoring a profile needs Admin. The plugin turns Airflow's user into a ``PageUser`` (its name and role
names, upper case: the simple auth manager's ``role``, the FAB manager's ``roles``), so this package never
imports Airflow.

Erase and restore are POST forms, and two checks make them CSRF-safe, each enough on its own:

- the request must come from the page's own origin: a browser's ``Sec-Fetch-Site`` (when sent) must be
  ``same-origin``, and its ``Origin`` (else ``Referer``) must name the host the request was sent to (``Host``,
  or ``X-Forwarded-Host`` set by a proxy). A form on another site, even a sibling sub-domain that the
  ``_token`` cookie's SameSite=Lax would let through, fails;
- the form carries a token tied to the login: an HMAC (the CRM's signing key, ``crm_tasks.store.keys``) of
  the action, the customer id, a hash of the session's credential (the ``_token`` cookie or the Bearer
  token) and an expiry. Another site cannot read it, and it is worthless under another login.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's annotation, which names a local.
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine, insert

from crm_tasks.settings import Settings
from crm_tasks.store.keys import b64, load_keys, sign
from crm_tasks.store.models import CustomerRecordAudit

STAFF = frozenset({"ADMIN", "OP"})
FORM_TTL_SECONDS = 600  # a confirmation form older than this is refused: open it again
ACTIONS = ("view", "export", "erase", "restore")
SESSION_COOKIE = "_token"  # the Airflow UI's login cookie (airflow.api_fastapi.auth.managers.base_auth_manager)


@dataclass(frozen=True)
class PageUser:
    """The logged-in Airflow user as the pages see it."""

    name: str
    roles: frozenset[str]  # Airflow role names, upper case

    @property
    def staff(self) -> bool:
        return bool(self.roles & STAFF)

    @property
    def admin(self) -> bool:
        return "ADMIN" in self.roles


def requires(who: Callable, role: str) -> Callable:
    """A dependency that answers 403 unless the ``PageUser`` (from ``who``) holds ``role`` ("staff" or
    "admin"); it leaves the user in ``request.state.page_user`` for the route (and its audit row)."""
    if role not in ("staff", "admin"):
        raise ValueError(f"unknown role requirement {role!r}")

    def dependency(request: Request, user: Annotated[PageUser, Depends(who)]) -> None:
        if not getattr(user, role):
            need = "Admin or Op" if role == "staff" else "Admin"
            raise HTTPException(403, f"this page needs Airflow's {need} role")
        request.state.page_user = user

    return dependency


def page_user(request: Request) -> PageUser:
    """The user a ``requires`` dependency of this route let through."""
    return request.state.page_user


def audit(engine: Engine, user: PageUser, customer_id: str, action: str) -> None:
    """One row: who, when, which customer (or ``segment:<name>`` for a segment's export), what. Nothing
    else of the record is written."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    with engine.begin() as conn:
        conn.execute(insert(CustomerRecordAudit).values(at=datetime.now(UTC), username=user.name,
                                                        customer_id=customer_id, action=action))


# --- CSRF -------------------------------------------------------------------------------------------------


def same_origin(request: Request) -> bool:
    """Whether a browser says the request comes from a page of the host it was sent to."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    host = urlsplit(source).netloc.lower()
    return host in {h.lower() for h in (request.headers.get("host"), request.headers.get("x-forwarded-host")) if h}


def _session(request: Request) -> bytes:
    """A hash of the credential the request logged in with: the form token is only good under it."""
    auth = request.headers.get("authorization", "")
    credential = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(SESSION_COOKIE, "")
    return hashlib.sha256(credential.encode()).digest()


def _signed(secret: str, action: str, customer_id: str, session: bytes, expires: int) -> str:
    return b64(sign(secret, b"crm-page-form", b"\x00".join(
        [action.encode(), customer_id.encode(), session, str(expires).encode()])))


def form_token(engine: Engine, cfg: Settings, request: Request, action: str, customer_id: str,
               now: float | None = None) -> str:
    """The token a confirmation form carries for one action on one customer, under this login."""
    expires = int((now or time.time()) + FORM_TTL_SECONDS)
    with engine.connect() as conn:
        secret = load_keys(conn, cfg).signing
    return f"{expires}.{_signed(secret, action, customer_id, _session(request), expires)}"


def check_form(engine: Engine, cfg: Settings, request: Request, action: str, customer_id: str,
               token: str) -> None:
    """403 unless the POST comes from the page's own origin with a valid, unexpired token of this login."""
    if not same_origin(request):
        raise HTTPException(403, "refused: the form was not sent from this site's own page (Origin/Referer)")
    expires, _, mac = token.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        raise HTTPException(403, "the confirmation has expired or is not valid: open the page again")
    with engine.connect() as conn:
        secrets = load_keys(conn, cfg).verifying
    session = _session(request)
    if not any(hmac.compare_digest(mac, _signed(s, action, customer_id, session, int(expires))) for s in secrets):
        raise HTTPException(403, "the confirmation is not valid for this login: open the page again")
