"""Per-relay send rate limits: a token bucket shared through Redis by every worker on every machine.

A relay URL may carry ``?rate=N`` (messages per second, fractions allowed) and ``&burst=M`` (bucket
capacity, default 1). Without Redis (the embedded default) the bucket lives in this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from newsletter.delivery.mailers import Mailer

# Runs atomically inside Redis, on Redis's own clock, so workers with skewed clocks share one bucket.
# Returns 0 when a token was taken, else the milliseconds to wait before asking again.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 60000)
return wait
"""


class Limiter(Protocol):
    """Blocks until one more message may be sent."""

    def acquire(self) -> None: ...


def relay_rate(url: str) -> tuple[float | None, int]:
    """``(messages per second or None, burst)`` from a relay URL's query string.

    Raises:
        ValueError: ``rate`` is not a positive number or ``burst`` not a positive integer.
    """
    query = parse_qs(urlsplit(url).query)
    rate = float(query["rate"][0]) if "rate" in query else None
    burst = int(query.get("burst", ["1"])[0])
    if (rate is not None and rate <= 0) or burst < 1:
        raise ValueError(f"bad rate limit in SMTP URL (rate must be > 0, burst >= 1): {urlsplit(url)._replace(netloc='…').geturl()}")
    return rate, burst


class RedisTokenBucket:
    """A token bucket in Redis key ``newsletter:ratelimit:<relay>``: ``rate`` messages/s, ``burst`` at most at once."""

    def __init__(self, client: Any, relay: str, rate: float, burst: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.key, self.rate, self.burst, self.sleep = client, f"newsletter:ratelimit:{relay}", rate, burst, sleep
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def acquire(self) -> None:
        """See `Limiter.acquire`."""
        while True:
            wait_ms = int(self._script(keys=[self.key], args=[self.rate, self.burst]))
            if wait_ms <= 0:
                return
            self.sleep(wait_ms / 1000)


class LocalTokenBucket:
    """The same bucket for one process (the embedded default)."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        """See `Limiter.acquire`."""
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class RateLimitedMailer:
    """A `Mailer` that takes a token before each message."""

    def __init__(self, inner: Mailer, limiter: Limiter) -> None:
        self.inner, self.limiter, self.name = inner, limiter, inner.name

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """See `Mailer.send`."""
        self.limiter.acquire()
        self.inner.send(sender, recipient, message)

    def close(self) -> None:
        self.inner.close()


_limiters: dict[tuple[str, str | None], Limiter | None] = {}
_limiters_lock = threading.Lock()


def limiter_for(relay_url: str, redis_url: str | None) -> Limiter | None:
    """The process-wide limiter for a relay (None when its URL sets no ``rate``)."""
    key = (relay_url, redis_url)
    with _limiters_lock:
        if key not in _limiters:
            rate, burst = relay_rate(relay_url)
            limiter: Limiter | None = None
            if rate is not None:
                if redis_url:
                    import redis

                    relay = urlsplit(relay_url).netloc.rsplit("@", 1)[-1]
                    limiter = RedisTokenBucket(redis.Redis.from_url(redis_url), relay, rate, burst)
                else:
                    limiter = LocalTokenBucket(rate, burst)
            _limiters[key] = limiter
        return _limiters[key]


def with_rate_limit(mailer: Mailer, relay_url: str | None, redis_url: str | None) -> Mailer:
    """Wrap ``mailer`` in the relay's rate limit, if its URL sets one."""
    limiter = limiter_for(relay_url, redis_url) if relay_url else None
    return RateLimitedMailer(mailer, limiter) if limiter else mailer
