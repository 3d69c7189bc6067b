"""Which campaign message earned which purchase: the ``attributions`` table, rebuilt as of a cutoff.

The rule (README, "Success measures"), one message per purchase at most:

1. **The coupon wins.** A purchase that redeems a message's coupon belongs to that message, whenever it
   happens and whoever redeems it: the coupon is the proof that the message was used. A purchase that
   carries a targeted coupon's code outside its scope (another category or product) did not redeem it
   (``coupons.in_scope``, the rule redemptions count by) and is left to the next rule.
2. **Otherwise the last touch.** A purchase by a recipient within the attribution window after a sent
   message (``attribution_days`` of its campaign, default ``results.attribution_days``) belongs to the
   latest message sent to them before it; a tie goes to the greater idempotency key, so the choice is
   the same on every run and dialect.

Refunds (negative amounts) follow the same rule, so a refund inside the window reduces the attributed
revenue. Test messages never earn anything. The table is replaced as a whole in one transaction:
recomputing gives identical rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete

from crm_tasks.campaigns.coupons import in_scope_sql
from crm_tasks.store import sql
from crm_tasks.store.models import Attribution
from crm_tasks.store.types import UtcDateTime

# The coupon rule. Walks the purchases once for those with a code (there is no index on coupon_code: a
# scan of purchases costs less than maintaining one on every nightly insert) and joins coupons and
# messages by their primary keys. {in_scope}: the purchase matches the coupon's scope (coupons.in_scope).
_BY_COUPON = """
INSERT INTO attributions (purchase_id, idempotency_key, campaign, run_id, variant, customer_id, rule, amount,
                          currency, purchased_at)
SELECT p.id, m.idempotency_key, m.campaign, m.run_id, m.variant, p.customer_id, 'coupon', p.amount, p.currency,
       p.purchased_at
FROM purchases p
JOIN coupons c ON c.code = p.coupon_code
JOIN messages m ON m.idempotency_key = c.idempotency_key
WHERE p.coupon_code IS NOT NULL AND p.purchased_at < :cutoff AND NOT m.test AND {in_scope}
"""

# The last-touch rule. SQLite drives it by the sent messages, each probing ix_purchases_customer
# (customer_id, purchased_at) for its window; PostgreSQL hashes the messages and streams the purchases
# since the first send (:first_sent, which spares it the history before any campaign). ROW_NUMBER keeps
# the latest message before each purchase.
_BY_WINDOW = """
INSERT INTO attributions (purchase_id, idempotency_key, campaign, run_id, variant, customer_id, rule, amount,
                          currency, purchased_at)
SELECT purchase_id, idempotency_key, campaign, run_id, variant, customer_id, 'window', amount, currency,
       purchased_at
FROM (
    SELECT p.id AS purchase_id, m.idempotency_key, m.campaign, m.run_id, m.variant, p.customer_id, p.amount,
           p.currency, p.purchased_at,
           ROW_NUMBER() OVER (PARTITION BY p.id ORDER BY m.sent_at DESC, m.idempotency_key DESC) AS touch
    FROM messages m
    JOIN purchases p ON p.customer_id = m.customer_id AND p.purchased_at >= m.sent_at
                    AND p.purchased_at < {window_end}
    WHERE m.state = 'sent' AND NOT m.test AND m.sent_at < :cutoff AND p.purchased_at < :cutoff
      AND p.purchased_at >= :first_sent
      AND NOT EXISTS (SELECT 1 FROM attributions a WHERE a.purchase_id = p.id)
) touches
WHERE touch = 1
"""


def window_days_sql(days_by_campaign: dict[str, int], default: int, params: dict) -> str:
    """The attribution window of ``m.campaign`` in days, as a CASE over bound values."""
    whens = []
    for i, (campaign, days) in enumerate(sorted(days_by_campaign.items())):
        params |= {f"wc_{i}": campaign, f"wd_{i}": days}
        whens.append(f"WHEN :wc_{i} THEN :wd_{i}")
    params["wd_default"] = default
    return f"(CASE m.campaign {' '.join(whens)} ELSE :wd_default END)" if whens else ":wd_default"


def attribute(conn: Connection, cutoff: datetime, days_by_campaign: dict[str, int], default_days: int) -> int:
    """Rebuild ``attributions`` with the purchases before ``cutoff``; returns how many were attributed."""
    conn.execute(delete(Attribution))
    params: dict = {"cutoff": cutoff}
    sql.execute(conn, _BY_COUPON.format(in_scope=in_scope_sql("c", "p")), params, cutoff=UtcDateTime())
    first_sent = sql.execute(conn, "SELECT MIN(sent_at) AS first FROM messages WHERE state = 'sent' AND NOT test",
                             result_types={"first": UtcDateTime()}).scalar()
    if first_sent is not None:
        params["first_sent"] = first_sent
        days = window_days_sql(days_by_campaign, default_days, params)
        window_end = sql.plus_days("m.sent_at", days, conn.dialect.name)
        sql.execute(conn, _BY_WINDOW.format(window_end=window_end), params, cutoff=UtcDateTime(),
                    first_sent=UtcDateTime())
    return sql.count(conn, "SELECT COUNT(*) FROM attributions")
