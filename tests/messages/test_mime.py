"""The hand-built MIME messages parse back, with the standard library, to exactly what went in."""

from __future__ import annotations

import random
from email import policy
from email.parser import BytesParser

import pytest

from crm_tasks.delivery.smtp import prepare_payload
from crm_tasks.errors import HeaderInjection
from crm_tasks.messages.mime import Envelope, build_message, message_id_for

SCRIPTS = ["Asha Rao", "సీత లక్ష్మి", "अनीता शर्मा", "مریم احمدی", "عائشہ خان", "Zoë O'Brien-Łukasz", "😀🎂",
           "=?utf-8?q?not_an_encoded_word?=", "100% off, today: \"quoted\" (comment) <angle>",
           "వెంకట సత్య నారాయణ లక్ష్మి ప్రసన్న కుమారి", "back\\slash"]


def envelope(**kw) -> Envelope:
    base = {"sender_name": "Rewards Club", "sender_email": "rewards@example.com", "recipient": "asha@example.com",
            "recipient_name": "Asha", "subject": "Happy birthday", "message_id": message_id_for("k", "example.com"),
            "list_unsubscribe": ("https://crm.example.com/unsubscribe/abc.def",
                                 "mailto:unsubscribe@example.com?subject=unsubscribe%20abc.def"),
            "list_id": "birthday.example.com"}
    return Envelope(**{**base, **kw})


def parse(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


def display_name(raw: bytes, field: str = "To") -> str:
    """The display name decoded by RFC 2047's rules. (The modern parser of address headers puts a space
    between adjacent encoded-words, which RFC 2047 says to drop; it does so for the standard library's
    own EmailMessage output too, so the name is decoded with email.header here.)"""
    from email import message_from_bytes
    from email.header import decode_header, make_header
    from email.utils import parseaddr

    value = message_from_bytes(raw)[field]
    phrase = value.rsplit("<", 1)[0].strip()
    if phrase.startswith('"'):
        return parseaddr(value)[0]
    return str(make_header(decode_header(phrase)))


def test_random_subjects_names_and_bodies_round_trip():
    rng = random.Random(7)
    for i in range(300):
        words = [rng.choice(SCRIPTS) for _ in range(rng.randint(1, 12))]
        subject = " ".join(words)
        name = rng.choice(SCRIPTS)
        text = "\n".join(rng.choice(SCRIPTS) for _ in range(rng.randint(0, 40))) + "\n.\n..leading dots\n"
        html = "<p dir='rtl'>" + "".join(rng.choice(SCRIPTS) for _ in range(rng.randint(0, 400))) + "</p>"
        env = envelope(subject=subject, recipient_name=name, message_id=message_id_for(f"k{i}", "example.com"))
        raw = build_message(env, text, html)
        assert all(len(line) <= 78 for line in raw.split(b"\r\n")), "a line longer than 78 characters"
        assert raw.isascii() and b"\n" not in raw.replace(b"\r\n", b"")
        msg = parse(raw)
        assert msg["subject"] == subject
        assert display_name(raw) == name and msg["to"].addresses[0].addr_spec == env.recipient
        assert msg["from"].addresses[0].display_name == "Rewards Club"
        assert msg["message-id"] == env.message_id
        assert msg.get_content_type() == "multipart/alternative"
        plain, rich = msg.iter_parts()
        assert plain.get_content_type() == "text/plain" and plain.get_content() == text
        assert rich.get_content_type() == "text/html" and rich.get_content() == html
        assert not msg.defects and not plain.defects and not rich.defects


def test_marketing_headers_follow_rfc_8058_and_2369():
    msg = parse(build_message(envelope(), "t", "<p>h</p>"))
    assert msg["list-unsubscribe"] == ("<https://crm.example.com/unsubscribe/abc.def>, "
                                       "<mailto:unsubscribe@example.com?subject=unsubscribe%20abc.def>")
    assert msg["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert msg["list-id"] == "<birthday.example.com>"
    assert msg["mime-version"] == "1.0" and msg["date"] is not None


@pytest.mark.parametrize("field", ["subject", "recipient_name", "sender_name", "recipient", "list_id"])
@pytest.mark.parametrize("evil", ["x\r\nBcc: victim@example.org", "x\nBcc: v@e.org", "x\rX-Evil: 1", "x\x00y"])
def test_a_line_break_in_any_header_value_is_refused(field, evil):
    with pytest.raises(HeaderInjection, match="line break or NUL"):
        build_message(envelope(**{field: evil}), "t", "h")


@pytest.mark.parametrize("address", ["two@example.com, three@example.com", "Name <a@example.com>", "no-at-sign",
                                     "a b@example.com", "a@b@example.com"])
def test_an_address_that_is_not_one_plain_address_is_refused(address):
    with pytest.raises(HeaderInjection, match="not a plain e-mail address"):
        build_message(envelope(recipient=address), "t", "h")


def test_the_same_key_always_gets_the_same_message_id():
    assert message_id_for("birthday:C1:2027", "example.com") == message_id_for("birthday:C1:2027", "example.com")
    assert message_id_for("birthday:C1:2027", "example.com") != message_id_for("birthday:C1:2028", "example.com")
    # Keyed: without the deployment's key nobody computes a customer's Message-ID (to forge a bounce).
    keyed = message_id_for("birthday:C1:2027", "example.com", "k1")
    assert keyed == message_id_for("birthday:C1:2027", "example.com", "k1")
    assert keyed not in {message_id_for("birthday:C1:2027", "example.com"),
                         message_id_for("birthday:C1:2027", "example.com", "k2")}


def test_the_data_payload_doubles_leading_dots_and_ends_the_data():
    payload = prepare_payload(b"Subject: x\r\n\r\n.hidden\r\nok\r\n")
    assert payload.endswith(b"\r\n.\r\n") and b"\r\n..hidden\r\n" in payload
