"""Rate limits for web routes: at most ``limit`` events per ``window`` seconds per key (fixed window).

With Redis configured the counters live there, shared by every uvicorn worker and machine; without it,
in this process. When Redis does not answer, the limits are counted in this process instead (the same
limits, per process) so sign-in and sign-up keep working; Redis is tried again after `RETRY_REDIS`
seconds. One warning is logged when Redis stops answering and one line when it answers again (not a
traceback per request). Used for sign-in attempts and the public sign-up form.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
RETRY_REDIS = 30.0  # seconds between attempts at Redis once it failed (no connection timeout per request)
T = TypeVar("T")

_outage_lock = threading.Lock()
_outages: set[str] = set()  # Redis URLs that stopped answering: one warning each for all limiters, not one per request


def _note_outage(url: str, exc: Exception) -> None:
    with _outage_lock:
        if url not in _outages:
            _outages.add(url)
            log.warning("rate limits: Redis at %s does not answer (%s); counting in this process until it does", url, exc)


def _note_recovery(url: str) -> None:
    with _outage_lock:
        if url in _outages:
            _outages.discard(url)
            log.warning("rate limits: Redis at %s answers again; counting there", url)


class RateLimiter:
    """Counts events per key in windows of ``window`` seconds; `blocked` says how long to wait."""

    def __init__(self, name: str, limit: int, window: float, redis_url: str | None = None) -> None:
        self.name, self.limit, self.window = name, limit, window
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}
        self._redis: Any = None
        self._redis_url = redis_url or ""
        self._redis_down_until = 0.0  # monotonic time before which Redis is not tried again
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    def _key(self, key: str) -> str:
        return f"newsletter:ratelimit:{self.name}:{key}"

    def _shared(self, call: Callable[[Any], T]) -> tuple[bool, T | None]:
        """``(True, call(redis))`` when Redis is configured and answers, else ``(False, None)`` (count locally)."""
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return False, None
        import redis

        try:
            result = call(self._redis)
        except redis.RedisError as exc:
            self._redis_down_until = time.monotonic() + RETRY_REDIS
            _note_outage(self._redis_url, exc)
            return False, None
        if self._redis_down_until:
            self._redis_down_until = 0.0
            _note_recovery(self._redis_url)
        return True, result

    def hit(self, key: str) -> None:
        """Count one event for ``key``."""
        k = self._key(key)

        def count(r: Any) -> None:
            pipe = r.pipeline()
            pipe.incr(k)
            pipe.expire(k, int(self.window), nx=True)
            pipe.execute()

        if self._shared(count)[0]:
            return
        now = time.monotonic()
        with self._lock:
            start, n = self._counts.get(key, (now, 0))
            if now - start >= self.window:
                start, n = now, 0
            self._counts[key] = (start, n + 1)
            if len(self._counts) > 100_000:  # forget finished windows rather than grow without bound
                self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}

    def blocked(self, key: str) -> int:
        """Seconds until ``key`` may try again (0: not blocked)."""
        k = self._key(key)
        shared, answer = self._shared(lambda r: r.pipeline().get(k).ttl(k).execute())
        if shared:
            n, ttl = answer  # type: ignore[misc]
            return max(int(ttl), 1) if n is not None and int(n) >= self.limit else 0
        with self._lock:
            start, n = self._counts.get(key, (0.0, 0))
            left = self.window - (time.monotonic() - start)
            return max(int(left) + 1, 1) if n >= self.limit and left > 0 else 0

    def reset(self, key: str) -> None:
        """Forget ``key``'s count (after a successful sign-in)."""
        with self._lock:
            self._counts.pop(key, None)
        self._shared(lambda r: r.delete(self._key(key)))
