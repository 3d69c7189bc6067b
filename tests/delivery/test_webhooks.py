"""Provider webhooks: Amazon SES through SNS with a real RSA signature check (SignatureVersion 1 and 2) over
SNS's canonical string-to-sign, against a certificate issued by a CA made here and served by the injected
fetcher; Mailgun's HMAC with timestamp and token. Authentic events are applied once; forged, stale, replayed
and foreign ones get 403, are counted as forged and change nothing; large bodies get 413; on SQLite and
PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from crm_tasks.delivery import webhooks
from crm_tasks.delivery.suppression import email_hash
from crm_tasks.delivery.unsubscribe import Strikes
from crm_tasks.store.models import AddressBounce, DeliveryEvent
from tests.delivery.feedback_support import (
    OTHER_ID,
    PEOPLE,
    mailgun_event_data,
    next_birthday_plan,
    send_birthdays,
    ses_bounce,
    ses_complaint,
    suppressions,
)

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
SUBSCRIBE_URL = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
                 f"{TOPIC}&Token=2336412f37fb687f5d51e6e2425dacbba0f6e6ab")
SIGNING_KEY = "key-" + "3ax6xnjp29jd6fds4gc373sgvjxteol0"


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, days: int = 30) -> x509.Certificate:
    """Valid from ten days ago until ``days`` from now (a negative ``days``: expired)."""
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=10)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def sns_keys():
    """A CA and the SNS signing certificate it issued (AWS's is issued by a public CA); and a forger's key with
    a certificate of its own, for the same subject."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("Test Root CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA")]), ca_key,
               True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert("sns.amazonaws.com", key, ca.subject, ca_key, False)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged_cert = _cert("sns.amazonaws.com", forger, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]),
                        forger, False)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return SimpleNamespace(key=key, pem=pem, forger=forger, forged_pem=forged_cert.public_bytes(serialization.Encoding.PEM))


def canonical(msg: dict) -> bytes:
    """SNS's string-to-sign, written from AWS's documentation (not from the code under test): each field as
    name, newline, value, newline, in byte order of the names; Subject only when present."""
    names = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"] if msg["Type"] == "Notification"
             else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
    return "".join(f"{n}\n{msg[n]}\n" for n in names if n in msg).encode()


def sns(message, key, *, kind: str = "Notification", version: str = "1", cert_url: str = CERT_URL,
        topic: str = TOPIC, subject: str | None = None, **fields) -> dict:
    """An SNS HTTP(S) delivery, signed with ``key`` (SHA1withRSA for version 1, SHA256withRSA for 2)."""
    msg = {"Type": kind, "MessageId": str(uuid.uuid4()), "TopicArn": topic,
           "Message": message if isinstance(message, str) else json.dumps(message),
           "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
           "SignatureVersion": version, "SigningCertURL": cert_url,
           "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1"}
    if subject is not None:
        msg["Subject"] = subject
    if kind != "Notification":
        msg |= {"Token": "2336412f37fb687f5d51e6e2425dacbba0f6e6ab", "SubscribeURL": SUBSCRIBE_URL}
    msg |= fields
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    msg["Signature"] = base64.b64encode(key.sign(canonical(msg), padding.PKCS1v15(), digest)).decode()
    return msg


def mailgun(data: dict, *, key: str = SIGNING_KEY, timestamp: float | None = None, token: str | None = None) -> dict:
    timestamp = str(int(timestamp if timestamp is not None else time.time()))
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": signature}, "event-data": data}


@pytest.fixture
def sent(engine, cfg) -> dict[str, str]:
    return send_birthdays(engine, cfg)


@pytest.fixture
def feedback_cfg(cfg):
    fb = cfg.delivery.feedback.model_copy(update={"ses_topic_arns": [TOPIC], "webhook_max_bytes": 16 * 1024})
    return cfg.model_copy(update={"mailgun_signing_key": SecretStr(SIGNING_KEY),
                                  "delivery": cfg.delivery.model_copy(update={"feedback": fb})})


@pytest.fixture
def app(engine, feedback_cfg, sns_keys):
    """The webhook routes on an app of their own, with a fetcher serving the test CA's SNS certificate (and
    recording every URL it is asked for); settings can be changed through ``app.state.cfg``."""
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        if url == CERT_URL:
            return sns_keys.pem
        if url.endswith("/forger.pem"):
            return sns_keys.forged_pem
        return b"<ConfirmSubscriptionResponse/>"

    application = FastAPI()
    application.state.cfg = feedback_cfg
    application.state.fetched = fetched
    webhooks.add_routes(application, lambda: engine, lambda: application.state.cfg, Strikes(limit=1000), fetch)
    return application


@pytest.fixture
def client(app):
    return TestClient(app)


def events(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(DeliveryEvent.source, DeliveryEvent.kind, DeliveryEvent.status)
                                               .order_by(DeliveryEvent.id))]


def assert_refused_as_forged(client, engine, provider: str, request) -> None:
    """403 with nothing said about why, one forged row, and no suppression."""
    done = post(client, f"/webhooks/{provider}", request)
    assert done.status_code == 403 and done.json() == {"status": "forged"}
    assert events(engine) == [(provider, "other", "forged")]
    assert suppressions(engine) == {}


def post(client, path: str, payload) -> object:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(path, content=body, headers={"Content-Type": "application/json",
                                                    "x-amz-sns-message-type": "Notification"})


# --- Amazon SES through SNS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"], ids=["SHA1withRSA", "SHA256withRSA"])
def test_a_signed_ses_bounce_suppresses_and_planning_then_excludes_the_address(client, app, engine, feedback_cfg,
                                                                              keys, sent, sns_keys, version):
    done = post(client, "/webhooks/ses", sns(ses_bounce(sent["C1"], "asha.rao@example.org"), sns_keys.key,
                                             version=version))
    assert done.status_code == 200 and done.json() == {"status": "recorded", "applied": 1, "unmatched": 0,
                                                       "duplicate": 0}
    assert suppressions(engine) == {email_hash("asha.rao@example.org", keys.hashing): ("C1", "hard_bounce")}
    assert next_birthday_plan(engine, feedback_cfg).reasons == {"suppressed": 1}
    # A complaint, with a Subject this time (signed too); the certificate is not fetched again.
    done = post(client, "/webhooks/ses", sns(ses_complaint(sent["C2"], "ravi.kumar@example.net"), sns_keys.key,
                                             version=version, subject="Amazon SES Email Event Notification"))
    assert done.status_code == 200 and done.json()["applied"] == 1
    assert suppressions(engine)[email_hash("ravi.kumar@example.net", keys.hashing)] == ("C2", "complaint")
    assert app.state.fetched == [CERT_URL]
    assert events(engine) == [("ses", "hard_bounce", "applied"), ("ses", "complaint", "applied")]


def test_a_transient_ses_bounce_only_counts(client, engine, keys, sent, sns_keys):
    done = post(client, "/webhooks/ses", sns(ses_bounce(sent["C3"], "meera.iyer@example.com", "Transient"),
                                             sns_keys.key))
    assert done.status_code == 200 and done.json()["applied"] == 1
    assert suppressions(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(select(AddressBounce.email_hash, AddressBounce.soft_bounces)).all() == [
            (email_hash("meera.iyer@example.com", keys.hashing), 1)]


def test_an_sns_retry_is_a_duplicate_and_an_unknown_message_is_unmatched(client, engine, sent, sns_keys):
    delivery = sns(ses_bounce(sent["C1"], "asha.rao@example.org"), sns_keys.key)
    assert post(client, "/webhooks/ses", delivery).json()["applied"] == 1
    assert post(client, "/webhooks/ses", delivery).json() == {"status": "recorded", "applied": 0, "unmatched": 0,
                                                              "duplicate": 1}
    assert post(client, "/webhooks/ses", sns(ses_bounce(OTHER_ID, "x.y@example.org"), sns_keys.key)).json()[
        "unmatched"] == 1
    assert events(engine) == [("ses", "hard_bounce", "applied"), ("ses", "hard_bounce", "duplicate"),
                              ("ses", "hard_bounce", "unmatched")]
    assert len(suppressions(engine)) == 1


def _tampered(msg: dict) -> dict:
    """Signed for C2's message, then re-pointed at C1's."""
    inner = json.loads(msg["Message"])
    inner["mail"]["commonHeaders"]["messageId"] = inner["mail"]["headers"][3]["value"] = "<tampered>"
    return {**msg, "Message": json.dumps(inner)}


@pytest.mark.parametrize("forge", [
    "signed by another key", "altered after signing", "certificate of the forger at an SNS-looking host",
    "certificate over http", "certificate on another host", "certificate not a .pem", "topic not accepted",
    "unknown signature version", "signature not base64", "not json",
])
def test_forged_ses_requests_get_403_are_counted_and_change_nothing(client, app, engine, sent, sns_keys, forge):
    bounce = ses_bounce(sent["C1"], "asha.rao@example.org")
    request = {
        "signed by another key": lambda: sns(bounce, sns_keys.forger),
        "altered after signing": lambda: _tampered(sns(bounce, sns_keys.key)),
        "certificate of the forger at an SNS-looking host": lambda: sns(
            bounce, sns_keys.forger, cert_url="https://sns.us-east-1.amazonaws.com.evil.example/forger.pem"),
        "certificate over http": lambda: sns(bounce, sns_keys.key, cert_url=CERT_URL.replace("https:", "http:")),
        "certificate on another host": lambda: sns(bounce, sns_keys.forger, cert_url="https://evil.example/forger.pem"),
        "certificate not a .pem": lambda: sns(bounce, sns_keys.key, cert_url=CERT_URL[:-4] + ".txt"),
        "topic not accepted": lambda: sns(bounce, sns_keys.key, topic="arn:aws:sns:us-east-1:999999999999:other"),
        "unknown signature version": lambda: {**sns(bounce, sns_keys.key), "SignatureVersion": "3"},
        "signature not base64": lambda: {**sns(bounce, sns_keys.key), "Signature": "%%%"},
        "not json": lambda: b"Type=Notification&Message=x",
    }[forge]()
    assert_refused_as_forged(client, engine, "ses", request)
    # Nothing is fetched from a place the request names, unless it is on an SNS host over https.
    assert set(app.state.fetched) <= {CERT_URL}


def test_a_subscription_is_confirmed_only_when_the_setting_allows(client, app, engine, sns_keys, feedback_cfg, caplog):
    caplog.set_level(logging.INFO)
    confirm = sns("You have chosen to subscribe to the topic.", sns_keys.key, kind="SubscriptionConfirmation")
    done = post(client, "/webhooks/ses", confirm)
    assert done.status_code == 200 and done.json() == {"status": "subscription logged, not confirmed"}
    assert app.state.fetched == [CERT_URL]  # the certificate, never the SubscribeURL
    assert SUBSCRIBE_URL in caplog.text and "confirm it in the AWS console" in caplog.text
    fb = feedback_cfg.delivery.feedback.model_copy(update={"confirm_sns_subscriptions": True})
    app.state.cfg = feedback_cfg.model_copy(update={"delivery": feedback_cfg.delivery.model_copy(update={"feedback": fb})})
    assert post(client, "/webhooks/ses", confirm).json() == {"status": "subscription confirmed"}
    assert app.state.fetched == [CERT_URL, SUBSCRIBE_URL]
    # Even allowed, a SubscribeURL elsewhere is never fetched: the request is forged.
    elsewhere = sns("x", sns_keys.key, kind="SubscriptionConfirmation", SubscribeURL="https://evil.example/confirm")
    assert post(client, "/webhooks/ses", elsewhere).status_code == 403
    assert app.state.fetched == [CERT_URL, SUBSCRIBE_URL]
    assert events(engine) == [("ses", "other", "forged")]


def test_an_expired_signing_certificate_does_not_verify(engine, feedback_cfg, sns_keys, sent):
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = _cert("sns.amazonaws.com", sns_keys.key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]),
                ca_key, False, days=-2)
    application = FastAPI()
    webhooks.add_routes(application, lambda: engine, lambda: feedback_cfg, Strikes(),
                        lambda url: old.public_bytes(serialization.Encoding.PEM))
    done = post(TestClient(application), "/webhooks/ses", sns(ses_bounce(sent["C1"], "asha.rao@example.org"),
                                                              sns_keys.key))
    assert done.status_code == 403 and suppressions(engine) == {}


def test_a_certificate_that_cannot_be_fetched_now_gets_503_for_sns_to_retry(engine, feedback_cfg, sns_keys, sent):
    def unreachable(url: str) -> bytes:
        raise TimeoutError("timed out")

    application = FastAPI()
    webhooks.add_routes(application, lambda: engine, lambda: feedback_cfg, Strikes(), unreachable)
    done = post(TestClient(application), "/webhooks/ses", sns(ses_bounce(sent["C1"], "asha.rao@example.org"),
                                                              sns_keys.key))
    assert done.status_code == 503 and done.headers["retry-after"] == "60"
    assert events(engine) == [] and suppressions(engine) == {}  # neither applied nor called forged


def test_a_certificate_url_aws_does_not_serve_is_forged_and_a_network_failure_is_not(monkeypatch):
    import urllib.error
    import urllib.request

    from crm_tasks.errors import ForgedRequest

    def answer(error):
        def urlopen(*args, **kw):
            raise error
        return urlopen

    monkeypatch.setattr(urllib.request, "urlopen", answer(urllib.error.HTTPError(CERT_URL, 404, "Not Found", {}, None)))
    with pytest.raises(ForgedRequest, match="answered 404"):
        webhooks.fetch_url(CERT_URL)
    monkeypatch.setattr(urllib.request, "urlopen", answer(urllib.error.URLError("connection refused")))
    with pytest.raises(OSError):
        webhooks.fetch_url(CERT_URL)


# --- Mailgun -----------------------------------------------------------------------------------------------


def test_mailgun_failures_and_complaints_are_applied(client, engine, keys, sent):
    hard = post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(sent["C1"], "asha.rao@example.org")))
    soft = post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(sent["C3"], "meera.iyer@example.com",
                                                                        severity="temporary")))
    spam = post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(sent["C2"], "ravi.kumar@example.net",
                                                                        event="complained")))
    assert [r.status_code for r in (hard, soft, spam)] == [200, 200, 200]
    assert suppressions(engine) == {email_hash("asha.rao@example.org", keys.hashing): ("C1", "hard_bounce"),
                                    email_hash("ravi.kumar@example.net", keys.hashing): ("C2", "complaint")}
    assert events(engine) == [("mailgun", "hard_bounce", "applied"), ("mailgun", "soft_bounce", "applied"),
                              ("mailgun", "complaint", "applied")]
    with engine.connect() as conn:
        assert conn.execute(select(DeliveryEvent.status_code)).scalars().all() == ["5.1.1", "4.2.2", None]


@pytest.mark.parametrize("forge", ["wrong key", "altered after signing", "stale timestamp", "from the future",
                                   "no signature", "not json"])
def test_forged_mailgun_requests_get_403_are_counted_and_change_nothing(client, engine, sent, forge):
    data = mailgun_event_data(sent["C1"], "asha.rao@example.org")
    request = {
        "wrong key": lambda: mailgun(data, key="key-another-accounts-signing-key-000000"),
        "altered after signing": lambda: {**mailgun(data), "signature": {**mailgun(data)["signature"],
                                                                         "timestamp": str(int(time.time()) + 1)}},
        "stale timestamp": lambda: mailgun(data, timestamp=time.time() - 301),
        "from the future": lambda: mailgun(data, timestamp=time.time() + 301),
        "no signature": lambda: {"event-data": data},
        "not json": lambda: b"\xff\xfe not json",
    }[forge]()
    assert_refused_as_forged(client, engine, "mailgun", request)


def test_a_replayed_mailgun_token_is_refused_and_a_retried_event_is_a_duplicate(client, engine, sent):
    data = mailgun_event_data(sent["C1"], "asha.rao@example.org")
    signed = mailgun(data)
    assert post(client, "/webhooks/mailgun", signed).status_code == 200
    assert post(client, "/webhooks/mailgun", signed).status_code == 403  # the same token again: a replay
    # Mailgun retrying the same event signs it afresh: accepted, and recognised by its event id.
    again = post(client, "/webhooks/mailgun", mailgun(data))
    assert again.status_code == 200 and again.json()["duplicate"] == 1
    assert events(engine) == [("mailgun", "hard_bounce", "applied"), ("mailgun", "other", "forged"),
                              ("mailgun", "hard_bounce", "duplicate")]
    assert len(suppressions(engine)) == 1


# --- both ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/webhooks/ses", "/webhooks/mailgun"])
def test_a_body_over_the_cap_gets_413_before_it_is_read(client, engine, path):
    big = b'{"padding": "' + b"x" * (16 * 1024) + b'"}'
    assert post(client, path, big).status_code == 413
    # Streamed without a length, it is cut off as soon as it passes the cap.
    streamed = client.post(path, content=iter([b"x" * 8192] * 4), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert events(engine) == []


def test_unconfigured_webhooks_answer_503_and_record_nothing(engine, cfg):
    application = FastAPI()
    webhooks.add_routes(application, lambda: engine, lambda: cfg, Strikes(), lambda url: b"")
    client = TestClient(application)
    ses, mg = post(client, "/webhooks/ses", {"Type": "Notification"}), post(client, "/webhooks/mailgun", {})
    assert (ses.status_code, mg.status_code) == (503, 503)
    assert "delivery.feedback.ses_topic_arns" in ses.json()["status"]
    assert "CRM_MAILGUN_SIGNING_KEY" in mg.json()["status"]
    assert events(engine) == []


def test_a_source_of_many_forgeries_is_turned_away_without_a_write(engine, feedback_cfg, sent):
    application = FastAPI()
    webhooks.add_routes(application, lambda: engine, lambda: feedback_cfg, Strikes(limit=3), lambda url: b"")
    client = TestClient(application)
    answers = [post(client, "/webhooks/mailgun", mailgun({}, key="wrong")).status_code for _ in range(5)]
    assert answers == [403, 403, 403, 429, 429]
    assert events(engine) == [("mailgun", "other", "forged")] * 3


def test_the_public_app_serves_the_webhooks(engine, feedback_cfg, sent, keys):
    from crm_tasks.delivery.unsubscribe import create_app

    client = TestClient(create_app(lambda: feedback_cfg, lambda: engine))
    done = post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(sent["C1"], "asha.rao@example.org")))
    assert done.status_code == 200 and done.json()["applied"] == 1
    assert post(client, "/webhooks/ses", b"{}").status_code == 403  # served, and checked


def test_no_address_or_name_in_rows_responses_or_logs(client, engine, sent, sns_keys, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [
        post(client, "/webhooks/ses", sns(ses_bounce(sent["C1"], "asha.rao@example.org"), sns_keys.key)),
        post(client, "/webhooks/ses", sns(ses_complaint(sent["C2"], "ravi.kumar@example.net"), sns_keys.forger)),
        post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(sent["C3"], "meera.iyer@example.com"))),
        post(client, "/webhooks/mailgun", mailgun(mailgun_event_data(OTHER_ID, "meera.iyer@example.com",
                                                                     severity="temporary"))),
    ]
    assert [a.status_code for a in answers] == [200, 403, 200, 200]
    with engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(DeliveryEvent)) for v in row)
    shown = " ".join(a.text for a in answers) + caplog.text + " ".join(str(r.args) for r in caplog.records)
    for first, email in PEOPLE.values():
        for text in (email, email.split("@")[0], first):
            assert text not in stored and text not in shown, text
