"""Erasure on request: a person's personal data removed from every place the CRM keeps it.

``erase(engine, cfg, email=..., customer_id=...)`` finds the person's profiles (current
and archived, and the duplicates merged into them), then, in one transaction:

| where | what happens |
|---|---|
| ``customers`` | the profile is deleted |
| ``archived_customers`` | an archived copy is emptied (status ``purged``): only ids, reason and dates stay |
| ``quarantine`` | rejected input lines holding the customer id, the address or the phone are replaced by ``[erased]`` (the reason stays: reasons never quote values) |
| ``messages`` | the recipient address and the first name in the render context are blanked; the rest of the ledger stays, so that frequency caps and campaign figures do not change |
| ``campaign_plan``, ``coupons`` | no personal columns: kept under the customer id, which without the profile is a pseudonym (like the purchases it shares with) |
| ``suppressions`` | a keyed hash of each address is added (reason ``erased``), so a later import cannot make the person mailable again |
| rendered previews | ``var/preview/*-<customer id>-*`` files are deleted |
| the local SMTP sink | ``var/mail/*.eml`` (``crm smtp-sink --dir``) files of the person's messages, found by Message-ID, are deleted |

Purchases, metrics, scores and segment history keep the customer id as a pseudonymous
id: sales figures do not change. Landing files are input, owned by the systems that
export them; erasure there is theirs to do. On SQLite the transaction runs with
``secure_delete`` and the write-ahead log is checkpointed afterwards, so that the old
rows do not linger in the file; on PostgreSQL old row versions stay until vacuum.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
from sqlalchemy import Connection, Engine, bindparam, func, or_, select, text, update

from crm_tasks.delivery.suppression import add_suppressions, email_hash, normalise_email
from crm_tasks.errors import ConfigError
from crm_tasks.settings import REPO_ROOT, Settings
from crm_tasks.store import sql
from crm_tasks.store.bulk import rows_in
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import (
    ArchivedCustomer,
    ArchiveStatus,
    CampaignPlanRow,
    Coupon,
    Customer,
    CustomerMerge,
    Message,
    Purchase,
    QuarantinedRow,
)

log = logging.getLogger(__name__)
MAIL_DIR = REPO_ROOT / "var" / "mail"  # where the demo's `crm smtp-sink` keeps what it received
ERASED_LINE = "[erased]"

# The recipient and the first name of the render context go; the rest of the ledger row is pseudonymous.
_REDACT_MESSAGES = "UPDATE messages SET recipient = '', context = {blanked} WHERE customer_id IN ({ids}){extra}"


def _redaction(conn: Connection, ids_sql: str, extra: str):
    blanked = sql.json_blanked("context", ("customer", "first_name"), conn.dialect.name)
    return text(_REDACT_MESSAGES.format(blanked=blanked, ids=ids_sql, extra=extra))


def redact_messages(conn: Connection, ids_sql: str, params: dict, extra: str = "") -> int:
    """Blank the address and first name of the messages of the customers ``ids_sql`` selects."""
    stmt = _redaction(conn, ids_sql, extra)
    if "as_of" in params:
        from sqlalchemy import Date

        stmt = stmt.bindparams(bindparam("as_of", type_=Date))
    return conn.execute(stmt, params).rowcount


@dataclass
class ErasureResult:
    customer_ids: list[str]  # the profiles found (current, archived, merged into them)
    removed: dict[str, int] = field(default_factory=dict)  # table (or folder) -> rows or files cleared
    kept: dict[str, int] = field(default_factory=dict)  # pseudonymous rows left, by table
    suppressed: int = 0  # address hashes added to suppressions

    def to_dict(self) -> dict:
        return {"customer_ids": self.customer_ids, "removed": self.removed, "kept": self.kept,
                "suppressed": self.suppressed}

    def summary(self) -> dict:
        return self.to_dict()


def _national(phone: str) -> str | None:
    """The national significant number of a stored E.164 phone: the digits an input line holds in any notation."""
    try:
        return str(phonenumbers.parse(phone, None).national_number)
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", phone)
        return digits or None


def _line_matches(line: str, ids: set[str], emails: set[str], phones: set[str]) -> bool:
    if any(re.search(rf"(?<![\w.-]){re.escape(i)}(?![\w.-])", line) for i in ids):
        return True
    lower = line.lower()
    if any(e in lower for e in emails):
        return True
    digits = re.sub(r"\D", "", line)
    return any(p in digits for p in phones)


def erase(engine: Engine, cfg: Settings, *, email: str | None = None, customer_id: str | None = None,
          preview_dir: Path | None = None, mail_dir: Path | None = None, today: date | None = None) -> ErasureResult:
    """Erase one person, found by address and/or customer id; returns what was removed, table by table."""
    if not email and not customer_id:
        raise ConfigError("give an e-mail address or a customer id to erase")
    email = normalise_email(email) if email else None
    today = today or datetime.now(ZoneInfo(cfg.timezone)).date()
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # Deleted content is overwritten in the file, not just unlinked from the B-tree.
            conn.exec_driver_sql("PRAGMA secure_delete = ON")
            conn.commit()
        try:
            with conn.begin():
                if sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                result = _erase(conn, cfg, email, customer_id, today)
        finally:
            if sqlite:
                conn.rollback()  # nothing is open after the commit; ends any failed transaction
                conn.exec_driver_sql("PRAGMA secure_delete = OFF")
        if sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.commit()
    result.removed["previews"] = _delete_previews(preview_dir or cfg.preview_dir, result.customer_ids)
    with engine.connect() as conn:
        ids = {mid for (mid,) in rows_in(conn, select(Message.message_id), Message.customer_id, result.customer_ids)}
    result.removed["sink mail"] = _delete_sink_mail(mail_dir or MAIL_DIR, ids - {None})
    log.info("erasure: %d profiles (%s): %s", len(result.customer_ids), ", ".join(result.customer_ids),
             ", ".join(f"{k} {v}" for k, v in result.removed.items()))
    return result


def _erase(conn: Connection, cfg: Settings, email: str | None, customer_id: str | None, today: date) -> ErasureResult:
    c, a, m = Customer, ArchivedCustomer, CustomerMerge
    ids: set[str] = {customer_id} if customer_id else set()
    emails: set[str] = {email} if email else set()
    phones: set[str] = set()
    for table in (c, a):
        cond = [table.customer_id == customer_id] if customer_id else []
        if email:
            cond.append(func.lower(table.email) == email)
        for cid, mail, phone in conn.execute(select(table.customer_id, table.email, table.phone).where(or_(*cond))):
            ids.add(cid)
            emails |= {normalise_email(mail)} if mail else set()
            phones |= {phone} if phone else set()
    # Duplicates merged into (or out of) these profiles are the same person.
    if ids:
        for merged, survivor in conn.execute(select(m.merged_id, m.survivor_id).where(
                or_(m.merged_id.in_(ids), m.survivor_id.in_(ids)))):
            ids |= {merged, survivor}
    ids_list = sorted(ids)
    result = ErasureResult(customer_ids=[i for i in ids_list if _known(conn, i)] or ids_list)
    removed = result.removed
    removed["customers"] = conn.execute(c.__table__.delete().where(c.customer_id.in_(ids_list))).rowcount \
        if ids_list else 0
    emptied = {col: None for col in ("first_name", "last_name", "email", "phone", "birthday", "locale", "timezone",
                                     "country", "email_consent", "attributes", "created_at", "updated_at",
                                     "batch_id")}
    removed["archived_customers"] = conn.execute(
        update(a).where(a.customer_id.in_(ids_list), a.status == ArchiveStatus.ARCHIVED)
        .values(status=ArchiveStatus.PURGED, purged_on=today, **emptied)).rowcount if ids_list else 0
    removed["quarantine"] = _erase_quarantine(conn, ids, emails, {p for p in map(_national, phones) if p})
    recipients = ""
    params: dict = {}
    if emails:
        recipients = " OR LOWER(recipient) IN :emails"
        params["emails"] = sorted(emails)
    ids_sql = ", ".join(f":id_{i}" for i in range(len(ids_list))) or "NULL"
    params |= {f"id_{i}": v for i, v in enumerate(ids_list)}
    stmt = _redaction(conn, ids_sql, recipients)
    if emails:
        stmt = stmt.bindparams(bindparam("emails", expanding=True))
    removed["messages"] = conn.execute(stmt, params).rowcount
    if ids_list:
        result.kept = {
            "campaign_plan": _rows(conn, CampaignPlanRow, CampaignPlanRow.customer_id.in_(ids_list)),
            "coupons": _rows(conn, Coupon, Coupon.customer_id.in_(ids_list)),
            "purchases": _rows(conn, Purchase, Purchase.customer_id.in_(ids_list)),
        }
    now = datetime.now(UTC)
    owner = customer_id or (ids_list[0] if ids_list else None)
    hashing = load_keys(conn, cfg).hashing
    result.suppressed = add_suppressions(conn, [
        {"email_hash": email_hash(address, hashing), "customer_id": owner, "reason": "erased",
         "created_at": now} for address in sorted(emails)])
    return result


def _known(conn: Connection, cid: str) -> bool:
    """Whether the id names anything in the CRM (a profile, an archived one, a merge or purchases)."""
    for table in (Customer, ArchivedCustomer, Purchase):
        if conn.execute(select(table.customer_id).where(table.customer_id == cid).limit(1)).first():
            return True
    return conn.execute(select(CustomerMerge.id).where(or_(CustomerMerge.merged_id == cid,
                                                           CustomerMerge.survivor_id == cid)).limit(1)).first() \
        is not None


def _rows(conn: Connection, model, cond) -> int:
    return conn.execute(select(func.count()).select_from(model).where(cond)).scalar_one()


def _erase_quarantine(conn: Connection, ids: set[str], emails: set[str], phones: set[str]) -> int:
    """Replace the quarantined lines that hold one of the identifiers; returns how many.

    The database narrows the lines with LIKE (ids and addresses verbatim, phones by their
    last four digits, since an input line may write them in any notation); the exact
    test (whole ids, any notation of the phone) is done here.
    """
    q = QuarantinedRow
    terms = [q.raw_text.like(f"%{i}%") for i in ids] + [func.lower(q.raw_text).like(f"%{e}%") for e in emails]
    terms += [q.raw_text.like(f"%{p[-4:]}%") for p in phones]
    if not terms:
        return 0
    hits = [row_id for row_id, raw in conn.execute(select(q.id, q.raw_text).where(or_(*terms),
                                                                                   q.raw_text != ERASED_LINE))
            if _line_matches(raw, ids, emails, phones)]
    for i in range(0, len(hits), 900):
        conn.execute(update(q).where(q.id.in_(hits[i:i + 900])).values(raw_text=ERASED_LINE))
    return len(hits)


def _delete_sink_mail(folder: Path, message_ids: set[str]) -> int:
    """Delete the local sink's .eml files of these messages (the Message-ID header names them)."""
    if not folder.is_dir() or not message_ids:
        return 0
    wanted = {m.encode() for m in message_ids}
    gone = 0
    for path in folder.glob("*.eml"):
        with path.open("rb") as f:
            head = f.read(8192).split(b"\r\n\r\n", 1)[0]
        found = re.search(rb"(?im)^message-id:\s*(<[^>\r\n]+>)", head)
        if found and found.group(1) in wanted:
            path.unlink()
            gone += 1
    return gone


def _delete_previews(folder: Path, ids: list[str]) -> int:
    """Delete rendered previews named ``<campaign>-<customer id>-<lang>.eml|.html``; returns how many."""
    if not folder.is_dir():
        return 0
    wanted = set(ids)
    gone = 0
    for path in folder.iterdir():
        # Campaign names and languages have no '-'; the customer id is what lies between them.
        parts = path.stem.split("-", 1)
        if path.suffix in (".eml", ".html") and len(parts) == 2 and parts[1].rsplit("-", 1)[0] in wanted:
            path.unlink()
            gone += 1
    return gone
