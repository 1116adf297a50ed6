"""Retry schedule: exponential backoff with full jitter, a cap, and a total retry window."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from newsletter.config import RetryPolicy


def backoff_ceiling(policy: RetryPolicy, attempt: int) -> float:
    """The largest delay (seconds) before retry number ``attempt`` (1-based): ``min(cap, base * 2**(attempt-1))``."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    return min(policy.cap, policy.base * 2.0 ** min(attempt - 1, 64))


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter: a delay drawn uniformly from ``[0, backoff_ceiling(policy, attempt)]`` seconds.

    Source: M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog (2015): full jitter
    spreads retries of many clients evenly and finishes the work soonest.
    """
    return (rng or random).uniform(0.0, backoff_ceiling(policy, attempt))


def next_attempt(
    policy: RetryPolicy, attempts_made: int, first_attempt_at: datetime, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to try again after ``attempts_made`` failed attempts, or None to give up.

    Gives up once ``attempts_made >= policy.max_attempts`` or when the next attempt would fall
    outside ``policy.window`` seconds from the first attempt.
    """
    if attempts_made >= policy.max_attempts:
        return None
    when = now + timedelta(seconds=backoff_delay(policy, attempts_made, rng))
    if when > first_attempt_at + timedelta(seconds=policy.window):
        return None
    return when
