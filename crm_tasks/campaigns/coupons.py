"""Coupon codes: unique, unguessable, easy to read aloud at a till; what each is valid on; and how they
were redeemed."""

from __future__ import annotations

import enum
import secrets
from dataclasses import asdict, dataclass, field

import numpy as np
from sqlalchemy import ColumnElement, Connection, Engine, and_, case, func, or_, select
from sqlalchemy.orm import aliased

from crm_tasks.store.bulk import rows_in
from crm_tasks.store.models import Coupon, Purchase

# No 0/O, 1/I/L: nothing a cashier or a customer can misread.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10  # 31^10 ≈ 8·10^14 codes: guessing one is hopeless, collisions vanishingly rare


class CouponScope(enum.StrEnum):
    """What an issued coupon is valid on (``coupons.scope``); ``scope_value`` names the category or sku."""

    ANY = "any"
    CATEGORY = "category"
    PRODUCT = "product"


def in_scope(coupon, purchase) -> ColumnElement[bool]:
    """The one rule of "a purchase matches its coupon's scope": an unscoped coupon matches every purchase, a
    category coupon the purchases of that category, a product coupon the purchases of that sku. ``coupon`` and
    ``purchase`` are Coupon and Purchase or aliases of them. Redemptions use it as an expression, attribution as
    SQL text (``in_scope_sql``), and campaign results count coupons from attribution: one definition for all."""
    return or_(coupon.scope == CouponScope.ANY.value,
               and_(coupon.scope == CouponScope.CATEGORY.value, purchase.category == coupon.scope_value),
               and_(coupon.scope == CouponScope.PRODUCT.value, purchase.sku == coupon.scope_value))


def in_scope_sql(coupon: str = "c", purchase: str = "p") -> str:
    """``in_scope`` as an SQL condition over the aliases ``coupon`` (coupons) and ``purchase`` (purchases), for
    modules that write their SQL as text. Literal values only, no parameters: the same on both dialects."""
    expr = in_scope(aliased(Coupon, name=coupon), aliased(Purchase, name=purchase))
    return f"({expr.compile(compile_kwargs={'literal_binds': True})})"


def random_codes(n: int, length: int = CODE_LENGTH) -> list[str]:
    """``n`` codes from the OS's cryptographic random source, uniform over ALPHABET.

    Bytes at or above the largest multiple of the alphabet size are rejected, so
    that no symbol is likelier than another (a plain modulo would favour the first few).
    """
    size = len(ALPHABET)
    limit = 256 - 256 % size
    need = n * length
    symbols = np.empty(0, dtype=np.uint8)
    while symbols.size < need:
        raw = np.frombuffer(secrets.token_bytes(int((need - symbols.size) * 1.1) + 16), dtype=np.uint8)
        symbols = np.concatenate([symbols, raw[raw < limit] % size])
    table = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)
    chars = table[symbols[:need]].reshape(n, length) if n else np.empty((0, length), dtype=np.uint8)
    return [row.tobytes().decode() for row in chars]


def unique_codes(conn: Connection, n: int) -> list[str]:
    """``n`` codes unique among themselves and against every code already issued."""
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < n:
        fresh = [c for c in dict.fromkeys(random_codes(n - len(codes))) if c not in seen]
        taken = {code for (code,) in rows_in(conn, select(Coupon.code), Coupon.code, fresh)}
        fresh = [c for c in fresh if c not in taken]
        codes += fresh
        seen |= set(fresh)
    return codes


@dataclass
class CampaignRedemptions:
    campaign: str
    issued: int
    redeemed: int  # codes used in at least one purchase within their scope
    by_other_customer: int  # ...of which by someone else than the customer it was issued to
    after_expiry: int  # purchases within scope that carried a code after its last valid day
    outside_scope: int = 0  # purchases that carried a code outside its scope: not redemptions
    revenue: dict[str, str] = field(default_factory=dict)  # currency -> net amount of the redeeming purchases

    @property
    def rate(self) -> float:
        return round(self.redeemed / self.issued, 4) if self.issued else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"redemption_rate": self.rate}


def redemptions(engine: Engine, campaign: str | None = None) -> list[CampaignRedemptions]:
    """Redemption per campaign, matched from purchases carrying ``coupon_code``.

    Only a purchase within the coupon's scope (``in_scope``) redeems it; one outside is counted in
    ``outside_scope`` and nowhere else (the till may have taken the code, but the offer was not what it
    paid for). A code used after its last valid day (by the purchase's UTC date) still counts as redeemed,
    and is counted again in ``after_expiry``: the till took it, and finance wants to know.
    """
    c, p = Coupon, Purchase
    where = [] if campaign is None else [c.campaign == campaign]
    used = (select(c.campaign, c.code, c.customer_id.label("owner"), c.expires_on, p.customer_id, p.amount,
                   p.currency, p.purchased_at, case((in_scope(c, p), 1), else_=0).label("fits"))
            .join(p, p.coupon_code == c.code).where(*where))
    u = used.subquery()
    fits = u.c.fits == 1
    with engine.connect() as conn:
        issued = dict(conn.execute(select(c.campaign, func.count()).where(*where).group_by(c.campaign)).all())
        counts = conn.execute(
            select(u.c.campaign, func.count(case((fits, u.c.code)).distinct()),
                   func.count(case((fits & (u.c.customer_id != u.c.owner), u.c.code)).distinct()),
                   func.sum(case((fits & (func.date(u.c.purchased_at) > u.c.expires_on), 1), else_=0)),
                   func.sum(case((fits, 0), else_=1)))
            .group_by(u.c.campaign)).all()
        revenue = conn.execute(select(u.c.campaign, u.c.currency, func.sum(u.c.amount)).where(fits)
                               .group_by(u.c.campaign, u.c.currency)).all()
    out = {name: CampaignRedemptions(name, n, 0, 0, 0) for name, n in issued.items()}
    for name, redeemed, by_other, late, outside in counts:
        row = out[name]
        row.redeemed, row.by_other_customer, row.after_expiry = redeemed, by_other, int(late or 0)
        row.outside_scope = int(outside or 0)
    for name, currency, amount in revenue:
        out[name].revenue[currency] = str(amount)  # Money-typed: exact Decimal on both dialects
    return sorted(out.values(), key=lambda s: s.campaign)
