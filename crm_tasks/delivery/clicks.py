"""Click tracking (and, when turned on, open tracking) of campaign e-mails: signed redirect links.

At send time (``crm_tasks/delivery/send.py``) every http(s) link of a message's HTML part becomes
``<base>/r/<token>``: ``<base>`` is the CRM app's public prefix (``campaigns.tracking.base_url``, by
default the unsubscribe URL's parent, since the plugin serves both under ``/crm``). The token holds
the link's target URL, its number in the message (1, 2, ... in the order of the HTML) and the message,
and is signed with the signing key like the unsubscribe token (``crm_tasks/store/keys.py``):

- a forged or altered token is refused with 404 and no redirect, so only the links that were in a
  message redirect: without the key nobody can make the route send a reader elsewhere;
- no personal data is in the URL: the message is named by its Message-ID digest, encrypted, so that a
  link cannot be tied to the Message-ID that every mail server and reader sees (and ledger rows older
  than keyed Message-IDs carry a plain hash of the idempotency key, ``campaign:customer:occasion``,
  which a guessed customer id would match);
- redirecting reads nothing but the keys: a link of a message erased or purged since still works.

``GET /r/<token>`` counts the click (one ``clicks`` row per message and link with the first and last
time and how often) and redirects; ``GET /o/<token>.gif`` counts an open and returns a transparent
pixel. Links of test messages are tracked too (a tester checks the redirects) but never counted.
The text part keeps its plain links: a reader of plain text sees where a link goes, and a tracked
link there would be a line of base64. ``crm preview`` shows the untracked message.
"""

from __future__ import annotations

import base64
import hmac
import logging
import re
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from html import escape, unescape
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, Insert, bindparam, literal, select
from sqlalchemy.exc import SQLAlchemyError

from crm_tasks.errors import InvalidToken
from crm_tasks.settings import Settings
from crm_tasks.store.bulk import dialect_insert
from crm_tasks.store.keys import SIGNATURE_BYTES, b64, load_keys, sign, unb64
from crm_tasks.store.models import Click, Message
from crm_tasks.store.sql import relaxed_commit

if TYPE_CHECKING:  # the web part is imported by add_routes only: sending needs none of it
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

    from crm_tasks.delivery.unsubscribe import Strikes

log = logging.getLogger(__name__)


class Kind(StrEnum):
    """What a token counts; each signs under its own purpose, so a click token is never an open's."""

    CLICK = "click"
    OPEN = "open"


VERSION = 1  # the token layout below; a new layout gets a new number, so that links already sent stay readable
# version, the encrypted 16-byte Message-ID digest, the link's number (0 for an open); the URL follows.
_HEAD = struct.Struct(">B16sH")
MAX_URL_BYTES = 1024  # a longer link is left untracked: browsers and proxies cut long URLs
MAX_LINKS = 0xFFFF  # the links tracked per message (the number's two bytes)
_MAX_BODY = -(-(_HEAD.size + MAX_URL_BYTES) * 4 // 3)  # base64 characters of the longest payload
_MIN_BODY = -(-_HEAD.size * 4 // 3)  # an open's: no URL
_SIG_CHARS = -(-SIGNATURE_BYTES * 4 // 3)
MAX_TOKEN_CHARS = _MAX_BODY + 1 + _SIG_CHARS
# What a token of ours looks like; anything else is refused before the database is read.
TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_MIN_BODY},{_MAX_BODY}}}\.[A-Za-z0-9_-]{{{_SIG_CHARS}}}")
_DIGEST = re.compile(r"<([0-9a-f]{32})@")  # message_id_for's '<32 hex@domain>'
# An <a> tag's href in double or single quotes (templates always quote; an unquoted one stays untracked).
# No part crosses a '<' or '>' (autoescaping writes them as entities in values): a scan ends at the next
# tag, so even a malformed page of two million characters is read in linear time.
_LINK = re.compile(r"""(<a\s(?:[^<>]*?\s)?href\s*=\s*)(?:"([^"<>]*)"|'([^'<>]*)')""", re.IGNORECASE)
_HTTP = re.compile(r"https?://[^/?#]", re.IGNORECASE)
_LOCATION = re.compile(r"https?://[\x21-\x7e]+", re.IGNORECASE)  # what a redirect may name: printable ASCII
# Characters kept as they are in a tracked URL: RFC 3986's reserved and unreserved ones and '%'. The rest
# (spaces, quotes, non-ASCII, control characters) is percent-encoded once, at send time, so that the
# redirect's Location header is exactly the URL that was signed, and can never carry a line break.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# A transparent 1x1 GIF, the smallest image every mail client shows.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@dataclass(frozen=True)
class Target:
    """What a valid token names: the message (its Message-ID digest, 32 hex), the link's number in the
    HTML part (0 for an open) and the URL it redirects to (None for an open)."""

    digest: str
    link_no: int
    url: str | None


@dataclass(frozen=True)
class Tracker:
    """What rewriting a message needs: the app's public prefix, the switches and the signing key."""

    base: str
    secret: str = field(repr=False)
    clicks: bool = True
    opens: bool = False


# --- tokens ----------------------------------------------------------------------------------------


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(16)


def _signed(kind: Kind, secret: str, ref: bytes, link_no: int, tail: bytes) -> bytes:
    return sign(secret, kind.encode(), _HEAD.pack(VERSION, ref, link_no) + tail)


def make_token(kind: Kind, digest: str, link_no: int, url: str | None, secret: str) -> str:
    """A URL-safe token naming a link of a message (``digest``: the 32 hex of its Message-ID), signed.

    The digest travels encrypted with a mask derived from the signature (a synthetic IV, as in SIV): each
    token has its own mask, so a reader who knows their own Message-ID learns nothing of other tokens.
    """
    ref = bytes.fromhex(digest)
    tail = (url or "").encode()
    sig = _signed(kind, secret, ref, link_no, tail)
    hidden = _xor16(ref, sign(secret, b"message", sig))
    return f"{b64(_HEAD.pack(VERSION, hidden, link_no) + tail)}.{b64(sig)}"


def verify_token(kind: Kind, token: str, secrets: tuple[str, ...]) -> Target:
    """What ``token`` names; InvalidToken unless one of ``secrets`` (the signing key, then retired ones
    still in their grace period) signed exactly it for ``kind``."""
    try:
        body, sig_text = token.split(".", 1)
        raw, sig = unb64(body), unb64(sig_text)
        version, hidden, link_no = _HEAD.unpack_from(raw)
    except (ValueError, struct.error):
        raise InvalidToken(f"malformed {kind} token") from None
    tail = raw[_HEAD.size:]
    if version != VERSION or len(sig) != SIGNATURE_BYTES:
        raise InvalidToken(f"malformed {kind} token")
    for secret in secrets:
        ref = _xor16(hidden, sign(secret, b"message", sig))
        if hmac.compare_digest(sig, _signed(kind, secret, ref, link_no, tail)):
            break
    else:
        raise InvalidToken(f"{kind} token signature does not match")
    url = tail.decode("ascii", "replace") or None
    # Only make_token's output gets here; checked again so that even a leaked key cannot add a header.
    if kind is Kind.CLICK:
        valid = link_no > 0 and url is not None and _LOCATION.fullmatch(url) is not None
    else:
        valid = link_no == 0 and url is None
    if not valid:
        raise InvalidToken(f"{kind} token names no valid link")
    return Target(ref.hex(), link_no, url)


def message_digest(message_id: str) -> str | None:
    """The 32 hex naming a message in its tokens, from its Message-ID (``message_id_for``)."""
    m = _DIGEST.match(message_id or "")
    return m.group(1) if m else None


# --- rewriting a message ---------------------------------------------------------------------------


def redirect_target(href: str) -> str | None:
    """The URL a link's ``href`` (as written in HTML) redirects to once tracked, or None for a link that
    stays as it is: not http(s) (mailto:, tel:, #anchors, relative links) or longer than MAX_URL_BYTES."""
    url = quote(unescape(href).strip(), safe=_URL_SAFE)
    return url if _HTTP.match(url) and len(url) <= MAX_URL_BYTES else None


def track_links(html: str, tracker: Tracker, digest: str, keep: Collection[str] = ()) -> str:
    """``html`` with the href of every http(s) ``<a>`` replaced by its tracked link, numbered 1, 2, ...
    in the order of the HTML. Left direct: the URLs in ``keep`` (the unsubscribe link, which a reader must
    be able to trust and use without a redirect), links to the CRM app itself, and what
    ``redirect_target`` leaves out."""
    n = 0
    prefix = tracker.base + "/"

    def one(m: re.Match) -> str:
        nonlocal n
        url = redirect_target(m.group(2) if m.group(2) is not None else m.group(3))
        if url is None or url in keep or url.startswith(prefix) or n >= MAX_LINKS:
            return m.group(0)
        n += 1
        href = f"{tracker.base}/r/{make_token(Kind.CLICK, digest, n, url, tracker.secret)}"
        return f'{m.group(1)}"{escape(href)}"'

    return _LINK.sub(one, html)


def with_pixel(html: str, tracker: Tracker, digest: str) -> str:
    """``html`` with the open pixel as the last thing of its body."""
    src = escape(f"{tracker.base}/o/{make_token(Kind.OPEN, digest, 0, None, tracker.secret)}.gif")
    img = (f'<img src="{src}" width="1" height="1" alt="" '
           'style="display:block;width:1px;height:1px;border:0;">')
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + img
    at = ends[-1].start()
    return html[:at] + img + html[at:]


def track(html: str, message_id: str, tracker: Tracker | None, keep: Collection[str] = ()) -> str:
    """A message's HTML part as it is sent: links tracked, and the pixel when opens are on. Unchanged
    when tracking is off or the Message-ID is not one of ours."""
    digest = message_digest(message_id)
    if tracker is None or digest is None:
        return html
    if tracker.clicks:
        html = track_links(html, tracker, digest, keep)
    if tracker.opens:
        html = with_pixel(html, tracker, digest)
    return html


def public_base(cfg: Settings) -> str:
    """Where the CRM app is public: ``campaigns.tracking.base_url``, else the unsubscribe URL's parent."""
    if cfg.campaigns.tracking.base_url:
        return cfg.campaigns.tracking.base_url
    parts = urlsplit(cfg.campaigns.unsubscribe_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], "", ""))


def tracker_for(cfg: Settings, signing: str) -> Tracker | None:
    """The send's tracker (``signing``: the signing key in force), or None when both switches are off."""
    t = cfg.campaigns.tracking
    if not (t.clicks or t.opens):
        return None
    return Tracker(public_base(cfg), signing, t.clicks, t.opens)


# --- counting ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _count_statement(insert: Callable[..., Insert]) -> Insert:
    """The counting upsert for a dialect's ``insert`` construct, built once: building it cost several times
    more than running it, on a route meant to take 1,000 clicks a second.

    One statement: the message is found by its Message-ID (``ix_messages_message_id``) and not a test
    message; its link's row is inserted, or counted again with ``first_at`` kept (``ux_clicks_link``)."""
    m, c = Message, Click
    found = (select(m.idempotency_key, bindparam("kind", type_=c.kind.type), bindparam("link_no", type_=c.link_no.type),
                    bindparam("url", type_=c.url.type), bindparam("now", type_=c.first_at.type),
                    bindparam("now", type_=c.last_at.type), literal(1, c.count.type))
             .where(m.message_id == bindparam("message_id"), m.test.is_(False)).limit(1))
    stmt = insert(c).from_select(["idempotency_key", "kind", "link_no", "url", "first_at", "last_at", "count"], found)
    return stmt.on_conflict_do_update(index_elements=["idempotency_key", "kind", "link_no"],
                                      set_={"count": c.count + 1, "last_at": stmt.excluded.last_at})


def record(conn: Connection, kind: Kind, target: Target, domain: str, now: datetime) -> bool:
    """Count one click (or open) of a message's link; False, with nothing written, when no message of the
    ledger has that Message-ID (under the sender ``domain``) or it is a test message."""
    params = {"kind": str(kind), "link_no": target.link_no, "url": target.url, "now": now,
              "message_id": f"<{target.digest}@{domain}>"}
    return conn.execute(_count_statement(dialect_insert(conn)), params).rowcount > 0


class KeyCache:
    """The verifying keys of the click routes, read again at most every ``ttl`` seconds, so that a click costs
    one statement, not two, and still redirects while the database is briefly away. A token they do not
    verify has the keys read again at once (a key rotated in since works at once); a key retired since (its
    grace over, or revoked by ``crm db rotate-key --grace-days 0``) still verifies a click here for at most
    ``ttl`` seconds more. ``ttl=0`` reads them for every click."""

    def __init__(self, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._secrets: tuple[str, ...] = ()
        self._until = float("-inf")

    def verifying(self, engine: Engine, cfg: Settings, *, fresh: bool = False) -> tuple[tuple[str, ...], bool]:
        """The keys, and whether they came from the cache (rather than from the database just now)."""
        now = self.clock()
        if not fresh and now < self._until:
            return self._secrets, True
        with engine.connect() as conn:
            secrets = load_keys(conn, cfg).verifying
        # Threads may read at the same time: each stores a whole tuple, so the worst is one read too many.
        self._secrets, self._until = secrets, now + self.ttl
        return secrets, False


def _verified(engine: Engine, cfg: Settings, kind: Kind, token: str, keys: KeyCache) -> Target | None:
    """What ``token`` names, checked with the cached keys, then (if they refuse it) with the keys read now."""
    for fresh in (False, True):
        secrets, cached = keys.verifying(engine, cfg, fresh=fresh)
        try:
            return verify_token(kind, token, secrets)
        except InvalidToken:
            if not cached:
                return None
    return None


def follow(engine: Engine, cfg: Settings, kind: Kind, token: str, now: datetime | None = None, *,
           count: bool = True, keys: KeyCache | None = None) -> Target | None:
    """The link ``token`` names, counted (unless ``count`` is false) when its kind is tracked; None for a
    token that is not one of ours (no database read for what cannot be one: too long, or not shaped like
    a token). Links stay valid when tracking is turned off later: they redirect, uncounted. ``keys``: the
    routes' key cache (default: the keys are read now)."""
    if len(token) > MAX_TOKEN_CHARS or not TOKEN_SHAPE.fullmatch(token):
        return None
    target = _verified(engine, cfg, kind, token, keys or KeyCache(ttl=0))
    tracking = cfg.campaigns.tracking
    if target is not None and count and (tracking.clicks if kind is Kind.CLICK else tracking.opens):
        try:
            with engine.begin() as conn:
                relaxed_commit(conn)  # a click is not worth a disk flush of its own (on PostgreSQL)
                record(conn, kind, target, cfg.campaigns.sender.domain, now or datetime.now(UTC))
        except SQLAlchemyError as exc:
            # The reader's link matters more than the count: redirect anyway (no token or id logged).
            log.warning("a %s was not counted: %s", kind, exc.__class__.__name__)
    return target


# --- routes -----------------------------------------------------------------------------------------


def add_routes(app: FastAPI, engine: Callable[[], Engine], get_settings: Callable[[], Settings],
               strikes: Strikes) -> None:
    """``GET /r/{token}`` and ``GET /o/{token}.gif`` on the public CRM app (``create_app``). Outside Airflow's
    login like the unsubscribe route; they show no customer data and read no request body. A token that is
    not one of ours gets 404 without a Location and a strike for its source (429 once it has too many).
    A HEAD (link checkers) gets the same answer but is not counted."""
    from starlette.responses import Response

    from crm_tasks.delivery.unsubscribe import NO_STORE, _page, _source

    keys = KeyCache()
    def answer(kind: Kind, request: Request) -> Response:
        source = _source(request)
        if strikes.blocked(source):
            page = _page("Too many links that are not valid", "<p>Try again in a minute.</p>", 429)
            page.headers["Retry-After"] = str(int(strikes.window))
            return page
        target = follow(engine(), get_settings(), kind, request.path_params["token"], count=request.method == "GET",
                        keys=keys)
        if target is None:
            strikes.strike(source)
            return _page("Link not valid", "<p>This link is not valid. Use the link from your e-mail.</p>", 404)
        if kind is Kind.OPEN:
            return Response(PIXEL, media_type="image/gif", headers=NO_STORE)
        return Response(status_code=302, headers={"Location": target.url, **NO_STORE})

    def click(request: Request) -> Response:
        return answer(Kind.CLICK, request)

    def opened(request: Request) -> Response:
        return answer(Kind.OPEN, request)

    # Plain Starlette routes (run in the thread pool, as they read the database): the token is their only
    # input, so FastAPI's parameter machinery would only cost time on a route meant to take 1,000 clicks/s.
    app.add_route("/r/{token}", click, methods=["GET"], include_in_schema=False)
    app.add_route("/o/{token}.gif", opened, methods=["GET"], include_in_schema=False)
