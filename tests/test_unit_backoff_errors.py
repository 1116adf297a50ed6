"""Unit tests for newsletter.delivery.backoff and newsletter.delivery.errors."""

from __future__ import annotations

import random
import smtplib
from datetime import UTC, datetime, timedelta

import pytest

from newsletter.config import RetryPolicy
from newsletter.delivery.backoff import backoff_ceiling, backoff_delay, next_attempt
from newsletter.delivery.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    classify_exception,
    classify_reply,
)

POLICY = RetryPolicy(base=60.0, cap=3600.0, max_attempts=8, window=86400.0)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

# --- backoff ---------------------------------------------------------------------------------------


def test_backoff_ceiling_exact_values() -> None:
    assert [backoff_ceiling(POLICY, n) for n in range(1, 11)] == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600]


def test_backoff_ceiling_huge_attempt_does_not_overflow() -> None:
    assert backoff_ceiling(POLICY, 10_000) == 3600


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_ceiling_is_one_based(attempt: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_ceiling(POLICY, attempt)


def test_backoff_delay_within_ceiling_and_reproducible() -> None:
    rng = random.Random(1234)
    delays = [backoff_delay(POLICY, n, rng) for n in range(1, 9) for _ in range(50)]
    ceilings = [backoff_ceiling(POLICY, n) for n in range(1, 9) for _ in range(50)]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    again = random.Random(1234)
    assert delays == [backoff_delay(POLICY, n, again) for n in range(1, 9) for _ in range(50)]
    expected = random.Random(7).uniform(0.0, 240.0)
    assert backoff_delay(POLICY, 3, random.Random(7)) == expected


def test_next_attempt_is_now_plus_jittered_delay() -> None:
    expected = T0 + timedelta(seconds=random.Random(3).uniform(0.0, 120.0))
    assert next_attempt(POLICY, 2, T0, T0, random.Random(3)) == expected


def test_next_attempt_gives_up_at_max_attempts() -> None:
    assert next_attempt(POLICY, 7, T0, T0, random.Random(1)) is not None
    assert next_attempt(POLICY, 8, T0, T0, random.Random(1)) is None
    assert next_attempt(POLICY, 9, T0, T0, random.Random(1)) is None


def test_next_attempt_gives_up_outside_window() -> None:
    policy = RetryPolicy(base=60.0, cap=3600.0, max_attempts=100, window=600.0)
    # A delay of at least 1 second lands beyond the window's end, 0.5 s away.
    now = T0 + timedelta(seconds=599.5)

    class AtLeastOne(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return max(1.0, super().uniform(a, b))

    assert next_attempt(policy, 3, T0, now, AtLeastOne(5)) is None
    # Well after the window has closed, nothing is scheduled whatever the draw.
    assert next_attempt(policy, 1, T0, T0 + timedelta(seconds=601), random.Random(5)) is None
    # Inside the window with room to spare, a time is returned and it is inside the window.
    when = next_attempt(policy, 1, T0, T0, random.Random(5))
    assert when is not None and T0 <= when <= T0 + timedelta(seconds=60)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [421, 450, 451, 452, 454])
def test_classify_reply_4xx_is_temporary(code: int) -> None:
    err = classify_reply(code, b"4.7.1 Try again later", relay="mx1:25")
    assert type(err) is TemporaryDeliveryError
    assert (err.smtp_code, err.enhanced_code, err.relay) == (code, "4.7.1", "mx1:25")


@pytest.mark.parametrize("code", [550, 553, 554])
def test_classify_reply_5xx_is_permanent(code: int) -> None:
    err = classify_reply(code, b"5.1.1 <nobody@example.com>: Recipient address rejected")
    assert type(err) is PermanentDeliveryError
    assert err.smtp_code == code
    assert err.enhanced_code == "5.1.1"
    assert err.message == "5.1.1 <nobody@example.com>: Recipient address rejected"
    assert str(err).startswith(f"{code} ") and str(err).endswith(err.message)


def test_classify_reply_without_enhanced_code_and_multiline_text() -> None:
    err = classify_reply(550, b"Mailbox\n   unavailable")
    assert type(err) is PermanentDeliveryError
    assert err.enhanced_code is None
    assert err.message == "Mailbox unavailable"


def test_classify_reply_basic_code_decides_over_enhanced() -> None:
    assert type(classify_reply(450, "5.1.1 odd")) is TemporaryDeliveryError
    assert type(classify_reply(550, "4.2.2 odd")) is PermanentDeliveryError


def test_classify_reply_odd_basic_code_uses_enhanced_class() -> None:
    assert type(classify_reply(250, "5.7.1 rejected after DATA")) is PermanentDeliveryError
    assert type(classify_reply(250, "4.4.2 timeout")) is TemporaryDeliveryError
    assert type(classify_reply(0, "no code")) is TemporaryDeliveryError


def test_classify_reply_ignores_ip_addresses() -> None:
    assert classify_reply(451, "Greylisted by mx 10.4.5.6, try again later").enhanced_code is None


def test_classify_exception_recipients_refused_uses_recipient_reply() -> None:
    exc = smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"5.1.1 User unknown"), "b@example.com": (452, b"4.2.2 Full")})
    err = classify_exception(exc, "a@example.com", relay="mx")
    assert type(err) is PermanentDeliveryError
    assert (err.smtp_code, err.enhanced_code, err.relay) == (550, "5.1.1", "mx")
    err_b = classify_exception(exc, "b@example.com")
    assert type(err_b) is TemporaryDeliveryError
    assert (err_b.smtp_code, err_b.enhanced_code) == (452, "4.2.2")


def test_classify_exception_recipients_refused_other_recipient_falls_back() -> None:
    exc = smtplib.SMTPRecipientsRefused({"x@example.com": (553, b"5.1.3 Bad address syntax")})
    err = classify_exception(exc, "someone@example.com")
    assert type(err) is PermanentDeliveryError and err.smtp_code == 553


def test_classify_exception_response_exceptions() -> None:
    err = classify_exception(smtplib.SMTPDataError(554, b"5.7.1 Message rejected as spam"), "a@example.com")
    assert type(err) is PermanentDeliveryError and (err.smtp_code, err.enhanced_code) == (554, "5.7.1")
    err = classify_exception(smtplib.SMTPSenderRefused(451, b"4.3.0 Try later", "from@example.org"), "a@example.com")
    assert type(err) is TemporaryDeliveryError and err.smtp_code == 451


@pytest.mark.parametrize(
    "exc",
    [
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
    ],
)
def test_classify_exception_connection_failures_are_temporary(exc: BaseException) -> None:
    err = classify_exception(exc, "a@example.com", relay="relay:25")
    assert type(err) is TemporaryDeliveryError
    assert err.smtp_code is None and err.enhanced_code is None and err.relay == "relay:25"
    assert err.message.startswith(f"{type(exc).__name__}: ")


def test_classify_exception_passes_delivery_errors_through_and_reraises_others() -> None:
    original = PermanentDeliveryError("x", 550)
    assert classify_exception(original, "a@example.com") is original
    with pytest.raises(KeyError):
        classify_exception(KeyError("bug"), "a@example.com")
    assert issubclass(TemporaryDeliveryError, DeliveryError) and issubclass(PermanentDeliveryError, DeliveryError)
