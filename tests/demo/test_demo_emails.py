"""The demo's e-mails, as `make demo` makes them: generated data loaded, segmented and given recommendations,
each shipped campaign planned for the first day after the data with recipients and replayed to the local SMTP
sink, which writes one .eml per message. Every one of them is parsed: real product names in the message's
language with prices, and links to the shop with UTM parameters besides the unsubscribe link, in all five
languages."""

from __future__ import annotations

import re
from datetime import date, timedelta
from email import policy
from email.parser import BytesParser
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from crm_tasks.analytics.recommendations import LOCALISED_NAMES, refresh_recommendations
from crm_tasks.campaigns.definitions import load_campaigns
from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.delivery.clicks import Kind, verify_token
from crm_tasks.delivery.replay import replay
from crm_tasks.delivery.smtp import SinkHandler
from crm_tasks.demo.generate import generate
from crm_tasks.errors import CampaignBlocked
from crm_tasks.ingest.batches import all_dates, ingest_dates
from crm_tasks.segments.compute import recompute_range
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import Product
from tests.smtp_servers import free_port

START, DAYS = date(2026, 1, 1), 60
END = START + timedelta(days=DAYS - 1)
LANGUAGES = {"en", "hi", "te", "fa", "ur"}
HREF = re.compile(r"""<a\s(?:[^>]*?\s)?href="([^"]*)\"""", re.IGNORECASE)
URL = re.compile(r"https://\S+")
REASON = re.compile(r"^    (Bought with|A step up from|A best seller)\b", re.MULTILINE)  # English reasons
PRICE = re.compile(r"₹\s?[\d۰-۹٠-٩,٬.٫]+")


def first_day_with_recipients(engine, cfg, campaign, days: int = 30):
    """As scripts/demo.sh picks it: the first day from the data's end on which the campaign has recipients."""
    for k in range(1, days + 1):
        try:
            result = plan_campaign(engine, cfg, campaign, END + timedelta(days=k), record=False, sample=0)
        except CampaignBlocked as exc:
            result = exc.result
        if result.recipients:
            return END + timedelta(days=k)
    return None


def utm(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items() if k.startswith("utm_")}


@pytest.mark.parametrize("refreshed", [False, True], ids=["as_make_demo_runs", "after_the_nightly_refresh"])
def test_every_demo_email_has_real_products_prices_and_utm_links_in_every_language(engine, cfg, landing, tmp_path,
                                                                                   refreshed):
    """Without a refresh (scripts/demo.sh plans before crm_reports ever ran) the products are the favourite
    category's best sellers; after it, the stored lists, with cross-sells among them."""
    generate(landing, customers=1000, days=DAYS, start=START, seed=7, bad_rows=0.01)
    ingest_dates(engine, cfg, all_dates(landing))
    recompute_range(engine, cfg, END - timedelta(days=7), END)  # the demo's week of segment history
    if refreshed:
        refresh_recommendations(engine, cfg, END)  # what crm_reports computes every night
    campaigns, problems = load_campaigns(cfg)
    assert problems == []
    mail, port = tmp_path / "mail", free_port()
    controller = Controller(SinkHandler(mail), hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    controller.start()
    sent: dict[str, int] = {}
    try:
        smtp = cfg.model_copy(update={"smtp_url": f"smtp+insecure://127.0.0.1:{port}"})
        for campaign in campaigns:
            day = first_day_with_recipients(engine, cfg, campaign)
            if day is None:
                continue  # the anniversary: no first purchase a year before, in 60 days of data
            run = plan_campaign(engine, cfg, campaign, day, sample=0)
            sent[campaign.name] = replay(engine, smtp, campaign.name, run.run_id, run.run_at).sent
    finally:
        controller.stop()
    assert len(sent) >= 4 and all(sent.values()), sent

    with engine.connect() as conn:
        products = conn.execute(select(Product.__table__)).all()
        secret = load_keys(conn, cfg).signing
    names = {lang: {(getattr(p, f"name_{lang}") if lang in LOCALISED_NAMES else None) or p.name for p in products}
             for lang in LANGUAGES}
    files = sorted(mail.glob("*.eml"))
    assert len(files) == sum(sent.values())
    seen: set[str] = set()
    reasons: list[str] = []
    for path in files:
        msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        campaign = msg["list-id"].strip("<>").split(".", 1)[0]
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        lang = re.search(r'<html lang="(\w+)"', html).group(1)
        seen.add(lang)
        unsubscribe = msg["list-unsubscribe"].split("<", 1)[1].split(">", 1)[0]
        # The text part: plain links to the shop and its products, with the campaign's UTM parameters.
        links = [u for u in URL.findall(text) if u != unsubscribe]
        assert links and all(utm(u) == {"utm_source": "crm", "utm_medium": "email", "utm_campaign": campaign,
                                        "utm_content": campaign} for u in links), path.name
        # The HTML part: the same links, through click tracking; each token names its URL with the UTM.
        hrefs = [unescape(h) for h in HREF.findall(html)]
        tracked = [h for h in hrefs if "/r/" in h]
        assert tracked and unsubscribe in hrefs, path.name
        targets = [verify_token(Kind.CLICK, h.rsplit("/", 1)[1], (secret,)).url for h in tracked]
        assert all(utm(t)["utm_campaign"] == campaign and utm(t)["utm_medium"] == "email" for t in targets)
        assert set(targets) == set(links)
        # Real products of the catalogue, named in the message's language, with their prices.
        shown = [n for n in names[lang] if f"  * {n} (" in text]
        assert shown, (path.name, lang)
        assert all(n in unescape(html) and f'alt="{n}"' in unescape(html) for n in shown)
        assert len(PRICE.findall(text)) >= len(shown), path.name
        if lang == "en":
            reasons += REASON.findall(text)
    assert seen == LANGUAGES
    assert reasons and any(r == "Bought with" for r in reasons) == refreshed  # best sellers only, without lists
