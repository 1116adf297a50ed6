"""Per-relay SMTP connection pools with a connection limit that holds across processes and machines.

A relay URL may carry ``?connections=N``: at most N SMTP connections to that relay are open at once,
counted over every worker process on every machine. Each open connection holds a *slot*: a member of
the Redis sorted set ``newsletter:slots:<relay>`` whose score is its expiry on Redis's clock. A pool
thread renews the slots of its process every ``SLOT_TTL / 3`` seconds, so a worker that is killed
leaks its slots for at most `SLOT_TTL` seconds. Without Redis (the embedded default) the limit holds
inside the one process. The database stays the source of truth for deliveries: a slot only says who
may open a connection.

Each process keeps its open connections between batches (a batch returns them with ``close()``), and
closes a connection idle for `IDLE_SECONDS`, giving its slot to whichever process needs it next.
Without ``?connections=`` a process keeps one connection per relay and no shared limit applies (the
behaviour before pools: one connection per worker process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from newsletter.delivery.errors import DeliveryError
from newsletter.delivery.mailers import Envelope, Mailer, SmtpMailer

log = logging.getLogger(__name__)

SLOT_TTL = 30.0  # seconds a slot outlives its last renewal (a killed worker's slots come back after this)
IDLE_SECONDS = 1.0  # a pooled connection unused this long is closed and its slot given back
CHECK_AFTER = 0.25  # seconds idle after which a reused connection is checked with NOOP first
SLOT_POLL = 0.05  # seconds between tries for a slot while all are taken
MAX_CONNECTIONS = 1000
# Seconds a relay may be kept waiting for a body whose envelope was pipelined (RFC 5321 §4.5.3.2 gives a
# client 3 minutes per data block; a ``?rate=`` slower than connections / this sends without pipelining).
PIPELINE_MAX_WAIT = 10.0

# KEYS[1] the slot set, KEYS[2] the waiters; ARGV: member, limit, ttl ms. Expired members are dropped
# first, so a dead worker's slots come back. Returns 1 when the member now holds a slot; else the
# member is noted as waiting for a second, so holders give idle connections up (see `has_waiters`).
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], now + 1000, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 2000)
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] the waiters: how many asked for a slot in the last second and have none yet.
WAITERS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# ARGV: ttl ms, members... Extends the members still present; returns how many were.
RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
    n = n + 1
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return n
"""


def relay_connections(url: str) -> int | None:
    """The ``connections`` parameter of a relay URL (None when absent).

    Raises:
        ValueError: it is not an integer from 1 to `MAX_CONNECTIONS`.
    """
    values = parse_qs(urlsplit(url).query).get("connections")
    if not values:
        return None
    n = int(values[-1])
    if not 1 <= n <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, not {n}")
    return n


class Slots(Protocol):
    """A counting semaphore of connection slots; members are strings chosen by the caller."""

    def acquire(self, member: str) -> bool: ...

    def renew(self, members: list[str]) -> int: ...

    def release(self, member: str) -> None: ...

    def has_waiters(self) -> bool: ...


class RedisSlots:
    """`Slots` in a Redis sorted set ``newsletter:slots:<relay>`` (see the module docstring)."""

    def __init__(self, client: Any, relay: str, limit: int, ttl: float = SLOT_TTL) -> None:
        self.client, self.key, self.limit, self.ttl_ms = client, f"newsletter:slots:{relay}", limit, int(ttl * 1000)
        self.waiters = f"newsletter:slot-waiters:{relay}"
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._waiters = client.register_script(WAITERS_LUA)
        self._renew = client.register_script(RENEW_LUA)

    def acquire(self, member: str) -> bool:
        """Take a slot for ``member`` if fewer than ``limit`` are held; never blocks."""
        return bool(self._acquire(keys=[self.key, self.waiters], args=[member, self.limit, self.ttl_ms]))

    def has_waiters(self) -> bool:
        """True when some process asked for a slot in the last second and got none."""
        return bool(self._waiters(keys=[self.waiters]))

    def renew(self, members: list[str]) -> int:
        """Extend the given members' slots by the TTL; returns how many still held one."""
        return int(self._renew(keys=[self.key], args=[self.ttl_ms, *members])) if members else 0

    def release(self, member: str) -> None:
        """Give ``member``'s slot back."""
        self.client.zrem(self.key, member)

    def held(self) -> int:
        """Slots currently held (expired ones included until the next acquire drops them)."""
        return int(self.client.zcard(self.key))


class LocalSlots:
    """`Slots` inside one process (no Redis: the embedded default)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.members, self.lock = limit, set[str](), threading.Lock()

    def acquire(self, member: str) -> bool:
        """See `RedisSlots.acquire`."""
        with self.lock:
            if len(self.members) >= self.limit:
                return False
            self.members.add(member)
            return True

    def renew(self, members: list[str]) -> int:
        """See `RedisSlots.renew`."""
        with self.lock:
            return sum(1 for m in members if m in self.members)

    def release(self, member: str) -> None:
        """See `RedisSlots.release`."""
        with self.lock:
            self.members.discard(member)

    def has_waiters(self) -> bool:
        """Senders of this process wait for each other's connections: nothing to hand over."""
        return False


class PooledMailer:
    """A pool's connection lent to one sender; ``close()`` gives it back to the pool instead of QUIT."""

    def __init__(self, pool: ConnectionPool, inner: Mailer, slot: str) -> None:
        self.pool, self.inner, self.slot, self.name = pool, inner, slot, inner.name
        self.idle_since = time.monotonic()
        # The next message's envelope may go out behind this one's body (`SmtpMailer.send`'s ``then``) unless
        # a rate limit could keep the relay waiting for that body longer than `PIPELINE_MAX_WAIT`.
        rate = getattr(pool.limiter, "rate", None) if pool.limiter is not None else float("inf")
        self.pipelines = bool(getattr(inner, "pipelines", False)) and rate is not None and rate * PIPELINE_MAX_WAIT >= pool.connections
        # `send_begin` / `send_end` can be used (the batch works while the relay takes a body).
        self.splits = hasattr(inner, "send_begin")

    def send(self, sender: str, recipient: str, message: bytes, then: Envelope | None = None) -> None:
        """See `Mailer.send` (and `SmtpMailer.send` for ``then``, passed on when `pipelines`); the pool's
        rate limit (if any) is taken first."""
        if self.pool.limiter is not None:
            self.pool.limiter.acquire()
        if then is not None and self.pipelines:
            self.inner.send(sender, recipient, message, then)  # type: ignore[call-arg]
        else:
            self.inner.send(sender, recipient, message)

    def send_begin(self, sender: str, recipient: str, message: bytes, then: Envelope | None = None) -> None:
        """`send` up to the write of the body (`SmtpMailer.send_begin`, when `splits`); `send_end` reads
        the reply. The rate limit is taken here, before anything of this message leaves."""
        if self.pool.limiter is not None:
            self.pool.limiter.acquire()
        self.inner.send_begin(sender, recipient, message, then if self.pipelines else None)  # type: ignore[attr-defined]

    def send_end(self) -> None:
        """This message's outcome (see `SmtpMailer.send_end`)."""
        self.inner.send_end()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Return the connection to its pool (it stays open for the next batch)."""
        self.pool.put(self)


class ConnectionPool:
    """The open connections of one process to one relay, at most ``connections`` of them across all
    processes sharing ``slots``. `get` lends one; a sender returns it with ``close()``.

    ``connections`` is how many senders a batch may run at once on this relay (1 when the URL sets no
    ``connections``: one connection per process, as before pools).
    """

    def __init__(
        self,
        make: Callable[[], Mailer],
        slots: Slots,
        connections: int,
        limiter: Any = None,
        ttl: float = SLOT_TTL,
        idle: float = IDLE_SECONDS,
    ) -> None:
        self.make, self.slots, self.connections, self.limiter, self.ttl, self.idle = make, slots, connections, limiter, ttl, idle
        self._idle: list[PooledMailer] = []
        self._lent: set[str] = set()
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self.opened = 0  # connections made, for tests and the bench

    def get(self, wait: bool) -> PooledMailer | None:
        """An idle connection of this process, else a new one once a slot is free.

        With ``wait`` False, None when every slot is taken; with ``wait`` True, polls every `SLOT_POLL`
        seconds until a slot is free. The SMTP connection itself opens lazily at the first send.
        """
        with self._lock:
            mailer = self._idle.pop() if self._idle else None
            if mailer is not None:
                self._lent.add(mailer.slot)
        if mailer is not None:
            check = getattr(mailer.inner, "check", None)
            if check is not None and time.monotonic() - mailer.idle_since > CHECK_AFTER:
                check()
            return mailer
        slot = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        while not self.slots.acquire(slot):
            if not wait:
                return None
            time.sleep(SLOT_POLL)
        mailer = PooledMailer(self, self.make(), slot)
        with self._lock:
            self._lent.add(slot)
            self.opened += 1
            self._start_keeper()
        return mailer

    def put(self, mailer: PooledMailer) -> None:
        """Take a lent connection back: idle until the next batch, or closed after `idle` seconds; closed
        at once when another process waits for a slot of this relay (so it gets its share)."""
        mailer.idle_since = time.monotonic()
        with self._lock:
            self._lent.discard(mailer.slot)
        try:
            hand_over = self.slots.has_waiters()
        except Exception:  # Redis away: keep the connection; its slot lapses if renewals fail
            hand_over = False
        if hand_over:
            with contextlib.suppress(DeliveryError, OSError):
                mailer.inner.close()
            self.slots.release(mailer.slot)
            return
        with self._lock:
            self._idle.append(mailer)

    def close_idle(self, older_than: float | None = None) -> int:
        """Close idle connections unused for ``older_than`` seconds (all with None) and free their slots."""
        now = time.monotonic()
        with self._lock:
            old = [m for m in self._idle if older_than is None or now - m.idle_since >= older_than]
            self._idle = [m for m in self._idle if m not in old]
        for m in old:
            with contextlib.suppress(DeliveryError, OSError):
                m.inner.close()
            self.slots.release(m.slot)
        return len(old)

    def renew(self) -> None:
        """Extend the slots of every connection this process has open (lent or idle)."""
        with self._lock:
            members = list(self._lent) + [m.slot for m in self._idle]
        held = self.slots.renew(members)
        if held < len(members):
            log.warning("%s of %s connection slots expired before renewal (the process was stalled)", len(members) - held, len(members))

    def _start_keeper(self) -> None:
        if self._keeper is None or not self._keeper.is_alive():
            self._keeper = threading.Thread(target=self._keep, name="smtp-pool", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        last_renewal = time.monotonic()
        while True:
            time.sleep(min(self.idle / 2, self.ttl / 3))
            try:
                self.close_idle(self.idle)
                if time.monotonic() - last_renewal >= self.ttl / 3:
                    self.renew()
                    last_renewal = time.monotonic()
            except Exception:  # Redis away: slots may lapse; the next acquire counts only live ones
                log.exception("connection pool upkeep failed")


_pools: dict[tuple[int, str, str | None], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool_for(relay_url: str, redis_url: str | None, timeout: float) -> ConnectionPool:
    """This process's pool for a relay (created at first use; a forked child makes its own)."""
    from newsletter.delivery.ratelimit import limiter_for

    key = (os.getpid(), relay_url, redis_url)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            limit = relay_connections(relay_url)
            slots: Slots
            if limit is not None and redis_url:
                import redis

                relay = urlsplit(relay_url).netloc.rsplit("@", 1)[-1]
                slots = RedisSlots(redis.Redis.from_url(redis_url), relay, limit)
            else:
                slots = LocalSlots(limit or 1)
            pool = ConnectionPool(lambda: SmtpMailer(relay_url, timeout=timeout), slots, limit or 1, limiter_for(relay_url, redis_url))
            _pools[key] = pool
        return pool
