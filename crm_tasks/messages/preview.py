"""Looking at messages before anyone receives them: every template checked, one message previewed."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from email import policy
from email.message import EmailMessage
from email.utils import formataddr
from html import unescape
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import Engine, select

from crm_tasks.analytics.recommendations import Recommendation
from crm_tasks.campaigns.audience import COLUMNS, PROFILE
from crm_tasks.campaigns.definitions import get_campaign, load_campaigns
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
# Samples whose coupon is targeted (coupon.scope), by index: what it is valid on.
SCOPED_SAMPLES = {2: "category", 3: "product"}
# Sample products, as the nightly refresh stores them: each kind of reason, a name in markup (escaped or
# the check fails), a catalogue link with a query of its own, names (of a product and of the one it is recommended
# from) in some languages only, three currencies.
SAMPLE_PRODUCTS = [
    Recommendation("sample", 1, "GROCERY-1027", "cross_sell", "GROCERY-1001", "Basmati Rice 5 kg", 42,
                   "Toor Dal 1 kg", {"hi": "तूर दाल 1 किलो", "te": "కంది పప్పు 1 కిలో", "fa": "عدس زرد ۱ کیلو",
                                     "ur": "توڑ دال 1 کلو"}, "grocery", Decimal("189.00"), "INR",
                   "https://shop.example.com/p/GROCERY-1027?ref=catalogue", "https://img.example.com/GROCERY-1027.jpg",
                   {"te": "బాస్మతి బియ్యం 5 కిలో", "fa": "برنج باسماتی ۵ کیلو", "ur": "باسمتی چاول 5 کلو"}),
    Recommendation("sample", 2, "ELEC-0042", "up_sell", "ELEC-0007", "Earbuds", 1, "<b>Noise-cancelling</b> headphones",
                   {"hi": "नॉइज़-कैंसलिंग हेडफ़ोन"}, "electronics", Decimal("12999.50"), "INR",
                   "https://shop.example.com/p/ELEC-0042", "https://img.example.com/ELEC-0042.jpg"),
    Recommendation("sample", 3, "HOME-0310", "popular", None, None, 1250, "Cotton bedsheet", {}, "home",
                   Decimal("24.90"), "USD", "https://shop.example.com/p/HOME-0310#reviews",
                   "https://img.example.com/HOME-0310.jpg"),
]
UNSUBSCRIBE_SAMPLE = "https://crm.example.com/unsubscribe/sample"
_HREF = re.compile(r"""<a\s(?:[^<>]*?\s)?href\s*=\s*(?:"([^"<>]*)"|'([^'<>]*)')""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"']+")


def links_besides_unsubscribe(html: str, text: str, unsubscribe_url: str) -> tuple[list[str], list[str]]:
    """The http(s) links of a message's HTML part (``<a href>``) and text part (bare URLs), other than the
    unsubscribe link."""
    hrefs = [unescape(a or b).strip() for a, b in _HREF.findall(html)]
    html_links = [h for h in hrefs if h.lower().startswith(("https://", "http://")) and h != unsubscribe_url]
    text_links = [u for u in _TEXT_URL.findall(text) if u != unsubscribe_url]
    return html_links, text_links


def transactional_templates(cfg: Settings) -> set[str]:
    """Templates that only transactional campaigns use: ``global_control: false`` in every campaign file of the
    folder that names the template (its own or a variant's). These may go without a call to action."""
    campaigns, _problems = load_campaigns(cfg)  # a broken file is `crm campaign list`'s to report
    uses: dict[str, list[bool]] = {}
    for c in campaigns:
        for template in {c.template, *(v.template for v in c.variants if v.template)}:
            uses.setdefault(template, []).append(not c.global_control)
    return {t for t, flags in uses.items() if all(flags)}


def check_templates(cfg: Settings) -> dict:
    """Render every template in every language against SAMPLES; errors are collected, not raised.

    A marketing template (any not in ``transactional_templates``) fails when a sample's message has no link
    besides the unsubscribe link, in its HTML part or in its text part: every e-mail needs a call to action.
    """
    renderer = renderer_for(cfg)
    templates = renderer.templates()
    exempt = sorted(transactional_templates(cfg) & set(templates))
    english = set(renderer.catalogs.get("en", {}))
    missing = {lang: sorted(english - set(cat)) for lang, cat in renderer.catalogs.items() if english - set(cat)}
    errors: list[str] = []
    rendered = 0
    today = date(2026, 2, 28)
    folder = cfg.campaigns.templates
    for template in templates:
        for lang in renderer.languages:
            labels = renderer.labels(lang, "category.")
            texts = renderer.labels(lang, "product.")
            for i, s in enumerate(SAMPLES):
                coupon = ({"code": "K7PX2M9QRT", "value": Decimal(15), "type": "percent", "currency": None,
                           "expires_on": today + timedelta(days=14)} if s["coupon"] and i % 2 == 0 else
                          {"code": "K7PX2M9QRT", "value": Decimal(500), "type": "amount", "currency": "INR",
                           "expires_on": today + timedelta(days=30)} if s["coupon"] else None)
                try:
                    ctx = message_context(
                        cfg, campaign=template, lang=lang, locale=None, first_name=s["first_name"],
                        occasion_date=today, years=s["years"], years_as_customer=s["years"] or 0,
                        favourite_category=s["favourite"], recommendations=SAMPLE_PRODUCTS[:s["recommendations"]],
                        coupon=coupon, unsubscribe_url=UNSUBSCRIBE_SAMPLE, labels=labels, texts=texts,
                        variant="sample" if i % 2 else None)
                    if ctx["coupon"] is not None and i in SCOPED_SAMPLES:
                        # As planning says what a targeted coupon is valid on: a category's label, a product's
                        # name in the message's language (the sample's has markup, which must come out escaped).
                        product = SAMPLE_PRODUCTS[1]
                        ctx["coupon"]["valid_on"] = (
                            {"kind": "category", "name": labels.get(s["favourite"], s["favourite"])}
                            if SCOPED_SAMPLES[i] == "category" else {"kind": "product", "name": product.name_in(lang)})
                    msg = renderer.render(template, ctx)
                    if "<script>" in msg.html or "<b>Noise" in msg.html:
                        raise RenderError(f"template {template} ({lang}): a name reached the HTML unescaped")
                    if ctx["unsubscribe_url"] not in msg.html or ctx["unsubscribe_url"] not in msg.text:
                        raise RenderError(f"template {template} ({lang}): no unsubscribe link in HTML and text")
                    if template not in exempt:
                        html_links, text_links = links_besides_unsubscribe(msg.html, msg.text, UNSUBSCRIBE_SAMPLE)
                        for part, found in (("body.html", html_links), ("body.txt", text_links)):
                            if not found:
                                raise RenderError(
                                    f"{folder / template / part} ({lang}): a marketing e-mail has no link besides "
                                    "unsubscribe; add a call to action, e.g. "
                                    + ('{{ ui.button(shop_url, t("common.cta_shop")) }}' if part == "body.html" else
                                       '{{ ui.cta(shop_url, t("common.cta_shop")) }}')
                                    + " (or mark its campaigns transactional with global_control: false)")
                    rendered += 1
                except RenderError as exc:
                    errors.append(f"sample {i + 1}: {exc}")
    return {"templates": templates, "languages": renderer.languages, "rendered": rendered,
            "transactional": exempt, "missing": missing, "errors": errors}


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
