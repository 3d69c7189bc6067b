"""Addresses that must not get marketing mail, and the signed tokens of unsubscribe links.

Both are keyed (``crm_tasks/store/keys.py``): a suppression is stored as an HMAC
of the normalised address under the hashing key (so that it can outlive the purge
of the profile without keeping the address), and an unsubscribe token is signed
with the signing key, so that it cannot be forged or reused for another customer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import Connection, delete

from crm_tasks.errors import InvalidToken
from crm_tasks.store.bulk import IN_CHUNK, dialect_insert
from crm_tasks.store.keys import b64, sign, unb64
from crm_tasks.store.models import AddressBounce, Suppression


def normalise_email(address: str) -> str:
    return address.strip().lower()


def email_hash(address: str, secret: str) -> str:
    """The suppression list's key for an address: HMAC-SHA256, hex."""
    return hmac.new(secret.encode(), normalise_email(address).encode(), hashlib.sha256).hexdigest()


def _signature(customer_id: str, secret: str) -> bytes:
    return sign(secret, b"unsubscribe", customer_id.encode())


def unsubscribe_token(customer_id: str, secret: str) -> str:
    """A URL-safe token naming the customer, signed so that it works for that customer only."""
    return f"{b64(customer_id.encode())}.{b64(_signature(customer_id, secret))}"


def verify_unsubscribe_token(token: str, secrets: tuple[str, ...]) -> str:
    """The customer id a token was issued for; InvalidToken unless it was signed with one of ``secrets``
    (the signing key, and retired ones still in their grace period)."""
    try:
        ident, sig = token.split(".", 1)
        customer_id = unb64(ident).decode()
        given = unb64(sig)
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


# Soft bounces (temporary recipient failures) are counted per address hash, at send time (``send.py``) and
# when a late report or a provider says so (``feedback.py``); ``delivery.soft_bounce_limit`` of them in a row
# suppress the address (reason ``soft_bounce``), and an accepted message ends the run.
SOFT_BOUNCE_ROWS = 200  # rows per statement: 4 bound values each, well within SQLite's limit


def add_soft_bounces(conn: Connection, bounced: Mapping[str, int], now: datetime) -> dict[str, int]:
    """Add ``bounced`` (address hash -> how many more soft bounces) to the counts; returns each of these
    addresses' count since its last accepted message, for the caller to compare with the limit."""
    items = list(bounced.items())
    totals: dict[str, int] = {}
    for i in range(0, len(items), SOFT_BOUNCE_ROWS):
        stmt = dialect_insert(conn)(AddressBounce).values([
            {"email_hash": h, "soft_bounces": n, "last_code": None, "updated_at": now}
            for h, n in items[i:i + SOFT_BOUNCE_ROWS]])
        stmt = stmt.on_conflict_do_update(
            index_elements=["email_hash"],
            set_={"soft_bounces": AddressBounce.soft_bounces + stmt.excluded.soft_bounces, "updated_at": now})
        totals.update(conn.execute(stmt.returning(AddressBounce.email_hash, AddressBounce.soft_bounces)).all())
    return totals


def clear_soft_bounces(conn: Connection, hashes: Iterable[str]) -> None:
    """An accepted message ends its address's run of soft bounces."""
    hashes = list(hashes)
    for i in range(0, len(hashes), IN_CHUNK):
        conn.execute(delete(AddressBounce).where(AddressBounce.email_hash.in_(hashes[i:i + IN_CHUNK])))
