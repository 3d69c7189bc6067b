"""Click tracking: the HTML part's links are sent as signed redirects that lead back to exactly the original
URL and are counted once per message and link; forged or altered tokens get 404 and no redirect (the route
is no open redirect); the token carries no personal data; opens are counted only when turned on. Through a
real SMTP server and the public app, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import time
from datetime import UTC, date, datetime, timedelta
from html import unescape

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text, update

from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.clock import running_from
from crm_tasks.delivery.clicks import (
    MAX_TOKEN_CHARS,
    PIXEL,
    KeyCache,
    Kind,
    Tracker,
    follow,
    make_token,
    message_digest,
    public_base,
    track,
    verify_token,
)
from crm_tasks.delivery.send import deliver
from crm_tasks.delivery.suppression import unsubscribe_token
from crm_tasks.delivery.unsubscribe import Strikes, create_app
from crm_tasks.errors import InvalidToken
from crm_tasks.messages.render import renderer_for
from crm_tasks.settings import TrackingSettings
from crm_tasks.store.keys import b64, load_keys, rotate_signing_key, unb64
from crm_tasks.store.models import Click, Message, SecretKey
from tests.conftest import REPO
from tests.factories import add_customers, campaign
from tests.smtp_servers import SmtpServer

AS_OF = date(2026, 5, 10)
RUN_AT = datetime(2026, 5, 10, 0, 30, tzinfo=UTC)
SENT_AT = datetime(2026, 5, 10, 6, 0, tzinfo=UTC)
BASE = "https://crm.example.com"  # the parent of crm.yaml's unsubscribe URL, https://crm.example.com/unsubscribe
SHOP = "https://shop.example.com/birthday?utm_source=crm&utm_campaign=birthday"
# Links added to the birthday template: a button (its URL autoescaped to &amp; in the HTML), a link in single
# quotes, the same URL again, and links that are not tracked (mailto, an anchor, a phone number).
LINKS = f"""
{{{{ ui.button("{SHOP}", "Shop now") }}}}
<p><a href='https://shop.example.com/stores'>Stores</a> <a href="mailto:help@example.com">Help</a>
<a href="#top">Top</a> <a href="tel:+911234567890">Call</a> <a href="{SHOP}">Shop again</a></p>
"""
HREF = re.compile(r"""<a\s(?:[^>]*?\s)?href=(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
SECRET = "k" * 64
DIGEST = "0123456789abcdef0123456789abcdef"


def linked(cfg, tmp_path, **tracking):
    """``cfg`` with the birthday template holding links, and these tracking settings."""
    templates = tmp_path / "email"
    shutil.copytree(REPO / "templates" / "email", templates)
    body = templates / "birthday" / "body.html"
    head, end = body.read_text(encoding="utf-8").rsplit("{% endblock %}", 1)  # the end of the content block
    body.write_text(head + LINKS + "{% endblock %}" + end, encoding="utf-8")
    c = cfg.campaigns.model_copy(update={"templates": templates,
                                         "tracking": cfg.campaigns.tracking.model_copy(update=tracking)})
    return cfg.model_copy(update={"campaigns": c})


def send(engine, cfg, **plan):
    """Plan the birthday campaign and deliver it to a real SMTP server; the messages as received."""
    plan_ = plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0, **plan)
    with SmtpServer() as srv:
        delivery_cfg = cfg.model_copy(update={"smtp_url": srv.url})
        result = deliver(engine, delivery_cfg, "birthday", plan_.run_id, clock=running_from(SENT_AT))
        assert result.sent == plan_.recipients > 0
        return srv.handler.parsed()


def hrefs(html: str) -> list[str]:
    return [unescape(a or b) for a, b in HREF.findall(html)]


def tracked(html: str) -> list[str]:
    """The tracked links of a message, in order, as paths of the app ('/r/<token>')."""
    return [h[len(BASE):] for h in hrefs(html) if h.startswith(BASE + "/r/")]


def ledger(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(Message)).all()


def click_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(Click).order_by(Click.kind, Click.link_no)).all()


@pytest.fixture
def client(engine, cfg):
    from fastapi.testclient import TestClient

    return TestClient(create_app(lambda: cfg, lambda: engine), follow_redirects=False)


def app_client(engine, cfg, **kw):
    from fastapi.testclient import TestClient

    return TestClient(create_app(lambda: cfg, lambda: engine, **kw), follow_redirects=False)


def planned_message(engine, cfg, **plan) -> Message:
    """One planned ledger row (a customer with a birthday on AS_OF), without sending it."""
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    plan_campaign(engine, cfg, campaign(), AS_OF, RUN_AT, sample=0, **plan)
    [row] = ledger(engine)
    return row


# --- through a real send ---------------------------------------------------------------------------------


def test_every_http_link_of_a_sent_message_is_tracked_and_leads_back_to_its_original_url(engine, cfg, tmp_path):
    cfg = linked(cfg, tmp_path)
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    [msg] = send(engine, cfg)
    [row] = ledger(engine)
    text_part, html = (p.get_content() for p in msg.iter_parts())
    rendered = renderer_for(cfg).render(row.template, row.context)
    original, sent = hrefs(rendered.html), hrefs(html)
    assert len(sent) == len(original) == 8
    # The http(s) links are replaced, in order; the unsubscribe link, mailto:, # and tel: stay as they were.
    untracked = {row.context["unsubscribe_url"], "mailto:help@example.com", "#top", "tel:+911234567890"}
    assert {o for o, s in zip(original, sent, strict=True) if o == s} == untracked
    links = [o for o in original if o not in untracked]
    # The template's own call to action (the shop, with the campaign's UTM parameters), then the added links.
    assert links == [row.context["shop_url"], SHOP, "https://shop.example.com/stores", SHOP]
    assert "utm_campaign=birthday" in links[0]
    assert all(s.startswith(BASE + "/r/") for o, s in zip(original, sent, strict=True) if o not in untracked)
    # The text part keeps its plain links; the preview (the untracked render) is what was rendered.
    assert text_part == rendered.text and BASE + "/r/" not in text_part
    client = app_client(engine, cfg)
    for path, url in zip(tracked(html), links, strict=True):
        done = client.get(path)
        assert done.status_code == 302 and done.headers["location"] == url
        assert done.headers["cache-control"] == "no-store" and done.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in done.headers
    rows = click_rows(engine)
    assert [(r.idempotency_key, r.kind, r.link_no, r.url, r.count) for r in rows] == \
        [(row.idempotency_key, "click", n, url, 1) for n, url in enumerate(links, 1)]


def test_a_test_message_is_tracked_and_redirects_but_its_clicks_are_not_counted(engine, cfg, tmp_path):
    cfg = linked(cfg, tmp_path)
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    [msg] = send(engine, cfg, test_recipient="tester@example.com")
    assert ledger(engine)[0].test
    paths = tracked(msg.get_body(("html",)).get_content())
    assert len(paths) == 4  # the shop's call to action and the three added links
    done = app_client(engine, cfg).get(paths[1])
    assert done.status_code == 302 and done.headers["location"] == SHOP
    assert click_rows(engine) == []


def test_opens_are_off_by_default_and_counted_once_turned_on(engine, cfg, tmp_path):
    assert TrackingSettings().opens is False and cfg.campaigns.tracking.opens is False
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)},
                  {"customer_id": "C2", "birthday": date(1990, 5, 10)})
    [off] = send(engine, linked(cfg, tmp_path / "off"), audience_limit=1)
    assert "/o/" not in off.get_body(("html",)).get_content()
    cfg = linked(cfg, tmp_path / "on", opens=True)
    [on] = send(engine, cfg)  # the other customer
    html = on.get_body(("html",)).get_content()
    [src] = re.findall(r'<img src="([^"]+)" width="1" height="1"', html)
    assert src.startswith(BASE + "/o/") and src.endswith(".gif")
    assert html.index(src) < html.rindex("</body>")  # inside the body, after the content
    client = app_client(engine, cfg)
    for _ in range(2):
        got = client.get(src[len(BASE):])
        assert got.status_code == 200 and got.headers["content-type"] == "image/gif" and got.content == PIXEL
        assert got.headers["cache-control"] == "no-store"
    key = next(m.idempotency_key for m in ledger(engine) if m.recipient == on["to"].addresses[0].addr_spec)
    assert [(r.idempotency_key, r.kind, r.link_no, r.url, r.count) for r in click_rows(engine)] == \
        [(key, "open", 0, None, 2)]


# --- counting ----------------------------------------------------------------------------------------------


def test_a_second_click_counts_again_and_keeps_the_first_time(engine, cfg, keys):
    row = planned_message(engine, cfg)
    token = make_token(Kind.CLICK, message_digest(row.message_id), 2, "https://shop.example.com/", keys.signing)
    first, later = datetime(2026, 5, 10, 7, 0, tzinfo=UTC), datetime(2026, 5, 11, 9, 30, tzinfo=UTC)
    assert follow(engine, cfg, Kind.CLICK, token, now=first).url == "https://shop.example.com/"
    assert follow(engine, cfg, Kind.CLICK, token, now=later).link_no == 2
    [r] = click_rows(engine)
    assert (r.idempotency_key, r.link_no, r.count, r.first_at, r.last_at) == \
        (row.idempotency_key, 2, 2, first, later)
    # A link checker's HEAD gets the redirect but is no click.
    client = app_client(engine, cfg)
    assert client.head(f"/r/{token}").status_code == 302
    assert click_rows(engine)[0].count == 2
    assert client.get(f"/r/{token}").status_code == 302
    assert click_rows(engine)[0].count == 3


def test_a_link_of_a_message_no_longer_in_the_ledger_still_redirects_and_counts_nothing(engine, cfg, client, keys):
    token = make_token(Kind.CLICK, DIGEST, 1, "https://shop.example.com/", keys.signing)  # signed by us
    done = client.get(f"/r/{token}")
    assert done.status_code == 302 and done.headers["location"] == "https://shop.example.com/"
    assert click_rows(engine) == []


def test_a_click_that_cannot_be_counted_still_redirects(engine, cfg, client, keys):
    row = planned_message(engine, cfg)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE clicks"))
    token = make_token(Kind.CLICK, message_digest(row.message_id), 1, "https://shop.example.com/", keys.signing)
    done = client.get(f"/r/{token}")
    assert done.status_code == 302 and done.headers["location"] == "https://shop.example.com/"


def test_a_click_redirects_while_the_database_is_away_once_the_keys_are_cached(engine, cfg, keys):
    from sqlalchemy.exc import OperationalError

    from crm_tasks.store.engine import make_engine

    token = make_token(Kind.CLICK, DIGEST, 1, "https://shop.example.com/", keys.signing)
    cache = KeyCache()
    assert follow(engine, cfg, Kind.CLICK, token, keys=cache) is not None
    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    try:
        assert follow(away, cfg, Kind.CLICK, token, keys=cache).url == "https://shop.example.com/"
        with pytest.raises(OperationalError):  # without the keys nothing can be verified: no redirect
            follow(away, cfg, Kind.CLICK, token)
    finally:
        away.dispose()


def test_turned_off_tracking_keeps_links_already_sent_working_uncounted(engine, cfg, keys):
    row = planned_message(engine, cfg)
    off = cfg.model_copy(update={"campaigns": cfg.campaigns.model_copy(
        update={"tracking": TrackingSettings(clicks=False)})})
    token = make_token(Kind.CLICK, message_digest(row.message_id), 1, "https://shop.example.com/", keys.signing)
    assert app_client(engine, off).get(f"/r/{token}").status_code == 302
    assert click_rows(engine) == []


# --- forged, altered, misused ------------------------------------------------------------------------------


def _altered(token: str, change) -> str:
    """``token`` with its payload bytes changed by ``change(bytearray)``, the signature kept."""
    body, sig = token.split(".")
    raw = bytearray(unb64(body))
    change(raw)
    return f"{b64(bytes(raw))}.{sig}"


def _flip(i: int):
    def change(raw: bytearray) -> None:
        raw[i] ^= 0x01
    return change


def test_forged_or_altered_tokens_get_404_with_no_redirect_and_count_nothing(engine, cfg, client, keys):
    row = planned_message(engine, cfg)
    digest, url = message_digest(row.message_id), "https://shop.example.com/sale"
    good = make_token(Kind.CLICK, digest, 1, url, keys.signing)
    body, sig = good.split(".")
    evil = "https://evil.example.com/phish"
    forged = {
        "a flipped byte of the URL": _altered(good, _flip(-1)),
        "a flipped byte of the message": _altered(good, _flip(3)),
        "a flipped byte of the signature": f"{body}.{b64(bytes([unb64(sig)[0] ^ 1]) + unb64(sig)[1:])}",
        "another deployment's key": make_token(Kind.CLICK, digest, 1, url, "another-deployments-key-" + "x" * 40),
        "the URL swapped": _altered(good, lambda raw: raw.__setitem__(slice(19, None), evil.encode())),
        "the URL extended": _altered(good, lambda raw: raw.extend(b"/../../evil")),
        "the link number swapped": _altered(good, lambda raw: raw.__setitem__(slice(17, 19), struct.pack(">H", 2))),
        "an open's token": make_token(Kind.OPEN, digest, 0, None, keys.signing),
        "an unsubscribe token": unsubscribe_token("C1", keys.signing),
        "a truncated signature": good[:-2],
        "not a token": "garbage",
        "too long": "A" * (MAX_TOKEN_CHARS + 1) + "." + "B" * 22,
    }
    for why, token in forged.items():
        done = client.get(f"/r/{token}")
        assert done.status_code == 404, why
        assert "location" not in done.headers and evil not in done.text, why
        with pytest.raises(InvalidToken):
            verify_token(Kind.CLICK, token, keys.verifying)
    # A click token is no open either, and nothing of the above was counted.
    assert client.get(f"/o/{good}.gif").status_code == 404
    assert click_rows(engine) == []
    assert client.get(f"/r/{good}").headers["location"] == url  # the untouched token still works


def test_a_link_that_was_not_in_the_message_cannot_be_made_to_redirect(engine, cfg, tmp_path):
    """The only way to a redirect is a token we signed for a link of a message: re-pointing a real tracked
    link of a sent message at another URL (same message, same number, same signature) is refused."""
    cfg = linked(cfg, tmp_path)
    add_customers(engine, {"customer_id": "C1", "birthday": date(1990, 5, 10)})
    [msg] = send(engine, cfg)
    real = tracked(msg.get_body(("html",)).get_content())[2][len("/r/"):]
    client = app_client(engine, cfg)
    assert client.get(f"/r/{real}").headers["location"] == "https://shop.example.com/stores"
    for other in ("https://evil.example.com/", "https://shop.example.com/stores/../../evil",
                  "https://shop.example.com/stores@evil.example.com", SHOP):
        re_pointed = _altered(real, lambda raw, o=other: raw.__setitem__(slice(19, None), o.encode()))
        done = client.get(f"/r/{re_pointed}")
        assert done.status_code == 404 and "location" not in done.headers, other
    assert [r.count for r in click_rows(engine)] == [1]


def test_a_source_sending_forged_links_is_refused_for_the_rest_of_the_minute(engine, cfg, keys):
    client = app_client(engine, cfg, strikes=Strikes(limit=3))
    bad = make_token(Kind.CLICK, DIGEST, 1, "https://shop.example.com/", "not-our-key-" + "x" * 40)
    assert [client.get(f"/r/{bad}").status_code for _ in range(4)] == [404, 404, 404, 429]
    blocked = client.get(f"/r/{bad}")
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60" and "location" not in blocked.headers


def test_a_rotated_key_verifies_for_its_grace_period_only(engine, cfg, keys):
    row = planned_message(engine, cfg)
    digest, url = message_digest(row.message_id), "https://shop.example.com/"
    old = make_token(Kind.CLICK, digest, 1, url, keys.signing)
    clock = [0.0]
    cache = KeyCache(ttl=10, clock=lambda: clock[0])  # the routes' cache, on a clock of the test's
    assert follow(engine, cfg, Kind.CLICK, old, keys=cache).url == url
    with engine.begin() as conn:
        rotate_signing_key(conn, cfg, grace_days=30)
    with engine.connect() as conn:
        new = make_token(Kind.CLICK, digest, 2, url, load_keys(conn, cfg).signing)
    assert follow(engine, cfg, Kind.CLICK, new, keys=cache).link_no == 2  # signed after the cache was filled
    assert follow(engine, cfg, Kind.CLICK, old, keys=cache).link_no == 1  # sent before: in its grace period
    with engine.begin() as conn:  # the grace period is over
        conn.execute(update(SecretKey).where(SecretKey.retired_at.is_not(None))
                     .values(valid_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert follow(engine, cfg, Kind.CLICK, old) is None  # the keys read now refuse it...
    assert follow(engine, cfg, Kind.CLICK, old, keys=cache) is not None  # ...the cache for at most ttl more
    clock[0] = 10.0
    assert follow(engine, cfg, Kind.CLICK, old, keys=cache) is None
    done = app_client(engine, cfg).get(f"/r/{old}")
    assert done.status_code == 404 and "location" not in done.headers
    assert follow(engine, cfg, Kind.CLICK, new, keys=cache) is not None
    assert sorted((r.link_no, r.count) for r in click_rows(engine)) == [(1, 3), (2, 2)]


# --- what a token shows ------------------------------------------------------------------------------------


def test_a_token_carries_no_personal_data_and_not_even_the_message_id(engine, cfg, tmp_path):
    cfg = linked(cfg, tmp_path, opens=True)
    add_customers(engine, {"customer_id": "CUST-8841", "first_name": "Zubaida", "email": "zubaida.r@example.org",
                           "birthday": date(1990, 5, 10)})
    [msg] = send(engine, cfg)
    [row] = ledger(engine)
    html = msg.get_body(("html",)).get_content()
    links = [h for h in hrefs(html) if h.startswith(BASE + "/r/")] + re.findall(r'<img src="([^"]+)"', html)
    assert len(links) == 5  # the shop's call to action, the three added links and the pixel
    digest = message_digest(row.message_id)
    # Nor the Message-ID's digest, which every mail server sees, nor the plain hash of the idempotency key
    # ("birthday:CUST-8841:2026") that older ledger rows use as their digest: a guessed customer id matches it.
    plain = hashlib.sha256(row.idempotency_key.encode()).digest()[:16]
    personal = ["CUST-8841", "cust-8841", "Zubaida", "zubaida", "example.org", row.idempotency_key, digest,
                plain.hex()]
    for link in links:
        token = link.rsplit("/", 1)[-1].removesuffix(".gif")
        decoded = b"".join(unb64(part) for part in token.split("."))
        for value in personal:
            assert value not in link and value.encode() not in decoded, value
        assert bytes.fromhex(digest) not in decoded and plain not in decoded
        assert b"CUST" not in decoded.upper() and b"ZUBAIDA" not in decoded.upper()


def test_track_rewrites_http_links_in_order_and_leaves_the_rest():
    tracker = Tracker("https://crm.example.com/crm", SECRET)
    long_url = "https://shop.example.com/" + "x" * 1100
    html = ("<body><A HREF='https://a.example.com/?q=1&amp;r=2'>a</A>"
            '<a data-href="https://no.example.com/" class="b" href="http://b.example.com/">b</a>'
            '<a href="mailto:x@example.com">m</a><a href="#top">t</a><a href="/relative">r</a>'
            '<a href="javascript:alert(1)">j</a><a href="https://crm.example.com/crm/unsubscribe/T">u</a>'
            '<a href="https://unsub.example.com/T">kept</a>'
            f'<a href="{long_url}">long</a><a href="https://shop.example.com/ä ö">i18n</a></body>')
    out = track(html, f"<{DIGEST}@example.com>", tracker, keep=("https://unsub.example.com/T",))
    targets = []
    for h in hrefs(out):
        if h.startswith("https://crm.example.com/crm/r/"):
            targets.append(verify_token(Kind.CLICK, h.rsplit("/", 1)[-1], (SECRET,)))
    assert [(t.link_no, t.url, t.digest) for t in targets] == [
        (1, "https://a.example.com/?q=1&r=2", DIGEST), (2, "http://b.example.com/", DIGEST),
        (3, "https://shop.example.com/%C3%A4%20%C3%B6", DIGEST)]
    for left in ("mailto:x@example.com", "#top", "/relative", "javascript:alert(1)", long_url,
                 "https://crm.example.com/crm/unsubscribe/T", "https://unsub.example.com/T", "https://no.example.com/"):
        assert left in out
    assert "/o/" not in out  # opens off
    assert track(html, "<not-ours@example.com>", tracker) == html
    assert track(html, f"<{DIGEST}@example.com>", None) == html


def test_a_malformed_page_is_read_in_linear_time():
    """Unclosed tags by the hundred thousand (a broken template): the scan for links must not go quadratic
    (a pattern free to run past the next tag took 15 s for 100 kB of this, and hours for a 2 MB message)."""
    tracker = Tracker("https://crm.example.com/crm", SECRET)
    for page in ("<a x " * 400_000, '<a href="' * 200_000, "<a " * 600_000):
        started = time.perf_counter()
        assert track(page, f"<{DIGEST}@example.com>", tracker) == page
        assert time.perf_counter() - started < 2.0


def test_the_public_base_is_the_unsubscribe_urls_parent_unless_set(cfg):
    def with_(unsubscribe_url, **tracking):
        c = cfg.campaigns.model_copy(update={"unsubscribe_url": unsubscribe_url,
                                             "tracking": TrackingSettings(**tracking)})
        return cfg.model_copy(update={"campaigns": c})

    assert public_base(cfg) == BASE
    assert public_base(with_("https://mail.shop.in/crm/unsubscribe")) == "https://mail.shop.in/crm"
    assert public_base(with_("http://localhost:8080/crm/unsubscribe")) == "http://localhost:8080/crm"
    assert public_base(with_("https://x.in/crm/unsubscribe", base_url="https://go.shop.in/c/")) == "https://go.shop.in/c"
    for bad in ("javascript:alert(1)", "https://x.in/a?b=c", 'https://x.in/"onload="'):
        with pytest.raises(ValidationError):
            TrackingSettings(base_url=bad)


def test_the_app_serves_the_click_and_open_routes():
    paths = {route.path for route in create_app(lambda: None, lambda: None).routes}
    assert {"/unsubscribe/{token}", "/r/{token}", "/o/{token}.gif"} <= paths
