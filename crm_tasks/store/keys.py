"""The deployment's secret keys: none is written in the source.

``crm db upgrade`` generates two random keys into ``secret_keys``:

- the **hashing** key keys the suppression list's address hashes. It never rotates: a
  suppression outlives the purge of its profile, and a purged address cannot be hashed
  again under a new key.
- the **signing** key signs unsubscribe and click links. ``crm db rotate-key``
  replaces it; the retired key still verifies the links already sent for a grace period.

``CRM_SECRET_KEY`` (at least 32 characters), when set, signs instead of the database's key, so
that the signing key can be kept out of the database; ``CRM_PREVIOUS_SECRET_KEYS`` (comma-separated)
still verify after it changes. The hashing key stays the database's either way.

``sign`` is the one way a link is signed (the unsubscribe token, the click and open tokens): each
purpose signs under its own prefix, so that a token made for one can never verify as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from crm_tasks.errors import ConfigError
from crm_tasks.settings import Settings
from crm_tasks.store.models import SecretKey

HASHING, SIGNING = "hashing", "signing"
SIGNATURE_BYTES = 16  # 128 bits of HMAC-SHA256: unforgeable, and 22 characters in a URL


@dataclass(frozen=True)
class Keys:
    """What signs, verifies and hashes. Never logged: the reprs show no key."""

    signing: str = field(repr=False)
    verifying: tuple[str, ...] = field(repr=False)  # the signing key first, then retired ones in their grace
    hashing: str = field(repr=False)
    source: str = "database"  # or "environment" (CRM_SECRET_KEY signs)


@dataclass(frozen=True)
class Rotation:
    """What ``crm db rotate-key`` did (no key in it)."""

    new_key_id: int
    retired_key_ids: list[int]
    old_links_valid_until: str


# The keys in force at :now, current ones first, newest first. Built once: the public click route reads the
# keys on every click, and building the statement cost more than running it.
_IN_FORCE = (select(SecretKey.purpose, SecretKey.secret)
             .where(or_(SecretKey.retired_at.is_(None), SecretKey.valid_until > bindparam("now")))
             .order_by(SecretKey.retired_at.is_not(None), SecretKey.id.desc()))


def load_keys(conn: Connection, cfg: Settings, now: datetime | None = None) -> Keys:
    """The keys in force at ``now`` (default: the clock's)."""
    rows = conn.execute(_IN_FORCE, {"now": now or datetime.now(UTC)}).all()
    hashing = [s for p, s in rows if p == HASHING]
    signing = [s for p, s in rows if p == SIGNING]
    if not hashing or not signing:
        raise ConfigError("the CRM database holds no secret keys; run `crm db upgrade`, which generates them")
    if cfg.secret_key is not None:
        own = [cfg.secret_key.get_secret_value()]
        previous = cfg.previous_secret_keys.get_secret_value() if cfg.previous_secret_keys else ""
        own += [p.strip() for p in previous.split(",") if p.strip()]
        return Keys(own[0], tuple(own), hashing[0], "environment")
    return Keys(signing[0], tuple(signing), hashing[0])


def rotate_signing_key(conn: Connection, cfg: Settings, grace_days: int,
                       now: datetime | None = None) -> Rotation:
    """A new random signing key; the current one retires and still verifies for ``grace_days``, and no
    earlier one verifies longer than that."""
    if cfg.secret_key is not None:
        raise ConfigError("CRM_SECRET_KEY is set, so it signs, not the database's key: rotate it by setting "
                          "CRM_SECRET_KEY to a new value and CRM_PREVIOUS_SECRET_KEYS to the old one until "
                          "the links already sent may expire")
    if grace_days < 0:
        raise ConfigError(f"--grace-days must be 0 or more, not {grace_days}")
    now = now or datetime.now(UTC)
    k = SecretKey
    until = now + timedelta(days=grace_days)
    retired = conn.execute(update(k).where(k.purpose == SIGNING, k.retired_at.is_(None))
                           .values(retired_at=now, valid_until=until).returning(k.id)).scalars().all()
    # Never longer than this rotation allows: `--grace-days 0` after a leak revokes every older key too.
    conn.execute(update(k).where(k.purpose == SIGNING, k.valid_until > until).values(valid_until=until))
    new = conn.execute(insert(k).values(purpose=SIGNING, secret=secrets.token_hex(32), created_at=now)
                       .returning(k.id)).scalar_one()
    return Rotation(new, sorted(retired), until.isoformat(timespec="seconds"))


def sign(secret: str, purpose: bytes, data: bytes) -> bytes:
    """A link's signature: HMAC-SHA256 of ``purpose``, NUL, ``data`` under ``secret``, truncated."""
    return hmac.new(secret.encode(), purpose + b"\x00" + data, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def b64(raw: bytes) -> str:
    """URL-safe base64 without padding (what a link carries)."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    """The bytes of ``b64``; ValueError (binascii.Error) for text that is not its output."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
