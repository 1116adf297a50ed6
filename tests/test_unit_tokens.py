"""Unit tests for newsletter.tokens: signed links and Message-IDs."""

from __future__ import annotations

import re
import string

import pytest

from newsletter.tokens import BadToken, message_id, sign, verify

SECRET = "test-secret"


def test_sign_shape_and_determinism() -> None:
    token = sign(SECRET, "unsubscribe", 42, 7)
    assert re.fullmatch(r"42\.7\.[A-Za-z0-9_-]{22}", token)
    assert token == sign(SECRET, "unsubscribe", 42, 7)
    assert sign(SECRET, "preferences", 42).startswith("42.0.")


@pytest.mark.parametrize(("sub", "issue"), [(1, 0), (42, 7), (10**9, 123456)])
def test_round_trip(sub: int, issue: int) -> None:
    assert verify(SECRET, "unsubscribe", sign(SECRET, "unsubscribe", sub, issue)) == (sub, issue)


def test_tampered_ids_are_rejected() -> None:
    _, _, mac = sign(SECRET, "unsubscribe", 42, 7).split(".")
    for forged in (f"43.7.{mac}", f"42.8.{mac}", f"+42.7.{mac}", f"042.7.{mac}"):
        with pytest.raises(BadToken):
            verify(SECRET, "unsubscribe", forged)


def test_tampered_signature_first_char_is_rejected() -> None:
    token = sign(SECRET, "unsubscribe", 42, 7)
    sub, issue, mac = token.split(".")
    other = "B" if mac[0] != "B" else "C"
    with pytest.raises(BadToken, match="bad signature"):
        verify(SECRET, "unsubscribe", f"{sub}.{issue}.{other}{mac[1:]}")


def test_wrong_purpose_and_wrong_secret_are_rejected() -> None:
    token = sign(SECRET, "unsubscribe", 42, 7)
    with pytest.raises(BadToken, match="bad signature"):
        verify(SECRET, "preferences", token)
    with pytest.raises(BadToken, match="bad signature"):
        verify("another-secret", "unsubscribe", token)


@pytest.mark.parametrize("token", ["", "42", "42.7", "a.b.c", "42.7.sig.extra", "42.7.ü", "42.x.AAAA"])
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(BadToken):
        verify(SECRET, "unsubscribe", token)


def test_only_the_exact_signature_text_verifies() -> None:
    token = sign(SECRET, "unsubscribe", 42, 7)
    sub, issue, mac = token.split(".")
    accepted = []
    for ch in string.ascii_letters + string.digits + "-_":
        if ch == mac[-1]:
            continue
        try:
            verify(SECRET, "unsubscribe", f"{sub}.{issue}.{mac[:-1]}{ch}")
            accepted.append(ch)
        except BadToken:
            pass
    for suffix in ("=", "=="):
        try:
            verify(SECRET, "unsubscribe", token + suffix)
            accepted.append(suffix)
        except BadToken:
            pass
    assert accepted == []


def test_message_id_is_deterministic_and_per_subscriber() -> None:
    a = message_id(SECRET, 1, 2, "news.example.org")
    assert a == message_id(SECRET, 1, 2, "news.example.org")
    assert re.fullmatch(r"<issue1\.2\.[0-9a-f]{16}@news\.example\.org>", a)
    assert a != message_id(SECRET, 1, 3, "news.example.org")
    assert a != message_id(SECRET, 2, 2, "news.example.org")
    assert a != message_id("other-secret", 1, 2, "news.example.org")
    assert len({message_id(SECRET, 1, s, "d.example") for s in range(200)}) == 200
