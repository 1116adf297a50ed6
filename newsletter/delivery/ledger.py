"""The delivery ledger: planning rows and atomic state changes.

Every transition is one conditional UPDATE whose WHERE clause names the state it leaves, so running
the same step twice (a redelivered task, two workers, a sweeper) changes nothing the second time.

    pending -> sending -> sent
    sending -> deferred -> sending ...   (transient failure, `next_attempt_at` set)
    sending -> failed                    (permanent, attempts exhausted, or retry window passed)
    pending|sending -> skipped           (unsubscribed or suppressed after planning)

A claim sets a lease (``claimed_until``) and a fencing token (``claim_token``). While its worker is
alive the lease is kept renewed by a `LeaseKeeper`, also in the middle of a slow SMTP transaction; only
a claim whose lease ran out (its worker died) may be taken again, and taking it changes the token, so
the old holder can neither renew nor record anything afterwards. An outcome the relay gave is recorded
even across a database restart (`RECORD_RETRY_SECONDS`, on a fresh connection) while the claim is held:
for a lease after a PostgreSQL restart no claim counts as run out (`_expired`), since no holder could
renew while the server was down. A delivery is claimed at most ``max_attempts`` times.

A token begins with its holder's mark when the process has one (`set_holder`: a Celery pool process);
the worker's main process, which sees its pool process die, ends that process's leases at once
(`expire_claims_of`) instead of leaving them to run out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import select as io_select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, and_, bindparam, case, exists, false, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db import first_line, in_values, is_transient_db_error
from newsletter.models import FINAL_DELIVERY_STATES, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long an outcome the relay already gave (or a renewal) is retried while the database is away
# (a restart, a fail-over): seconds. Longer than any restart we expect; the claim stays ours meanwhile.
RECORD_RETRY_SECONDS = 300.0


def retrying(session: Session, action: Callable[[], T], what: str, give_up_after: float = RECORD_RETRY_SECONDS) -> T:
    """Run ``action`` (which commits); when the database connection is lost or refused, roll back and
    run it again on a fresh connection (the pool's pre-ping replaces dead ones), with a growing pause,
    for up to ``give_up_after`` seconds.

    Raises:
        the last error, once ``give_up_after`` seconds passed; any error that is not transient at once.
    """
    deadline = time.monotonic() + give_up_after
    pause = 0.05
    while True:
        try:
            return action()
        except DBAPIError as exc:
            if not is_transient_db_error(exc):
                raise
            _rollback(session)
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: database unreachable (%s); trying again on a fresh connection", what, first_line(exc))
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _rollback(session: Session) -> None:
    with contextlib.suppress(DBAPIError):  # the connection is gone; the session is usable again all the same
        session.rollback()


def insert_ignore(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """INSERT delivery rows, skipping any whose (issue, subscriber) already exists. Returns rows inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = (
        module.insert(Delivery)
        .on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
        .returning(Delivery.id)  # rowcount is not reliable here on psycopg; RETURNING counts exactly
    )
    # Parameters as a list: SQLAlchemy's "insertmanyvalues" batches them into multi-row INSERTs from
    # one cached compiled statement, instead of compiling a fresh 1,000-row VALUES clause per chunk.
    return len(session.execute(stmt, list(rows)).all())


# This process's mark, the start of every claim token it makes ("" for none): see `set_holder`.
_holder = ""
TOKEN_LENGTH = 32  # hex characters: the claim_token column's width
HOLDER_MARK_LENGTH = 12  # hex characters of a token naming its holder; the other 20 (80 bits) are random


def holder_mark(secret: bytes, pid: int) -> str:
    """The mark of pool process ``pid`` of the worker whose random ``secret`` this is: what its claim tokens
    begin with. Only that worker's main process knows the secret, so only it can name (and end) a dead pool
    process's claims; two workers on two machines with the same pid never share a mark."""
    return hashlib.blake2b(secret + pid.to_bytes(8, "big"), digest_size=HOLDER_MARK_LENGTH // 2).hexdigest()


def set_holder(mark: str) -> None:
    """Begin every claim token this process makes from now on with ``mark`` (`holder_mark`; "" for none)."""
    global _holder
    if len(mark) > HOLDER_MARK_LENGTH or any(c not in "0123456789abcdef" for c in mark):
        raise ValueError(f"not a holder mark: {mark!r}")
    _holder = mark


def new_token() -> str:
    """A fresh claim token: this process's mark, then random hex (`TOKEN_LENGTH` characters in all)."""
    return _holder + secrets.token_hex((TOKEN_LENGTH - len(_holder)) // 2)


def _expired(dialect: str, now: datetime, lease_seconds: float) -> Any:
    """SQL: a ``sending`` row's claim ran out, so its holder is taken to be dead.

    Its lease ended before ``now``, and, on PostgreSQL, the server has been up for at least a lease: during
    a restart no holder can renew (its `LeaseKeeper` retries every half second) nor record an outcome the
    relay already gave (`RECORD_RETRY_SECONDS`), so a lease that ran out while the server was down says
    nothing about its holder. Without this, a restart longer than the lease let a second worker take over a
    claim whose message the relay had accepted and send it again. A fail-over to a standby that was started
    long before is not seen here: a lease is what protects a claim then.
    """
    ran_out = Delivery.claimed_until < now
    if dialect != "postgresql":
        return ran_out
    return and_(ran_out, func.pg_postmaster_start_time() < now - timedelta(seconds=lease_seconds))


def _claimable(issue_id: int, now: datetime, dialect: str = "", lease_seconds: float = 0.0) -> Any:
    """The claim's test of a row's issue and state, written as one CASE so that no index can serve it.

    The claim names its rows by id: the primary key is the only index it should use. Written as plain
    conditions (``issue_id = ? AND (status = 'pending' OR …)``), they match the (issue_id, status) index,
    and whenever PostgreSQL's statistics say the issue has few pending rows (a table not analysed
    since planning, or analysed while earlier issues were all sent) it reads every pending row of the
    issue through a bitmap scan and then filters them by id: O(issue size) per batch (at 20,000
    subscribers 85 ms per claim, against 0.5 ms by primary key). tests/test_delivery_plans.py checks it.
    """
    due = case(
        (Delivery.status == DeliveryStatus.PENDING, true()),
        (Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at <= now),
        (Delivery.status == DeliveryStatus.SENDING, _expired(dialect, now, lease_seconds)),
        else_=false(),
    )
    return case((Delivery.issue_id == issue_id, due), else_=false())


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds. ``token`` fences every later change (shared by one claim call's
    rows); ``lease`` is when the claim runs out unless renewed (see `LeaseKeeper`)."""

    id: int
    token: str
    lease: datetime


# What a sender needs of each claimed row, returned by the claim itself (no second read of the rows).
CLAIMED_COLUMNS = (
    Delivery.id, Delivery.subscriber_id, Delivery.email, Delivery.lang, Delivery.message_id, Delivery.attempts, Delivery.first_attempt_at,
)  # fmt: skip


def claim(
    session: Session,
    issue_id: int,
    ids: Sequence[int],
    lease_seconds: float,
    now: datetime | None = None,
    max_attempts: int | None = None,
) -> list[Claim]:
    """Atomically take the deliveries among ``ids`` that are due, and commit.

    One ``UPDATE … WHERE id IN (…) AND <due> RETURNING id``: on PostgreSQL a concurrent claimer blocks
    on the row lock and then re-checks the WHERE clause, so two workers never hold the same delivery.
    Each claim counts as an attempt; a delivery already claimed ``max_attempts`` times is not taken
    (the sweeper fails an expired one, see `fail_exhausted_claims`).
    """
    return [c for c, _ in claim_rows(session, issue_id, ids, lease_seconds, now, max_attempts)]


def claim_rows(
    session: Session,
    issue_id: int,
    ids: Sequence[int],
    lease_seconds: float,
    now: datetime | None = None,
    max_attempts: int | None = None,
) -> list[tuple[Claim, Any]]:
    """`claim`, returning with each claim its row's `CLAIMED_COLUMNS` (as they are after the claim:
    ``attempts`` counts this one), in id order. Reads the rows by primary key only (see `_claimable`)."""
    if not ids:
        return []
    now = now or utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    token = new_token()
    dialect = session.get_bind().dialect.name
    where = [in_values(session, Delivery.id, ids), _claimable(issue_id, now, dialect, lease_seconds)]
    if max_attempts is not None:
        where.append(Delivery.attempts < max_attempts)
    stmt = (
        update(Delivery)
        .where(*where)
        .values(
            status=DeliveryStatus.SENDING,
            claimed_until=lease,
            claim_token=token,
            attempts=Delivery.attempts + 1,
            first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
            updated_at=now,
        )
        .returning(*CLAIMED_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    rows = sorted(session.execute(stmt).all(), key=lambda r: r.id)
    session.commit()
    return [(Claim(id=r.id, token=token, lease=lease), r) for r in rows]


def renew(session: Session, claims: Sequence[Claim], lease_seconds: float, now: datetime | None = None) -> set[int]:
    """Extend the lease of every claim in ``claims`` that is still ours to ``now + lease_seconds``;
    commits. Returns the ids renewed: an id missing was taken over (its lease had run out) or is final."""
    if not claims:
        return set()
    now = now or utcnow()
    tokens = {c.token for c in claims}
    renewed = session.scalars(
        update(Delivery)
        .where(Delivery.id.in_([c.id for c in claims]), Delivery.claim_token.in_(tokens), Delivery.status == DeliveryStatus.SENDING)
        .values(claimed_until=now + timedelta(seconds=lease_seconds))
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    ids = set(renewed)
    session.commit()
    return ids


class LeaseKeeper:
    """Keeps one batch's claims alive while its worker works through them.

    A thread renews the leases every ``lease_seconds / 4`` on its own database connection, so a send
    that outlasts the whole lease (a relay answering DATA after minutes) does not let the sweeper hand
    the delivery to a second worker. When the database is away the thread keeps trying every half
    second; it stops with the batch (use as a context manager).

    The sending thread asks `holds` before each message: True while the delivery is still ours and the
    last confirmed renewal is younger than half a lease, so at least half a lease is left when a send
    starts. On an in-memory SQLite database (one process, one connection) no thread is needed.
    """

    def __init__(
        self, sessions: sessionmaker[Session], claims: Sequence[Claim], lease_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions, self._lease, self._clock = sessions, lease_seconds, clock
        self._claims = {c.id: c for c in claims}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._confirmed = clock()  # the claims were just taken
        self._thread: threading.Thread | None = None
        engine = getattr(sessions.kw.get("bind"), "engine", None)  # an Engine's .engine is itself
        # An in-memory SQLite database exists once per connection: a second one would see another database.
        self.threaded = engine is not None and not (engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"))
        self.renewals = 0

    @property
    def interval(self) -> float:
        """Seconds between renewals: a quarter lease, so two may fail before half the lease is gone."""
        return self._lease / 4

    def __enter__(self) -> LeaseKeeper:
        if self.threaded and self._claims:
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self._lease))

    def done(self, delivery_id: int) -> None:
        """The sender finished with ``delivery_id`` (recorded, or lost): stop renewing it."""
        with self._lock:
            self._claims.pop(delivery_id, None)

    def lost(self, delivery_id: int) -> bool:
        """True when a renewal found ``delivery_id`` taken over by another worker (or final)."""
        with self._lock:
            return delivery_id not in self._claims

    def holds(self, delivery_id: int) -> bool:
        """True while ``delivery_id`` is ours with at least half a lease left (no query)."""
        with self._lock:
            if delivery_id not in self._claims:
                return False
            return not self.threaded or self._clock() - self._confirmed < self._lease / 2

    def wait_until_held(self, delivery_id: int, timeout: float) -> bool:
        """`holds`, waiting up to ``timeout`` seconds for a renewal that is late (the database is away)."""
        deadline = self._clock() + timeout
        while not self.holds(delivery_id):
            if self.lost(delivery_id) or self._clock() >= deadline:
                return False
            time.sleep(min(0.05, self.interval))
        return True

    def renew_now(self) -> None:
        """Renew every claim still held, once (the thread calls this; so can a test).

        Raises:
            DBAPIError: the database could not be reached.
        """
        with self._lock:
            claims = list(self._claims.values())
        if not claims:
            return
        started = self._clock()
        with self._sessions() as session:
            renewed = renew(session, claims, self._lease)
        with self._lock:
            for c in claims:
                if c.id not in renewed and c.id in self._claims:
                    log.warning("delivery %s: claim taken over by another worker; left to it", c.id)
                    del self._claims[c.id]
            self._confirmed = started  # the lease runs from before the UPDATE, to be safe
            self.renewals += 1

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                self.renew_now()
                wait = self.interval
            except DBAPIError as exc:
                log.warning("lease renewal failed (%s); trying again", first_line(exc))
                wait = min(0.5, self.interval)
            except Exception:  # never let the keeper die silently: the sender then stops at `holds`
                log.exception("lease renewal failed")
                wait = min(0.5, self.interval)


_DELIVERIES = Delivery.__table__
_FINISH_STATEMENTS: dict[tuple[tuple[str, ...], bool, bool], Any] = {}


def _finish_statement(columns: tuple[str, ...], many: bool, uncount: bool) -> Any:
    """The Core UPDATE that moves claimed rows out of ``sending`` under our token, built once per shape.

    Every value is a bound parameter, so SQLAlchemy's compiled cache serves it and psycopg prepares it
    on the server after a few executions: one round trip per message, no ORM unit of work. The test of
    state and token is one `CASE`, as in `_claimable`: written as ``status = 'sending' AND …``, the
    prepared statement's generic plan (PostgreSQL's choice after five executions, with statistics from
    before the claims, where 'sending' is rare) reads the rows through the (status, next_attempt_at)
    index, visiting every row in ``sending`` and their dead versions, instead of the primary key
    (about 15% of PostgreSQL's CPU per sent row; tests/test_delivery_plans.py checks the plan).
    """
    key = (columns, many, uncount)
    stmt = _FINISH_STATEMENTS.get(key)
    if stmt is None:
        t = _DELIVERIES
        values: dict[str, Any] = {c: bindparam(f"v_{c}", type_=t.c[c].type) for c in columns}
        if uncount:
            values["attempts"] = t.c.attempts - 1
        ids = t.c.id.in_(bindparam("b_ids", expanding=True)) if many else t.c.id == bindparam("b_id")
        stmt = (
            update(t)
            .where(ids, case((t.c.status == DeliveryStatus.SENDING, t.c.claim_token == bindparam("b_token")), else_=false()))
            .values(updated_at=bindparam("v_updated_at", type_=t.c.updated_at.type), claimed_until=None, **values)
        )
        if many:
            stmt = stmt.returning(t.c.id)
        _FINISH_STATEMENTS[key] = stmt
    return stmt


def _finish(
    session: Session, claim_: Claim, values: dict[str, Any], retry_for: float = RECORD_RETRY_SECONDS, uncount: bool = False
) -> bool:
    """Apply an outcome only if our claim is still the current one; commit at once.

    One prepared Core UPDATE (see `_finish_statement`) on the session's connection, then COMMIT.
    ``uncount`` gives the claim's attempt back (a skip or a release is not an attempt).

    When the database connection drops (a restart) the outcome is written again on a fresh connection
    for up to ``retry_for`` seconds: a message the relay accepted must be recorded, or it would be sent
    again once its claim ran out. If the first commit did reach the database before the connection
    died, the retry finds the row already in the new state under our token and reports success.
    """
    return claim_.id in _finish_many(session, [claim_], values, retry_for, uncount)


def _finish_many(
    session: Session, claims: Sequence[Claim], values: dict[str, Any], retry_for: float = RECORD_RETRY_SECONDS, uncount: bool = False
) -> set[int]:
    """`_finish` for several claims at once (one statement per claim token, one COMMIT for all).
    Returns the ids recorded; an id missing was taken over by another worker (or is final)."""
    if not claims:
        return set()
    first = [True]

    def attempt() -> set[int]:
        again = not first[0]
        first[0] = False
        done = _apply(session.connection(), claims, values, uncount, again)
        session.commit()
        return done

    what = f"delivery {claims[0].id}" if len(claims) == 1 else f"{len(claims)} deliveries"
    return retrying(session, attempt, f"{what}: recording {values.get('status')}", retry_for)


def _apply(conn: Connection, claims: Sequence[Claim], values: dict[str, Any], uncount: bool, again: bool) -> set[int]:
    """Run the `_finish_statement` UPDATEs for ``claims`` on ``conn`` (one per claim token); returns the
    ids changed. ``again`` (a retry after a lost connection): a row already in the new state under our
    token counts as done, since the earlier commit may have reached the database."""
    columns = tuple(sorted(values))
    params = {f"v_{c}": v for c, v in values.items()}
    params["v_updated_at"] = utcnow()
    by_token: dict[str, list[int]] = {}
    for c in claims:
        by_token.setdefault(c.token, []).append(c.id)
    done: set[int] = set()
    for token, ids in by_token.items():
        if len(ids) == 1:
            if conn.execute(_finish_statement(columns, False, uncount), {**params, "b_id": ids[0], "b_token": token}).rowcount:
                done.add(ids[0])
        else:
            done.update(conn.execute(_finish_statement(columns, True, uncount), {**params, "b_ids": ids, "b_token": token}).scalars())
    if again:
        missing = {c.id: c.token for c in claims if c.id not in done}
        if missing:
            rows = conn.execute(
                select(_DELIVERIES.c.id, _DELIVERIES.c.status, _DELIVERIES.c.claim_token).where(_DELIVERIES.c.id.in_(list(missing)))
            )
            done.update(r.id for r in rows if r.claim_token == missing[r.id] and r.status == values.get("status"))
    return done


# The state and token test as one CASE, so that only the primary key can serve it (see `_finish_statement`).
_SET_SENT = (
    f"UPDATE deliveries SET status = '{DeliveryStatus.SENT.value}', sent_at = %(at)s, updated_at = %(now)s, relay = %(relay)s,"
    " last_error = NULL, claimed_until = NULL WHERE"
)
_IF_OURS = f" AND CASE WHEN status = '{DeliveryStatus.SENDING.value}' THEN claim_token = %(token)s ELSE false END"
_SENT_ONE = _SET_SENT + " id = %(id)s" + _IF_OURS
_SENT_MANY = _SET_SENT + " id = ANY(%(ids)s)" + _IF_OURS + " RETURNING id"


_ISSUE_STATUS = "SELECT status FROM issues WHERE id = %(id)s"

# The one-row sending -> sent UPDATE for libpq's own prepared statement (`OutcomeWriter.begin_sent`):
# $1 sent_at, $2 updated_at, $3 relay, $4 claim token, $5 id; the same statement as `_SENT_ONE`.
_SENT_ONE_PQ = _SENT_ONE.replace("%(at)s", "$1").replace("%(now)s", "$2").replace("%(relay)s", "$3")
_SENT_ONE_PQ = _SENT_ONE_PQ.replace("%(token)s", "$4").replace("%(id)s", "$5")
_SENT_ONE_NAME = b"newsletter_sent_one"
# The same UPDATE with the batch's pause/cancel check riding on it (`OutcomeWriter.begin_sent` with an issue id,
# $6): one row, the rows updated and the issue's status (NULL when the issue is gone).
_SENT_ONE_STATUS_PQ = (
    f"WITH sent AS ({_SENT_ONE_PQ} RETURNING 1) SELECT (SELECT count(*) FROM sent), (SELECT status FROM issues WHERE id = $6)"
)
_SENT_ONE_STATUS_NAME = b"newsletter_sent_one_status"
_DUPLICATE_PREPARED = "42P05"  # SQLSTATE duplicate_prepared_statement: a pooled connection prepared it earlier


def _on_driver(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """``sql`` executed as a prepared statement by psycopg itself on ``conn``'s driver connection; its cursor.

    Raises:
        DBAPIError: the driver's error wrapped as SQLAlchemy would (so `OutcomeWriter` retries alike).
    """
    import psycopg

    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        return driver.execute(sql, params, prepare=True)
    except psycopg.Error as exc:
        invalidated = driver.closed or isinstance(exc, psycopg.OperationalError)
        raise DBAPIError.instance(sql, None, exc, psycopg.Error, connection_invalidated=invalidated) from exc


def _sent_on_driver(conn: Connection, claims: Sequence[Claim], values: dict[str, Any]) -> set[int]:
    """`_apply` for sending -> sent on a psycopg connection in autocommit mode, as prepared statements
    sent by the driver itself (the same UPDATE as `_finish_statement`'s; test_unit_delivery compares the rows).

    Raises:
        DBAPIError: see `_on_driver`.
    """
    params = {"at": values["sent_at"], "now": utcnow(), "relay": values["relay"]}
    by_token: dict[str, list[int]] = {}
    for c in claims:
        by_token.setdefault(c.token, []).append(c.id)
    done: set[int] = set()
    for token, ids in by_token.items():
        if len(ids) == 1:
            if _on_driver(conn, _SENT_ONE, {**params, "token": token, "id": ids[0]}).rowcount:
                done.add(ids[0])
        else:
            done.update(r[0] for r in _on_driver(conn, _SENT_MANY, {**params, "token": token, "ids": ids}))
    return done


def _pq_wait(pgconn: Any) -> None:
    """Wait until libpq has a whole result of ``pgconn`` (or its end) to give, without holding the GIL.

    Raises:
        psycopg.OperationalError: the connection broke.
    """
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return
        io_select.select([pgconn.socket], [], [], 1.0)


class _StatementFailed(Exception):
    """PostgreSQL refused a statement sent through libpq directly; ``sqlstate`` names why."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _pq_rows(pgconn: Any, values: list[bytes | None] | None = None) -> int:
    """Read every result of the statement last sent on ``pgconn``; returns the rows it changed. A statement
    that returns rows (`_SENT_ONE_STATUS_PQ`) puts its first row's values in ``values``.

    Raises:
        psycopg.OperationalError: the connection broke; `_StatementFailed`: the statement failed.
    """
    from psycopg import pq

    rows, failed = 0, None
    while True:
        _pq_wait(pgconn)
        result = pgconn.get_result()
        if result is None:
            break
        if result.status == pq.ExecStatus.COMMAND_OK:
            rows += int(result.command_tuples or 0)
        elif result.status == pq.ExecStatus.TUPLES_OK:
            if values is not None and result.ntuples:
                values[:] = [result.get_value(0, i) for i in range(result.nfields)]
        elif failed is None:
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
            failed = _StatementFailed(message, sqlstate)
    if failed is not None:
        raise failed
    return rows


def _pq_prepare(pgconn: Any) -> None:
    """Prepare `_SENT_ONE_PQ` as `_SENT_ONE_NAME` and `_SENT_ONE_STATUS_PQ` as `_SENT_ONE_STATUS_NAME` on
    ``pgconn`` (already there on a pooled connection: fine).

    Raises:
        psycopg.OperationalError: the connection broke; `_StatementFailed`: PostgreSQL refused it.
    """
    for name, sql in ((_SENT_ONE_NAME, _SENT_ONE_PQ), (_SENT_ONE_STATUS_NAME, _SENT_ONE_STATUS_PQ)):
        pgconn.send_prepare(name, sql.encode())
        try:
            _pq_rows(pgconn)
        except _StatementFailed as exc:
            if exc.sqlstate != _DUPLICATE_PREPARED:
                raise


class OutcomeWriter:
    """Records accepted messages (sending -> sent) on one database connection held for a whole batch,
    in autocommit mode: one prepared UPDATE is one round trip and durable when it returns (no pool
    checkout with its pre-ping, no separate COMMIT). After a lost connection it goes on, on a fresh
    one, for up to ``retry_for`` seconds, as `retrying` does.

    Not for an in-memory SQLite database (a second connection would see another database): use
    `usable` and fall back to `mark_sent_many`.
    """

    def __init__(self, engine: Engine, retry_for: float = RECORD_RETRY_SECONDS) -> None:
        self.engine, self.retry_for = engine, retry_for
        self._conn: Connection | None = None
        # On psycopg the UPDATE goes to the driver's connection directly, prepared: SQLAlchemy's execution
        # path (cache key, compiled cache, parameter and result processing) cost more CPU than the
        # statement itself (about 0.3 of the worker's 1-2 ms per message).
        self._raw = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        # `begin_sent`'s record in flight: the claim, its values, and the libpq connection whose reply is
        # unread (None: nothing was sent, or sending it failed and `end_sent` must find out).
        self._pending: tuple[Claim, dict[str, Any], Any] | None = None
        self._status_of: int | None = None  # the issue whose status the record in flight reads too
        self._status: tuple[IssueStatus | None] | None = None  # read by the last `end_sent`, not yet taken
        self._prepared_on: Any = None  # the libpq connection `_SENT_ONE_NAME` was prepared on

    @staticmethod
    def usable(engine: Engine) -> bool:
        """False for an in-memory SQLite database."""
        return not (engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"))

    def sent(self, claims: Sequence[Claim], relay: str) -> set[int]:
        """`mark_sent_many` on the held connection. Returns the ids recorded.

        Raises:
            DBAPIError: a non-transient error, or the database stayed away ``retry_for`` seconds.
        """
        self._expect_idle()
        if not claims:
            return set()
        values = {"status": DeliveryStatus.SENT, "sent_at": utcnow(), "relay": relay, "last_error": None}

        def record(conn: Connection, again: bool) -> set[int]:
            if self._raw and not again:
                return _sent_on_driver(conn, claims, values)
            return _apply(conn, claims, values, False, again)

        return self._retrying(record, f"{len(claims)} deliveries: recording sent")

    def begin_sent(self, claim_: Claim, relay: str, status_of: int | None = None) -> None:
        """Start recording one accepted message (sending -> sent) without waiting for the database:
        on psycopg the prepared UPDATE goes out through libpq and its reply is left unread, so
        PostgreSQL runs it while the caller talks to the relay. `end_sent` reads the reply; call it
        before anything else on this writer. Never raises: a failure here is met by `end_sent`.
        Elsewhere (SQLite) the record is only noted, and `end_sent` makes it.

        With ``status_of`` (an issue id), the same statement reads that issue's status, which
        `taken_status` then gives (a batch's pause/cancel check without a round trip of its own); on
        psycopg only, and not when `end_sent` has to record again on a fresh connection.
        """
        self._expect_idle()
        values = {"status": DeliveryStatus.SENT, "sent_at": utcnow(), "relay": relay, "last_error": None}
        self._pending = (claim_, values, None)
        self._status_of = status_of if self._raw else None
        if not self._raw:
            return
        try:
            if self._conn is None:
                self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            driver = self._conn.connection.driver_connection
            assert driver is not None
            pgconn = driver.pgconn
            if self._prepared_on is not pgconn:
                _pq_prepare(pgconn)
                self._prepared_on = pgconn
            at = values["sent_at"].isoformat().encode()
            params = [at, utcnow().isoformat().encode(), relay.encode(), claim_.token.encode(), str(claim_.id).encode()]
            if self._status_of is None:
                pgconn.send_query_prepared(_SENT_ONE_NAME, params)
            else:
                pgconn.send_query_prepared(_SENT_ONE_STATUS_NAME, [*params, str(self._status_of).encode()])
            self._pending = (claim_, values, pgconn)
        except Exception as exc:  # the connection broke (or is not as expected): end_sent records it afresh
            log.warning("delivery %s: recording sent: %s; trying again on a fresh connection", claim_.id, first_line(exc))
            self._pending = (claim_, values, False)

    def end_sent(self) -> set[int]:
        """Finish `begin_sent`: the claim's id once its record is committed, nothing when the claim was
        taken over (or no record was begun). After a broken connection the record is made again on a
        fresh one, where a row already sent under our token counts as recorded (the first UPDATE may
        have been committed), for up to ``retry_for`` seconds.

        Raises:
            DBAPIError: a non-transient error, or the database stayed away ``retry_for`` seconds.
        """
        if self._pending is None:
            return set()
        claim_, values, pgconn = self._pending
        status_of, self._pending, self._status_of = self._status_of, None, None
        what = f"delivery {claim_.id}: recording sent"
        if pgconn is None:  # not on psycopg: one synchronous statement, as `sent`
            return self._retrying(lambda conn, again: _apply(conn, [claim_], values, False, again), what)
        if pgconn is not False:
            try:
                if status_of is None:
                    return {claim_.id} if _pq_rows(pgconn) else set()
                row: list[bytes | None] = []
                _pq_rows(pgconn, row)
                self._status = (IssueStatus(row[1].decode()) if row[1] is not None else None,)
                return {claim_.id} if int(row[0] or 0) else set()
            except Exception as exc:  # the reply is lost: whether it was committed is unknown
                log.warning("%s: %s; trying again on a fresh connection", what, first_line(exc))
        self._discard()
        return self._retrying(lambda conn, again: _apply(conn, [claim_], values, False, True), what)

    def taken_status(self) -> tuple[IssueStatus | None] | None:
        """The issue status read by the last `end_sent` of a record begun with ``status_of`` (a 1-tuple:
        the status, None when the issue is gone), once; None when no status was read since the last call."""
        status, self._status = self._status, None
        return status

    def _expect_idle(self) -> None:
        if self._pending is not None:
            raise RuntimeError("OutcomeWriter: end_sent() must be called before the connection is used again")

    def issue_status(self, issue_id: int) -> IssueStatus | None:
        """The issue's status, read on the held connection (the batch's check for a pause or cancel:
        one prepared statement instead of an ORM query); None if the issue is gone.

        Raises:
            DBAPIError: as `sent`.
        """

        def read(conn: Connection, again: bool) -> IssueStatus | None:
            if self._raw:
                row = _on_driver(conn, _ISSUE_STATUS, {"id": issue_id}).fetchone()
            else:
                row = conn.execute(select(Issue.status).where(Issue.id == issue_id)).first()
            return None if row is None else IssueStatus(row[0])

        self._expect_idle()
        return self._retrying(read, f"issue id {issue_id}: status")

    def _retrying(self, action: Callable[[Connection, bool], T], what: str) -> T:
        """``action(connection, again)`` on the held connection; after a lost connection again on a fresh
        one (``again`` True), for up to ``retry_for`` seconds."""
        deadline = time.monotonic() + self.retry_for
        pause, again = 0.05, False
        while True:
            try:
                if self._conn is None:
                    self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                return action(self._conn, again)
            except DBAPIError as exc:
                if not is_transient_db_error(exc):
                    raise
                self._discard()
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("%s: database unreachable (%s); trying again on a fresh connection", what, first_line(exc))
                time.sleep(pause)
                pause, again = min(pause * 2, 1.0), True

    def _discard(self) -> None:
        self._prepared_on = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(DBAPIError):
                conn.invalidate()
            with contextlib.suppress(DBAPIError):
                conn.close()

    def close(self) -> None:
        """Give the connection back to the pool (dropped instead while a reply of `begin_sent` is unread)."""
        if self._pending is not None:
            self._pending, self._status_of = None, None
            self._discard()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(DBAPIError):
                conn.close()


def mark_sent(session: Session, claim_: Claim, relay: str) -> bool:
    """sending -> sent. Returns False if the claim was lost (lease expired and taken by another)."""
    return _finish(session, claim_, {"status": DeliveryStatus.SENT, "sent_at": utcnow(), "relay": relay, "last_error": None})


def mark_sent_many(session: Session, claims: Sequence[Claim], relay: str) -> set[int]:
    """sending -> sent for several accepted messages in one transaction (a group commit). Returns the
    ids recorded; the others' claims were lost."""
    return _finish_many(session, claims, {"status": DeliveryStatus.SENT, "sent_at": utcnow(), "relay": relay, "last_error": None})


def mark_deferred(session: Session, claim_: Claim, when: datetime, error: str, code: int | None, relay: str | None) -> bool:
    """sending -> deferred until ``when`` after a transient failure."""
    return _finish(
        session,
        claim_,
        {"status": DeliveryStatus.DEFERRED, "next_attempt_at": when, "last_error": error[:2000], "last_smtp_code": code, "relay": relay},
    )


def mark_failed(session: Session, claim_: Claim, error: str, code: int | None, relay: str | None) -> bool:
    """sending -> failed (permanent error, or retries exhausted). Never retried."""
    return _finish(session, claim_, {"status": DeliveryStatus.FAILED, "last_error": error[:2000], "last_smtp_code": code, "relay": relay})


def mark_skipped(session: Session, claim_: Claim, reason: str) -> bool:
    """sending -> skipped with a named reason (``unsubscribed``, ``suppressed`` ...); not an attempt."""
    return _finish(session, claim_, {"status": DeliveryStatus.SKIPPED, "skip_reason": reason}, uncount=True)


def release(session: Session, claims: Sequence[Claim]) -> None:
    """Give claims back unsent (sending -> pending), e.g. when the issue stopped mid-batch."""
    _finish_many(session, claims, {"status": DeliveryStatus.PENDING}, uncount=True)


def expire_claims_of(session: Session, ids: Sequence[int], mark: str, now: datetime | None = None) -> int:
    """End now the leases of the claims among ``ids`` that a dead process held (tokens beginning with its
    ``mark``, see `holder_mark`), so that they are taken over at once instead of when their lease runs out;
    commits. Returns how many. Only the caller knows the holder is dead (a worker's main process whose pool
    process was killed): a living holder's claims must never be named here.

    The fencing is unchanged: the rows stay ``sending`` with their token until someone claims them, as when a
    lease runs out, so the dead process's last record still lands if PostgreSQL had received it, and a message
    the relay accepted just before the kill may go out again (at most 2 per connection, as ever).
    """
    return end_leases_held_by(session, Delivery, DeliveryStatus.SENDING, ids, mark, now)


def end_leases_held_by(session: Session, table: Any, sending: Any, ids: Sequence[int], mark: str, now: datetime | None = None) -> int:
    """The UPDATE behind `expire_claims_of` for any claimed table (deliveries, notices: columns ``id``,
    ``status``, ``claim_token``, ``claimed_until``): rows among ``ids`` in state ``sending`` whose token
    begins with ``mark`` and whose lease has not run out get ``claimed_until = now``; commits. Returns how many."""
    if not ids or not mark:
        return 0
    now = now or utcnow()
    ended = session.scalars(
        update(table)
        .where(
            in_values(session, table.id, ids),
            table.status == sending,
            table.claim_token.startswith(mark, autoescape=True),
            table.claimed_until > now,
        )
        .values(claimed_until=now)
        .returning(table.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return len(ended)


def fail_exhausted_claims(session: Session, now: datetime, max_attempts: int, lease_seconds: float = 0.0) -> int:
    """Fail the deliveries whose claim ran out (their worker died, see `_expired`; ``lease_seconds`` is the
    lease) after their last allowed attempt, instead of trying them a ``max_attempts + 1``-th time; commits.
    Returns the count.

    Whether that last attempt reached the relay is unknown; the reason says so, and `issue requeue`
    can send them again after a look.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.status == DeliveryStatus.SENDING,
            _expired(session.get_bind().dialect.name, now, lease_seconds),
            Delivery.attempts >= max_attempts,
            Delivery.issue_id.not_in(select(Issue.id).where(Issue.status == IssueStatus.CANCELLED)),  # skipped instead
        )
        .values(
            status=DeliveryStatus.FAILED,
            claimed_until=None,
            updated_at=now,
            last_error=f"gave up after {max_attempts} attempts: the last claim ran out (its worker stopped); outcome unknown",
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def mark_enqueued(session: Session, ids: Sequence[int], now: datetime | None = None) -> None:
    """Record that a send task for ``ids`` was handed to the broker (for the sweeper's bookkeeping)."""
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(ids)))
            .values(enqueued_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )


def due_for_enqueue(
    session: Session, now: datetime, requeue_after: float, limit: int = 10000, lease_seconds: float | None = None
) -> list[tuple[int, int]]:
    """``(issue_id, delivery_id)`` pairs whose send task must be (re-)enqueued, in id order.

    Due: a deferred row whose retry time has come and that was not enqueued since it was deferred;
    an expired claim (its worker died, see `_expired`; ``lease_seconds`` defaults to ``requeue_after``) not
    enqueued since it ran out;
    a pending row never enqueued; and a pending row enqueued
    longer than ``requeue_after`` seconds ago when its whole issue made no progress in that time (its
    broker message was lost, e.g. Redis restarted). A pending row waiting its turn behind a
    rate-limited relay is not due while the issue moves: re-enqueueing it would only add empty claims.
    """
    stale = now - timedelta(seconds=requeue_after)
    dialect = session.get_bind().dialect.name
    lease_seconds = requeue_after if lease_seconds is None else lease_seconds
    never_or_stale = or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at < stale)
    other = Delivery.__table__.alias("progress")
    stalled_issues = select(Issue.id).where(
        Issue.status == IssueStatus.SENDING,
        ~exists().where(other.c.issue_id == Issue.id, other.c.updated_at >= stale),
    )
    query = (
        select(Delivery.issue_id, Delivery.id)
        .where(
            or_(
                and_(
                    Delivery.status == DeliveryStatus.DEFERRED,
                    Delivery.next_attempt_at <= now,
                    or_(never_or_stale, Delivery.enqueued_at < Delivery.next_attempt_at),
                ),
                # Enqueued before the claim ran out (the task that claimed it, or earlier) or long ago: not
                # once per sweep while the task enqueued for it waits in the queue.
                and_(
                    Delivery.status == DeliveryStatus.SENDING,
                    _expired(dialect, now, lease_seconds),
                    or_(never_or_stale, Delivery.enqueued_at < Delivery.claimed_until),
                ),
                and_(Delivery.status == DeliveryStatus.PENDING, Delivery.enqueued_at.is_(None)),
                and_(Delivery.status == DeliveryStatus.PENDING, Delivery.enqueued_at < stale, Delivery.issue_id.in_(stalled_issues)),
            )
        )
        .order_by(Delivery.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(query)]


def count_open(session: Session, issue_id: int) -> int:
    """Deliveries of the issue that are not yet final."""
    return (
        session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id, Delivery.status.not_in(FINAL_DELIVERY_STATES))
        )
        or 0
    )


def counts(session: Session, issue_id: int) -> dict[tuple[str, str], int]:
    """``{(status, lang): count}`` for one issue."""
    rows = session.execute(
        select(Delivery.status, Delivery.lang, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.status, Delivery.lang)
    )
    return {(str(status), lang): n for status, lang, n in rows}
