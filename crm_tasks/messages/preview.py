"""Looking at messages before anyone receives them: every template checked, one message previewed."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.utils import formataddr
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import Engine, select

from crm_tasks.campaigns.audience import COLUMNS, PROFILE
from crm_tasks.campaigns.definitions import get_campaign
from crm_tasks.errors import ConfigError, RenderError
from crm_tasks.messages.render import language_of, message_context, renderer_for
from crm_tasks.settings import Settings
from crm_tasks.store.models import Customer

# Sample customers for `crm templates check`: the awkward cases, not the pleasant ones.
SAMPLES = [
    {"first_name": "Asha", "coupon": True, "recommendations": 3, "years": 3, "favourite": "grocery"},
    {"first_name": "<script>alert(1)</script>", "coupon": False, "recommendations": 0, "years": None,
     "favourite": None},
    {"first_name": "", "coupon": True, "recommendations": 1, "years": 1, "favourite": "electronics"},
    {"first_name": "علی‌رضا", "coupon": True, "recommendations": 2, "years": 12, "favourite": "home"},
]


def check_templates(cfg: Settings) -> dict:
    """Render every template in every language against SAMPLES; errors are collected, not raised."""
    renderer = renderer_for(cfg)
    templates = renderer.templates()
    english = set(renderer.catalogs.get("en", {}))
    missing = {lang: sorted(english - set(cat)) for lang, cat in renderer.catalogs.items() if english - set(cat)}
    errors: list[str] = []
    rendered = 0
    today = date(2026, 2, 28)
    for template in templates:
        for lang in renderer.languages:
            labels = renderer.labels(lang, "category.")
            for i, s in enumerate(SAMPLES):
                coupon = ({"code": "K7PX2M9QRT", "value": Decimal(15), "type": "percent", "currency": None,
                           "expires_on": today + timedelta(days=14)} if s["coupon"] and i % 2 == 0 else
                          {"code": "K7PX2M9QRT", "value": Decimal(500), "type": "amount", "currency": "INR",
                           "expires_on": today + timedelta(days=30)} if s["coupon"] else None)
                ctx = message_context(
                    cfg, campaign=template, lang=lang, locale=None, first_name=s["first_name"],
                    occasion_date=today, years=s["years"], years_as_customer=s["years"] or 0,
                    favourite_category=s["favourite"],
                    recommendations=[(f"SKU-{n}", s["favourite"] or "grocery") for n in range(s["recommendations"])],
                    coupon=coupon, unsubscribe_url="https://crm.example.com/unsubscribe/sample", labels=labels)
                try:
                    msg = renderer.render(template, ctx)
                    if "<script>" in msg.html:
                        raise RenderError(f"template {template} ({lang}): a first name reached the HTML unescaped")
                    if ctx["unsubscribe_url"] not in msg.html or ctx["unsubscribe_url"] not in msg.text:
                        raise RenderError(f"template {template} ({lang}): no unsubscribe link in HTML and text")
                    rendered += 1
                except RenderError as exc:
                    errors.append(f"sample {i + 1}: {exc}")
    return {"templates": templates, "languages": renderer.languages, "rendered": rendered,
            "missing": missing, "errors": errors}


def preview_message(engine: Engine, cfg: Settings, campaign_name: str, customer_id: str, out: Path, *,
                    locale: str | None = None, as_of: date | None = None, variant: str | None = None) -> dict:
    """Render ``campaign_name`` for one customer, whether or not the trigger selects them that day; for an
    A/B test, as ``variant`` (default: the first)."""
    from crm_tasks.campaigns.planning import build_contexts
    from crm_tasks.clock import cutoff_for

    campaign = get_campaign(cfg, campaign_name)
    renderer = renderer_for(cfg)
    names = [v.name for v in campaign.variants]
    if variant is not None and variant not in names:
        raise ConfigError(f"--variant {variant!r}: campaign {campaign.name} has "
                          f"{'the variants ' + ', '.join(names) if names else 'no variants'}")
    chosen = next((v for v in campaign.variants if v.name == variant), campaign.variants[0] if names else None)
    template = (chosen.template if chosen else None) or campaign.template
    renderer.check(template)
    as_of = as_of or datetime.now(ZoneInfo(cfg.timezone)).date()
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(select(*PROFILE).where(Customer.customer_id == customer_id)).all(),
                            columns=COLUMNS)
        if rows.empty:
            raise ConfigError(f"no customer with id {customer_id!r}")
        if locale and locale not in renderer.languages:
            raise ConfigError(f"--locale {locale!r}: templates exist in {', '.join(renderer.languages)}")
        rows["lang"] = locale or language_of(rows.at[0, "locale"], renderer.languages)
        rows["years"] = pd.array([pd.NA], dtype="Int64")
        rows["coupon_code"] = "PREVIEW000" if campaign.coupon else None
        rows["variant"], rows["template"] = chosen.name if chosen else None, template
        [context] = build_contexts(conn, cfg, campaign, as_of, rows, renderer, cutoff_for(as_of, cfg.timezone))
    msg = renderer.render(template, context)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{campaign.name}-{customer_id}-{context['lang']}"
    # UTF-8 headers (RFC 6532): the standard library's encoded-word folding can drop the space
    # between two Persian words. Delivery builds its own MIME; this file is only to look at.
    mail = EmailMessage(policy=policy.SMTPUTF8)
    mail["Subject"] = msg.subject
    mail["From"] = formataddr((cfg.campaigns.sender.name, cfg.campaigns.sender.email))
    mail["To"] = f"customer-{customer_id}@preview.invalid"  # never the real address: previews get shared
    mail.set_content(msg.text)
    mail.add_alternative(msg.html, subtype="html")
    stem.with_suffix(".eml").write_bytes(bytes(mail))
    stem.with_suffix(".html").write_text(msg.html, encoding="utf-8")
    return {"campaign": campaign.name, "customer_id": customer_id, "lang": context["lang"],
            "variant": chosen.name if chosen else None, "subject": msg.subject,
            "eml": str(stem.with_suffix(".eml")), "html": str(stem.with_suffix(".html"))}
