"""What the cleanup tests share: the dates, a permissive guardrail, and rows read back."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import insert, select

from crm_tasks.delivery.suppression import email_hash
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import ArchivedCustomer, Customer, Suppression
from tests.factories import add_customers, buy

AS_OF = date(2026, 3, 31)
RECENT = datetime(2026, 3, 1, tzinfo=UTC)
LONG_AGO = datetime(2023, 6, 1, tzinfo=UTC)  # more than 24 months before AS_OF
OLDISH = datetime(2024, 9, 1, tzinfo=UTC)  # 19 months before: at risk, not stale


def permissive(cfg, **cleanup):
    """Settings whose guardrail lets a small test base be cleaned (a handful is a large share of 10)."""
    return cfg.model_copy(update={"cleanup": cfg.cleanup.model_copy(update={"max_archive_share": 1.0, **cleanup})})


def ids(engine, model=Customer) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(model.customer_id)).scalars())


def archive_rows(engine) -> dict[str, tuple]:
    a = ArchivedCustomer
    with engine.connect() as conn:
        return {r.customer_id: (r.reason, r.status) for r in conn.execute(select(a))}


def hard_bounce(engine, cfg, customer_id: str, address: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Suppression).values(email_hash=email_hash(address, load_keys(conn, cfg).hashing),
                                                customer_id=customer_id, reason="hard_bounce",
                                                created_at=RECENT))


STALE = {"SILENT": "inactive", "GONE": "inactive", "BOUNCED": "hard_bounce", "NOBODY": "no_contact"}


def config_with_share(path) -> str:
    """A copy of crm.yaml with the guardrail opened (the CLI reads its settings from the file)."""
    import yaml

    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "crm.yaml").read_text(encoding="utf-8"))
    data["cleanup"] = {**(data.get("cleanup") or {}), "max_archive_share": 1.0}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def stale_base(engine, cfg):
    """Ten profiles; five of them stale, one for each rule (and one stale by two)."""
    add_customers(
        engine,
        {"customer_id": "ACTIVE", "updated_at": RECENT},
        {"customer_id": "BUYER", "updated_at": LONG_AGO},  # old profile, recent purchase: kept
        {"customer_id": "EDITED", "updated_at": RECENT},  # bought long ago, profile updated lately: kept
        {"customer_id": "SILENT", "updated_at": LONG_AGO, "birthday": date(1990, 3, 31)},  # never bought
        {"customer_id": "GONE", "updated_at": LONG_AGO, "phone": "+919876543210"},  # last bought long ago
        {"customer_id": "BOUNCED", "updated_at": RECENT},  # address bounced, no phone
        {"customer_id": "BOUNCEPH", "updated_at": RECENT, "phone": "+919812345678"},  # bounced but has a phone
        {"customer_id": "MOVED", "updated_at": RECENT, "email": "new@example.com"},  # bounce of an old address
        {"customer_id": "NOBODY", "updated_at": RECENT, "email": None},  # no contact data at all
        {"customer_id": "OLDISH", "updated_at": OLDISH},  # at risk of going stale
    )
    buy(engine, "BUYER", RECENT)
    buy(engine, "EDITED", LONG_AGO)
    buy(engine, "GONE", LONG_AGO, "250")
    buy(engine, "ACTIVE", RECENT, "40")
    hard_bounce(engine, cfg, "BOUNCED", "bounced@example.com")
    hard_bounce(engine, cfg, "BOUNCEPH", "bounceph@example.com")
    hard_bounce(engine, cfg, "MOVED", "old@example.com")
    return engine
