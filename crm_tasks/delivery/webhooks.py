"""Providers' bounce and complaint webhooks, on the public CRM app (mounted under ``/crm`` by the plugin).

- ``POST /webhooks/ses``: Amazon SES notifications delivered by Amazon SNS. The SNS signature is checked
  (SignatureVersion 1, SHA1withRSA; 2, SHA256withRSA) over SNS's canonical string-to-sign, with the
  certificate named by ``SigningCertURL``, which is fetched only from
  ``https://sns.<region>.amazonaws.com/...pem`` (``delivery.feedback.sns_cert_host``) and cached per
  process; when it cannot be fetched at the moment the answer is 503, which SNS retries. A valid signature only proves that *some* AWS account's topic sent it, so the topic must also
  be listed in ``delivery.feedback.ses_topic_arns``. A SubscriptionConfirmation is logged, and confirmed
  (its SubscribeURL fetched) only when ``delivery.feedback.confirm_sns_subscriptions`` is on.
- ``POST /webhooks/mailgun``: Mailgun's JSON webhooks, signed with HMAC-SHA256 of timestamp + token under
  the webhook signing key (``CRM_MAILGUN_SIGNING_KEY``). A timestamp older (or further ahead) than
  ``delivery.feedback.webhook_max_age_seconds``, or a token already used, is refused as a replay.

Both read at most ``delivery.feedback.webhook_max_bytes`` of body (413 past it, before any parsing). A
request that does not check is answered 403, recorded once as a ``forged`` event (a random key, its reason
in ``detail``; nothing in it is applied or trusted) and counts as a strike against its source: a source
sending 30 such requests in a minute gets 429 for the rest of it (``unsubscribe.Strikes``), so a flood of
forgeries cannot fill the table. An authentic event is recorded by ``feedback.record_events``: matched to
its message by Message-ID, applied once, a provider's retry counted as a duplicate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from crm_tasks.delivery.feedback import (
    DETAIL_CHARS,
    FeedbackEvent,
    FeedbackResult,
    Kind,
    event_key,
    normalise_message_id,
    record_events,
    without_address,
)
from crm_tasks.delivery.smtp import scrub
from crm_tasks.errors import CrmError, ForgedRequest
from crm_tasks.settings import FeedbackSettings, Settings

log = logging.getLogger(__name__)

Fetch = Callable[[str], bytes]  # GET a URL, return its body: certificates, subscription confirmations
MAX_FETCH_BYTES = 64 * 1024  # an SNS certificate is about 2 KiB
NO_STORE = {"Cache-Control": "no-store"}
_STATUS_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def fetch_url(url: str) -> bytes:
    """GET over HTTPS with the system's CA store and a short timeout; at most MAX_FETCH_BYTES. A 4xx answer
    is ForgedRequest (the URL names nothing AWS serves); a network failure stays an OSError, to be retried."""
    request = urllib.request.Request(url, headers={"User-Agent": "crm-engine"})
    try:
        # Only ever called with a URL check_sns_url accepted: https, on an SNS host.
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context()) as response:
            body = response.read(MAX_FETCH_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise ForgedRequest(f"its certificate URL answered {exc.code}") from None
        raise
    if len(body) > MAX_FETCH_BYTES:
        raise ForgedRequest(f"{url} answered with more than {MAX_FETCH_BYTES} bytes: not an SNS certificate")
    return body


# --- Amazon SNS --------------------------------------------------------------------------------------------

# The fields SNS signs, in this order, as "Name\nvalue\n" (Subject only when the message has one).
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


def sns_string_to_sign(msg: dict) -> bytes:
    """SNS's canonical string-to-sign of a message (docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message)."""
    fields = SNS_SIGNED.get(msg.get("Type"))
    if fields is None:
        raise ForgedRequest(f"not an SNS message type: {str(msg.get('Type'))[:40]!r}")
    out = []
    for name in fields:
        value = msg.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise ForgedRequest(f"the SNS message has no {name}")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def check_sns_url(url: object, host_pattern: str, what: str) -> str:
    """``url`` if it is https on an SNS host (no user, no other port); ForgedRequest otherwise, so that a
    request can never make the server fetch from a place it names."""
    parts = urlsplit(url if isinstance(url, str) else "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "https" or parts.username or parts.password or port not in (None, 443)
            or not re.fullmatch(host_pattern, parts.hostname or "")):
        raise ForgedRequest(f"its {what} is not on https://sns.<region>.amazonaws.com")
    return url


class CertCache:
    """SNS signing certificates' public keys by URL, fetched once per process: AWS rotates them rarely, and a
    notification must not cost a download. Thread-safe (requests are handled in a thread pool)."""

    def __init__(self, fetch: Fetch = fetch_url, max_entries: int = 32) -> None:
        self.fetch, self.max_entries = fetch, max_entries
        self._keys: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def public_key(self, url: str, now: datetime):
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

        with self._lock:
            cached = self._keys.get(url)
        if cached is None:
            try:
                pem = self.fetch(url)
            except OSError as exc:
                # Not the sender's fault: answered 503, so that SNS delivers the notification again later.
                raise CrmError(f"the SNS signing certificate could not be fetched ({exc.__class__.__name__})") from None
            try:
                cert = x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise ForgedRequest("its signing certificate is not a PEM certificate") from None
            if not isinstance(cert.public_key(), RSAPublicKey):
                raise ForgedRequest("its signing certificate holds no RSA key")
            cached = (cert.public_key(), cert.not_valid_before_utc, cert.not_valid_after_utc)
            with self._lock:
                self._keys[url] = cached
                while len(self._keys) > self.max_entries:
                    self._keys.popitem(last=False)
        key, start, end = cached
        if not start <= now <= end:
            raise ForgedRequest("its signing certificate is outside its validity period")
        return key


def verify_sns(msg: dict, fb: FeedbackSettings, certs: CertCache, now: datetime) -> None:
    """ForgedRequest unless ``msg`` comes from an accepted topic and its signature checks with the
    certificate at its SigningCertURL. The topic is checked first: a foreign topic costs no download."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if msg.get("TopicArn") not in fb.ses_topic_arns:
        raise ForgedRequest(f"topic {str(msg.get('TopicArn'))[:120]!r} is not in delivery.feedback.ses_topic_arns")
    digest = {"1": hashes.SHA1, "2": hashes.SHA256}.get(str(msg.get("SignatureVersion")))
    if digest is None:
        raise ForgedRequest(f"unknown SignatureVersion {str(msg.get('SignatureVersion'))[:8]!r}")
    url = check_sns_url(msg.get("SigningCertURL"), fb.sns_cert_host, "SigningCertURL")
    if not urlsplit(url).path.endswith(".pem"):
        raise ForgedRequest("its SigningCertURL does not name a .pem certificate")
    try:
        signature = base64.b64decode(str(msg.get("Signature") or ""), validate=True)
    except ValueError:
        raise ForgedRequest("its Signature is not base64") from None
    to_sign = sns_string_to_sign(msg)
    try:
        certs.public_key(url, now).verify(signature, to_sign, padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise ForgedRequest("its SNS signature does not verify") from None


def ses_events(notification: dict, sns_message_id: str) -> list[FeedbackEvent]:
    """The event of an SES notification (docs.aws.amazon.com/ses/latest/dg/notification-contents): a Bounce
    (Permanent: hard, Transient: soft, Undetermined: other) or a Complaint; anything else is recorded as
    other. Our Message-ID is in ``mail.commonHeaders.messageId`` or ``mail.headers`` (SES's own
    ``mail.messageId`` is not ours)."""
    what = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    candidates = [common.get("messageId")]
    candidates += [h.get("value") for h in mail.get("headers") or []
                   if isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id"]
    ids = tuple(dict.fromkeys(i for c in candidates if isinstance(c, str) and (i := normalise_message_id(c))))
    if what == "Bounce" and isinstance(notification.get("bounce"), dict):
        b = notification["bounce"]
        first = (b.get("bouncedRecipients") or [{}])[0]
        first = first if isinstance(first, dict) else {}
        kind = {"Permanent": Kind.HARD_BOUNCE, "Transient": Kind.SOFT_BOUNCE}.get(b.get("bounceType"), Kind.OTHER)
        code = _STATUS_CODE.search(str(first.get("status") or ""))
        text = f"{b.get('bounceType')}/{b.get('bounceSubType')}"
        if first.get("diagnosticCode"):
            text += f": {' '.join(str(first['diagnosticCode']).split())}"
        return [FeedbackEvent("ses", _key("ses", b.get("feedbackId"), sns_message_id), kind, ids,
                              code.group(0) if code else None,
                              without_address(text, str(first.get("emailAddress") or "")), _iso(b.get("timestamp")))]
    if what == "Complaint" and isinstance(notification.get("complaint"), dict):
        c = notification["complaint"]
        feedback_type = str(c.get("complaintFeedbackType") or "unspecified")
        kind = Kind.OTHER if feedback_type == "not-spam" else Kind.COMPLAINT
        return [FeedbackEvent("ses", _key("ses", c.get("feedbackId"), sns_message_id), kind, ids, None,
                              scrub(f"complaint, feedback type {feedback_type}", DETAIL_CHARS),
                              _iso(c.get("timestamp")))]
    return [FeedbackEvent("ses", _key("sns", sns_message_id, sns_message_id), Kind.OTHER, ids, None,
                          scrub(f"an SES notification of type {what or 'unknown'}: nothing to apply", DETAIL_CHARS))]


def _key(prefix: str, provider_id: object, fallback: str) -> str:
    """The provider's own event id (SES feedbackId, a retry keeps it); else the SNS message id."""
    value = str(provider_id) if isinstance(provider_id, str | int) and str(provider_id) else None
    return f"{prefix}:{value}"[:128] if value else event_key(prefix, fallback)


def _iso(value: object) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


# --- Mailgun ---------------------------------------------------------------------------------------------


class SeenTokens:
    """Mailgun tokens already used, for as long as their timestamp would be accepted, per process. Only
    authentic requests reach it, so it grows with Mailgun's own volume. Across several api-server processes a
    replay may reach another one: the event id's dedup then keeps it from being applied twice."""

    def __init__(self, max_tokens: int = 100_000) -> None:
        self.max_tokens = max_tokens
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, token: str, now: float) -> bool:
        with self._lock:
            return self._until.get(token, 0.0) > now

    def add(self, token: str, until: float, now: float) -> None:
        with self._lock:
            if len(self._until) >= self.max_tokens:
                self._until = {t: u for t, u in self._until.items() if u > now}
            self._until[token] = until


def verify_mailgun(payload: dict, signing_key: str, max_age: int, tokens: SeenTokens, now: float) -> str:
    """The request's token, or ForgedRequest when its HMAC-SHA256 of timestamp + token under the signing key
    does not match, its timestamp is more than ``max_age`` seconds away, or its token was used before."""
    sig = payload.get("signature")
    sig = sig if isinstance(sig, dict) else {}
    timestamp, token, signature = (str(sig.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and signature):
        raise ForgedRequest("no Mailgun signature (signature.timestamp, token, signature)")
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise ForgedRequest("its Mailgun signature does not match the signing key")
    try:
        age = now - float(timestamp)
    except ValueError:
        raise ForgedRequest("its Mailgun timestamp is not a number") from None
    if abs(age) > max_age:
        raise ForgedRequest(f"signed {int(age)} s ago, more than delivery.feedback.webhook_max_age_seconds "
                            f"({max_age}) away: a replay")
    if tokens.seen(token, now):
        raise ForgedRequest("its Mailgun token was used before: a replay")
    return token


def mailgun_event(data: dict, token: str) -> FeedbackEvent:
    """The event of a Mailgun webhook's ``event-data`` (documentation.mailgun.com, Events): ``failed`` with
    severity permanent is a hard bounce, temporary a soft one; ``complained`` a complaint; anything else other."""
    what, severity = str(data.get("event") or ""), str(data.get("severity") or "")
    if what == "complained":
        kind = Kind.COMPLAINT
    elif what == "failed":
        kind = {"permanent": Kind.HARD_BOUNCE, "temporary": Kind.SOFT_BOUNCE}.get(severity, Kind.OTHER)
    else:
        kind = Kind.OTHER
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    mid = normalise_message_id(str(headers.get("message-id") or ""))
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    code = _STATUS_CODE.search(str(status.get("enhanced-code") or "")) or _STATUS_CODE.search(
        str(status.get("message") or ""))
    reason = " ".join(str(status.get("message") or status.get("description") or data.get("reason") or "").split())
    detail = f"{what} ({severity})" if severity else what or "no event"
    try:
        occurred = datetime.fromtimestamp(float(data.get("timestamp")), UTC)
    except (TypeError, ValueError, OverflowError):
        occurred = None
    return FeedbackEvent("mailgun", _key("mailgun", data.get("id"), token), kind, (mid,) if mid else (),
                         code.group(0) if code else None,
                         without_address(f"{detail}: {reason}" if reason else detail, str(data.get("recipient") or "")),
                         occurred)


# --- the routes --------------------------------------------------------------------------------------------


def _json_object(body: bytes, what: str) -> dict:
    """The request's JSON object; ForgedRequest for anything else (nothing unverifiable is believed)."""
    try:
        value = json.loads(body)
    except ValueError:  # not UTF-8, not JSON
        raise ForgedRequest(f"not {what}: not JSON") from None
    if not isinstance(value, dict):
        raise ForgedRequest(f"not {what}: not a JSON object")
    return value


def _answer(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=NO_STORE)


def _recorded(result: FeedbackResult) -> JSONResponse:
    return _answer(200, {"status": "recorded", "applied": result.applied, "unmatched": result.unmatched,
                         "duplicate": result.duplicate})


def add_routes(app: FastAPI, get_engine: Callable[[], Engine], get_settings: Callable[[], Settings],
               strikes=None, fetch: Fetch = fetch_url) -> None:
    """Add ``POST /webhooks/ses`` and ``POST /webhooks/mailgun`` to the public app. ``fetch`` gets SNS
    certificates and confirms subscriptions (tests pass one serving their own certificate)."""
    # Imported here: unsubscribe.create_app calls this, and the app's body limit and strikes are its own.
    from starlette.concurrency import run_in_threadpool

    from crm_tasks.delivery.unsubscribe import Strikes, _bounded_body, _source

    strikes = strikes if strikes is not None else Strikes()
    certs = CertCache(fetch)
    tokens = SeenTokens()

    def forged(source: str, request: Request, why: str) -> JSONResponse:
        # The reason goes to the log and the row, not to the sender: a forger learns nothing from it.
        log.warning("webhook %s: refused a forged request: %s", source, why)
        strikes.strike(_source(request))
        with get_engine().begin() as conn:
            record_events(conn, get_settings(), [FeedbackEvent.forgery(source, why)])
        return _answer(403, {"status": "forged"})

    async def body_of(request: Request, cfg: Settings) -> bytes | JSONResponse:
        if strikes.blocked(_source(request)):
            return JSONResponse({"status": "too many forged requests"}, status_code=429,
                                headers={**NO_STORE, "Retry-After": str(int(strikes.window))})
        body = await _bounded_body(request, cfg.delivery.feedback.webhook_max_bytes)
        if body is None:
            return _answer(413, {"status": "request too large"})
        return body

    def receive_ses(request: Request, body: bytes) -> JSONResponse:
        cfg = get_settings()
        fb = cfg.delivery.feedback
        try:
            msg = _json_object(body, "an SNS message")
            verify_sns(msg, fb, certs, datetime.now(UTC))
        except ForgedRequest as exc:
            return forged("ses", request, str(exc))
        except CrmError as exc:
            log.warning("webhook ses: could not check a request, answered 503 for SNS to retry: %s", exc)
            return JSONResponse({"status": "try again later"}, status_code=503, headers={**NO_STORE, "Retry-After": "60"})
        if msg["Type"] == "SubscriptionConfirmation":
            if fb.confirm_sns_subscriptions:
                try:
                    fetch(check_sns_url(msg.get("SubscribeURL"), fb.sns_cert_host, "SubscribeURL"))
                except ForgedRequest as exc:
                    return forged("ses", request, str(exc))
                log.info("webhook ses: confirmed the SNS subscription of topic %s", msg["TopicArn"])
                return _answer(200, {"status": "subscription confirmed"})
            log.warning("webhook ses: topic %s asks to confirm its subscription; confirm it in the AWS console "
                        "(or set delivery.feedback.confirm_sns_subscriptions): %s", msg["TopicArn"],
                        msg.get("SubscribeURL"))
            return _answer(200, {"status": "subscription logged, not confirmed"})
        if msg["Type"] == "UnsubscribeConfirmation":
            log.warning("webhook ses: topic %s unsubscribed this endpoint", msg["TopicArn"])
            return _answer(200, {"status": "unsubscribe logged"})
        try:
            notification = json.loads(msg["Message"])
        except ValueError:
            notification = {}
        events = ses_events(notification if isinstance(notification, dict) else {}, str(msg["MessageId"]))
        with get_engine().begin() as conn:
            return _recorded(record_events(conn, cfg, events))

    def receive_mailgun(request: Request, body: bytes, signing_key: str) -> JSONResponse:
        cfg = get_settings()
        max_age = cfg.delivery.feedback.webhook_max_age_seconds
        now = time.time()
        try:
            payload = _json_object(body, "a Mailgun webhook")
            token = verify_mailgun(payload, signing_key, max_age, tokens, now)
        except ForgedRequest as exc:
            return forged("mailgun", request, str(exc))
        data = payload.get("event-data")
        with get_engine().begin() as conn:
            result = record_events(conn, cfg, [mailgun_event(data if isinstance(data, dict) else {}, token)])
        # Used only once recorded: a request that failed before this point may be retried with its token.
        tokens.add(token, now + 2 * max_age, now)
        return _recorded(result)

    @app.post("/webhooks/ses")
    async def ses(request: Request):
        cfg = get_settings()
        if not cfg.delivery.feedback.ses_topic_arns:
            return _answer(503, {"status": "not configured: list the SNS topic in delivery.feedback.ses_topic_arns"})
        body = await body_of(request, cfg)
        if not isinstance(body, bytes):
            return body
        return await run_in_threadpool(receive_ses, request, body)

    @app.post("/webhooks/mailgun")
    async def mailgun(request: Request):
        cfg = get_settings()
        if cfg.mailgun_signing_key is None:
            return _answer(503, {"status": "not configured: set CRM_MAILGUN_SIGNING_KEY"})
        body = await body_of(request, cfg)
        if not isinstance(body, bytes):
            return body
        return await run_in_threadpool(receive_mailgun, request, body, cfg.mailgun_signing_key.get_secret_value())
