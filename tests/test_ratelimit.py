"""Per-relay rate limits: one token bucket in Redis shared by every worker."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from newsletter.delivery.ratelimit import LocalTokenBucket, RedisTokenBucket, relay_rate


def test_relay_rate_parsing() -> None:
    assert relay_rate("smtp://mx.example.org:25") == (None, 1)
    assert relay_rate("smtp://u:p@mx.example.org:25?rate=2.5&burst=4") == (2.5, 4)
    with pytest.raises(ValueError, match="rate must be > 0"):
        relay_rate("smtp://mx.example.org?rate=0")


def _hammer(buckets: list, per_bucket: int) -> float:
    start = time.monotonic()
    threads = [threading.Thread(target=lambda b=b: [b.acquire() for _ in range(per_bucket)]) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def test_redis_bucket_is_shared_by_all_workers(redis_available: str) -> None:
    relay = f"relay-{uuid.uuid4().hex[:8]}"
    # Three "workers", each with its own connection, as on three machines.
    buckets = [RedisTokenBucket(redis.Redis.from_url(redis_available), relay, rate=20, burst=1) for _ in range(3)]
    elapsed = _hammer(buckets, per_bucket=8)
    # 24 messages at 20/s with a burst of 1 cannot take less than 23/20 s, however the work is split.
    assert elapsed >= 23 / 20 - 0.05


def test_separate_relays_do_not_share_a_bucket(redis_available: str) -> None:
    client = redis.Redis.from_url(redis_available)
    a = RedisTokenBucket(client, f"a-{uuid.uuid4().hex[:8]}", rate=1, burst=5)
    b = RedisTokenBucket(client, f"b-{uuid.uuid4().hex[:8]}", rate=1, burst=5)
    sleeps: list[float] = []
    a.sleep = b.sleep = sleeps.append  # type: ignore[method-assign]
    for _ in range(5):
        a.acquire()
        b.acquire()
    assert sleeps == []  # each relay's own burst of 5 was available


def test_local_bucket_limits_one_process() -> None:
    bucket = LocalTokenBucket(rate=50, burst=1)
    elapsed = _hammer([bucket, bucket], per_bucket=10)
    assert elapsed >= 19 / 50 - 0.02
