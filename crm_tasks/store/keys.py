"""The deployment's secret keys: none is written in the source.

``crm db upgrade`` generates two random keys into ``secret_keys``:

- the **hashing** key keys the suppression list's address hashes. It never rotates: a
  suppression outlives the purge of its profile, and a purged address cannot be hashed
  again under a new key.
- the **signing** key signs unsubscribe (and later click) links. ``crm db rotate-key``
  replaces it; the retired key still verifies the links already sent for a grace period.

``CRM_SECRET_KEY`` (at least 32 characters), when set, signs instead of the database's key, so
that the signing key can be kept out of the database; ``CRM_PREVIOUS_SECRET_KEYS`` (comma-separated)
still verify after it changes. The hashing key stays the database's either way.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, insert, or_, select, update

from crm_tasks.errors import ConfigError
from crm_tasks.settings import Settings
from crm_tasks.store.models import SecretKey

HASHING, SIGNING = "hashing", "signing"


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


def load_keys(conn: Connection, cfg: Settings, now: datetime | None = None) -> Keys:
    """The keys in force at ``now`` (default: the clock's)."""
    now = now or datetime.now(UTC)
    k = SecretKey
    rows = conn.execute(select(k.purpose, k.secret).where(
        or_(k.retired_at.is_(None), k.valid_until > now)).order_by(k.retired_at.is_not(None), k.id.desc())).all()
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
