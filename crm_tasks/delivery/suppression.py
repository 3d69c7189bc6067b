"""Addresses that must not get marketing mail, and the signed tokens of unsubscribe links.

Both are keyed (``crm_tasks/store/keys.py``): a suppression is stored as an HMAC
of the normalised address under the hashing key (so that it can outlive the purge
of the profile without keeping the address), and an unsubscribe token is signed
with the signing key, so that it cannot be forged or reused for another customer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from sqlalchemy import Connection

from crm_tasks.errors import InvalidToken
from crm_tasks.store.bulk import dialect_insert
from crm_tasks.store.models import Suppression


def normalise_email(address: str) -> str:
    return address.strip().lower()


def email_hash(address: str, secret: str) -> str:
    """The suppression list's key for an address: HMAC-SHA256, hex."""
    return hmac.new(secret.encode(), normalise_email(address).encode(), hashlib.sha256).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(customer_id: str, secret: str) -> bytes:
    return hmac.new(secret.encode(), b"unsubscribe\x00" + customer_id.encode(), hashlib.sha256).digest()[:16]


def unsubscribe_token(customer_id: str, secret: str) -> str:
    """A URL-safe token naming the customer, signed so that it works for that customer only."""
    return f"{_b64(customer_id.encode())}.{_b64(_signature(customer_id, secret))}"


def verify_unsubscribe_token(token: str, secrets: tuple[str, ...]) -> str:
    """The customer id a token was issued for; InvalidToken unless it was signed with one of ``secrets``
    (the signing key, and retired ones still in their grace period)."""
    try:
        ident, sig = token.split(".", 1)
        customer_id = _unb64(ident).decode()
        given = _unb64(sig)
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("malformed unsubscribe token") from None
    if not any(hmac.compare_digest(given, _signature(customer_id, s)) for s in secrets):
        raise InvalidToken("unsubscribe token signature does not match")
    return customer_id


def add_suppressions(conn: Connection, rows: list[dict]) -> int:
    """Record suppressions (``email_hash``, ``customer_id``, ``reason``, ``created_at``); an address
    already suppressed keeps its first record. Returns how many were new."""
    if not rows:
        return 0
    stmt = (dialect_insert(conn)(Suppression).values(rows).on_conflict_do_nothing(index_elements=["email_hash"])
            .returning(Suppression.email_hash))  # rowcount is not reliable for a multi-row insert
    return len(conn.execute(stmt).all())
