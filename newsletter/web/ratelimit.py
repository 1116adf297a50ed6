"""Rate limits for web routes: at most ``limit`` events per ``window`` seconds per key (fixed window).

With Redis configured the counters live there, shared by every uvicorn worker and machine; without it,
in this process. Used for sign-in attempts; reusable by any public form (subscribe, for instance).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class RateLimiter:
    """Counts events per key in windows of ``window`` seconds; `blocked` says how long to wait."""

    def __init__(self, name: str, limit: int, window: float, redis_url: str | None = None) -> None:
        self.name, self.limit, self.window = name, limit, window
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, int]] = {}
        self._redis: Any = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=2)

    def _key(self, key: str) -> str:
        return f"newsletter:ratelimit:{self.name}:{key}"

    def hit(self, key: str) -> None:
        """Count one event for ``key``."""
        if self._redis is not None:
            k = self._key(key)
            pipe = self._redis.pipeline()
            pipe.incr(k)
            pipe.expire(k, int(self.window), nx=True)
            pipe.execute()
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
        if self._redis is not None:
            k = self._key(key)
            n, ttl = self._redis.pipeline().get(k).ttl(k).execute()
            return max(int(ttl), 1) if n is not None and int(n) >= self.limit else 0
        with self._lock:
            start, n = self._counts.get(key, (0.0, 0))
            left = self.window - (time.monotonic() - start)
            return max(int(left) + 1, 1) if n >= self.limit and left > 0 else 0

    def reset(self, key: str) -> None:
        """Forget ``key``'s count (after a successful sign-in)."""
        if self._redis is not None:
            self._redis.delete(self._key(key))
            return
        with self._lock:
            self._counts.pop(key, None)
