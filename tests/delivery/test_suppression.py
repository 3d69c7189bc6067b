"""Suppression hashes and unsubscribe tokens: keyed, normalised, unforgeable; recorded once per address."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm_tasks.delivery.suppression import add_suppressions, email_hash, unsubscribe_token, verify_unsubscribe_token
from crm_tasks.errors import InvalidToken

KEY = "k" * 32


def test_the_hash_is_keyed_and_ignores_case_and_surrounding_space():
    assert email_hash("  Asha.Rao@Example.COM ", KEY) == email_hash("asha.rao@example.com", KEY)
    assert email_hash("asha.rao@example.com", KEY) != email_hash("asha.rao@example.com", "x" * 32)
    assert "asha" not in email_hash("asha.rao@example.com", KEY)


def test_a_token_names_its_customer_and_only_with_the_key():
    token = unsubscribe_token("C0000042", KEY)
    assert verify_unsubscribe_token(token, (KEY,)) == "C0000042"
    with pytest.raises(InvalidToken):
        verify_unsubscribe_token(token, ("x" * 32,))  # another deployment's key
    # The id part re-pointed at another customer, with the original signature.
    other = unsubscribe_token("C0000043", KEY).split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(InvalidToken, match="signature"):
        verify_unsubscribe_token(other, (KEY,))
    for garbage in ("", "no-dot", "%%%.%%%", "w6g.AAAA"):
        with pytest.raises(InvalidToken):
            verify_unsubscribe_token(garbage, (KEY,))


def test_an_address_is_suppressed_once_and_keeps_its_first_reason(engine):
    from sqlalchemy import select

    from crm_tasks.store.models import Suppression

    at = datetime(2026, 3, 1, tzinfo=UTC)
    row = {"email_hash": email_hash("a@example.com", KEY), "customer_id": "C1", "reason": "unsubscribed",
           "created_at": at}
    with engine.begin() as conn:
        assert add_suppressions(conn, [row, {**row, "email_hash": email_hash("b@example.com", KEY)}]) == 2
        assert add_suppressions(conn, [{**row, "reason": "hard_bounce"}]) == 0
        assert add_suppressions(conn, []) == 0
    with engine.connect() as conn:
        reasons = conn.execute(select(Suppression.reason).where(Suppression.email_hash == row["email_hash"])).all()
    assert [r.reason for r in reasons] == ["unsubscribed"]
