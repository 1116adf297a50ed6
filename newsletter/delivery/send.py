"""Sending one batch of deliveries over one mailer connection."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import dkim, logs, metrics
from newsletter.bounces import verp_address
from newsletter.config import Settings
from newsletter.db import in_values
from newsletter.delivery import breaker, ledger
from newsletter.delivery.backoff import next_attempt
from newsletter.delivery.errors import DeliveryError, PermanentDeliveryError
from newsletter.delivery.mailers import Envelope, Mailer
from newsletter.links import preferences_url, unsubscribe_url
from newsletter.message_template import MessageTemplate, edition_template
from newsletter.mime import HeaderInjection, ascii_address
from newsletter.models import Edition, Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.rendering import greeting
from newsletter.segments import issue_topics
from newsletter.suppressions import is_dead_address, mark_bounced, suppress
from newsletter.sweeper import first_failures_limit, pause_if_failing

log = logging.getLogger(__name__)

SENDABLE_ISSUE_STATES = (IssueStatus.PUBLISHING, IssueStatus.SENDING)
STATUS_CHECK_EVERY = 10  # messages between checks for a pause or cancel during a batch
SLOT_POLL = 0.05  # seconds between a batch's tries for its first connection while the relay's are all taken
EXTRA_SLOT_POLL = 0.25  # seconds between a batch's tries for one more connection while the relay's are all taken


@dataclass
class BatchResult:
    """Outcomes of one batch, counted by name (``sent``, ``deferred``, ``failed``, ``skipped:<reason>``,
    ``lost`` for claims another worker took over, ``busy`` for ids someone else holds or that used
    their last attempt, ``released`` for claims handed back at a pause or cancel, ``abandoned`` for
    claims left to expire because the database stayed away)."""

    outcomes: Counter[str]


class MailerSource(Protocol):
    """Lends mailers for one batch: up to ``connections`` at once (see `newsletter.delivery.pool`).
    ``get(wait=False)`` returns None when the relay's connection limit is reached; a mailer is given
    back with its ``close()``."""

    connections: int

    def get(self, wait: bool) -> Mailer | None: ...


@dataclass(frozen=True)
class _Row:
    """What sending one delivery needs, read once per batch (plain values: sender threads share them)."""

    id: int
    subscriber_id: int
    email: str
    lang: str
    message_id: str
    attempts: int
    first_attempt_at: datetime | None
    name: str
    subscriber_status: SubscriberStatus
    paused: bool
    topics: list[str] | None


def _row(delivery: Any, reader: Any) -> _Row:
    """A claimed delivery (`ledger.CLAIMED_COLUMNS`) with its subscriber's row (a foreign key keeps it)."""
    return _Row(*delivery, name=reader.name, subscriber_status=reader.status, paused=reader.paused, topics=reader.topics)


@dataclass
class _Outcome:
    """A sender's result for one claim, waiting for the writer (the batch's thread) to record it."""

    claim: ledger.Claim
    row: _Row
    kind: str  # "sent", "skip", "error", "lost"
    relay: str
    reason: str = ""
    error: DeliveryError | None = None
    recorded: threading.Event = field(default_factory=threading.Event)
    result: str = ""


def send_batch(
    session: Session,
    settings: Settings,
    issue_id: int,
    delivery_ids: Sequence[int],
    mailer_factory: Callable[[], Mailer] | MailerSource,
) -> BatchResult:
    """Claim, personalise, build and send the due deliveries among ``delivery_ids``.

    This may run more than once for the same ids (broker redelivery, the sweeper): it is safe because
    only deliveries this call claims are sent, a `LeaseKeeper` keeps those claims ours for as long as
    this call works on them (however slow the relay), and the outcome is committed right after the
    relay's reply, on a fresh connection if the database restarted meanwhile. A delivery already
    claimed ``settings.retry.max_attempts`` times is not claimed again.

    ``mailer_factory`` is either a callable giving one mailer (one connection serves the whole batch,
    reconnects after a drop, and each outcome is committed before the next message) or a `MailerSource`
    lending up to ``connections`` mailers (a process's pool, `newsletter.delivery.pool`): then that many
    sender threads share the batch, and this thread records their outcomes, several per COMMIT
    (`ledger.mark_sent_many`). A sender hands over message k and goes on with message k+1, but waits
    for k's COMMIT before handing over k+1: at most 2 accepted-but-unrecorded messages per connection,
    and the database round trips overlap the SMTP ones (also with one connection).

    Every `STATUS_CHECK_EVERY` messages the issue's status is read again (a pause or cancel stops the
    batch), and when this batch has failed more messages than it sent, the auto-pause rules are applied
    (`sweeper.pause_if_failing`); also right after the batch's first `sweeper.first_failures_limit`
    messages all failed, so that a relay refusing everyone stops a small list within a few messages.
    A refusal of the address as unknown suppresses it only on the word of a relay that accepts this
    issue's mail (`newsletter.delivery.breaker`); otherwise the delivery is held.
    """
    outcomes: Counter[str] = Counter()
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status not in SENDABLE_ISSUE_STATES:
        outcomes["issue-not-sending"] += len(delivery_ids)
        return BatchResult(outcomes)
    claimed = ledger.claim_rows(session, issue_id, delivery_ids, settings.lease_seconds, max_attempts=settings.retry.max_attempts)
    claims = [c for c, _ in claimed]
    outcomes["busy"] += len(delivery_ids) - len(claims)
    if not claims:
        return BatchResult(outcomes)

    with ledger.LeaseKeeper(sessionmaker(bind=session.get_bind(), expire_on_commit=False), claims, settings.lease_seconds) as keeper:
        templates = _templates(session, settings, issue_id)
        # The subscribers by primary key, apart from the deliveries: as a join, PostgreSQL hashes the whole
        # subscriber table per batch whenever its statistics underestimate it (O(list size) per batch).
        readers = {
            r.id: r
            for r in session.execute(
                select(Subscriber.id, Subscriber.name, Subscriber.status, Subscriber.paused, Subscriber.topics).where(
                    in_values(session, Subscriber.id, sorted({r.subscriber_id for _, r in claimed}))
                )
            )
        }
        by_id = {r.id: _row(r, readers[r.subscriber_id]) for _, r in claimed}
        emails = [r.email for r in by_id.values()]
        suppressed = set(session.scalars(select(Suppression.email).where(in_values(session, Suppression.email, emails))))
        session.commit()  # end the read transaction: nothing stays open while the relay talks
        context = _Context(settings, issue.id, issue.number, templates, suppressed, frozenset(issue_topics(issue.segment)))
        if callable(mailer_factory):
            _send_sequentially(session, context, claims, by_id, mailer_factory, keeper, outcomes)
        elif mailer_factory.connections == 1:
            _send_pipelined(session, context, claims, by_id, mailer_factory, keeper, outcomes)
        else:
            _send_concurrently(session, context, claims, by_id, mailer_factory, keeper, outcomes)
    return BatchResult(outcomes)


@dataclass(frozen=True)
class _Context:
    settings: Settings
    issue_id: int
    issue_number: int
    templates: dict[str, MessageTemplate | str]  # lang -> template, or why that edition cannot be sent
    suppressed: set[str]
    topics: frozenset[str]  # the issue's topic segment: a reader who left all of them is skipped


# (edition id, rendered_at, From, List-Id) -> its message template, or why it cannot be sent. An edition is
# rendered again (new html, text, subject) only with a new rendered_at, so the key names its content.
_TEMPLATES: dict[tuple[int, datetime | None, str, str], MessageTemplate | str] = {}
_TEMPLATES_KEPT = 32


def _templates(session: Session, settings: Settings, issue_id: int) -> dict[str, MessageTemplate | str]:
    """The issue's editions as message templates, built once per process and edition.

    Each batch reads only the editions' ids and ``rendered_at``; the rendered text and HTML (100-300 kB
    per edition) are read when an edition is new to this process.
    """
    out: dict[str, MessageTemplate | str] = {}
    missing: dict[int, tuple[int, datetime | None, str, str]] = {}
    for edition_id, lang, rendered_at in session.execute(
        select(Edition.id, Edition.lang, Edition.rendered_at).where(Edition.issue_id == issue_id)
    ):
        key = (edition_id, rendered_at, settings.from_header(lang), settings.list_id)
        cached = _TEMPLATES.get(key)
        if cached is None:
            missing[edition_id] = key
        else:
            out[lang] = cached
    if missing:
        for e in session.scalars(select(Edition).where(Edition.id.in_(list(missing)))):
            out[e.lang] = _TEMPLATES[missing[e.id]] = _template(settings, e)
        while len(_TEMPLATES) > _TEMPLATES_KEPT:  # the oldest first (dicts keep insertion order)
            del _TEMPLATES[next(iter(_TEMPLATES))]
    return out


def _template(settings: Settings, e: Edition) -> MessageTemplate | str:
    if e.html is None or e.text is None or e.subject is None:
        return "not rendered"
    try:
        return edition_template(settings.from_header(e.lang), e.subject, settings.list_id, e.lang, e.text, e.html)
    except (HeaderInjection, ValueError) as exc:
        return f"cannot build message: {exc}"


def _send_sequentially(
    session: Session,
    ctx: _Context,
    claims: Sequence[ledger.Claim],
    by_id: dict[int, _Row],
    mailer_factory: Callable[[], Mailer] | MailerSource,
    keeper: ledger.LeaseKeeper,
    outcomes: Counter[str],
) -> None:
    """One connection, one message at a time, each outcome committed before the next message."""
    mailer = mailer_factory() if callable(mailer_factory) else mailer_factory.get(wait=True)
    assert mailer is not None  # get(wait=True) waits for a slot
    try:
        for n, claim_ in enumerate(claims):
            if (
                n
                and (n % STATUS_CHECK_EVERY == 0 or _breaker_due(ctx.settings, outcomes))
                and _should_stop(session, ctx.settings, ctx.issue_id, outcomes)
            ):
                outcomes["released"] += _stop(session, ctx.issue_id, [c for c in claims[n:] if not keeper.lost(c.id)])
                break
            if not keeper.wait_until_held(claim_.id, ctx.settings.lease_seconds / 2):
                if keeper.lost(claim_.id):
                    log.warning("delivery %s: claim taken over by another worker before sending; left to it", claim_.id)
                    outcomes["lost"] += 1
                    continue
                # No renewal got through for half a lease (the database is away): send nothing more
                # on claims that may run out; the sweeper hands them out again once they expire.
                log.warning("issue %s: cannot renew claims; leaving %s unsent deliveries to the sweeper", ctx.issue_number, len(claims) - n)
                outcomes["abandoned"] += len(claims) - n
                break
            row = by_id[claim_.id]
            with logs.bound(delivery_id=row.id):
                outcome = _record(session, ctx.settings, _deliver(ctx, row, claim_, mailer), ctx.issue_id)
            keeper.done(claim_.id)
            metrics.record_outcome(outcome)
            outcomes[outcome] += 1
        else:
            if outcomes["failed"] > outcomes["sent"]:
                _auto_pause(session, ctx.settings, ctx.issue_id)
    finally:
        mailer.close()


def _send_pipelined(
    session: Session,
    ctx: _Context,
    claims: Sequence[ledger.Claim],
    by_id: dict[int, _Row],
    source: MailerSource,
    keeper: ledger.LeaseKeeper,
    outcomes: Counter[str],
) -> None:
    """One pooled connection, in this thread alone: message k's record is sent to the database
    (`ledger.OutcomeWriter.begin_sent`, no wait) and its reply read once message k+1 was accepted, so
    PostgreSQL's round trip overlaps the relay's. Before each send at most 1 accepted message is
    unrecorded, at most 2 once it is accepted (the bound of `send_batch`), without the sender thread
    and its handoffs (a queue put, an event per message and a GIL switch each way) of
    `_send_concurrently`. Outcomes other than sent are recorded before the next message, as in
    `_send_sequentially`.

    With a mailer that `splits` its send (`SmtpMailer.send_begin` / ``send_end``), the work of this process
    is done while the relay takes a body rather than after its reply: message k's body (and k+1's envelope)
    is written, then k-1's record is begun and message k+2 built, and only then is k's reply read (a relay's
    round trip, or its CPU on loopback, overlaps this work); k-2's record is settled before k's write. A
    message built ahead is only built: it is used when its turn comes, after that turn's pause/cancel
    check and claim check, so every decision not to send it is still taken before its envelope leaves;
    when the batch stops first, or its claim is lost, it is dropped unsent (`tests/test_send_overlap.py`).
    """
    mailer = source.get(wait=True)
    assert mailer is not None  # get(wait=True) waits for a slot
    pipelines = bool(getattr(mailer, "pipelines", False))
    splits = bool(getattr(mailer, "splits", False))
    engine = session.get_bind().engine
    writer = ledger.OutcomeWriter(engine) if ledger.OutcomeWriter.usable(engine) else None
    pending: _Outcome | None = None
    # Message k is built before message k-1 is sent, so that k's envelope can go out behind k-1's body (one
    # round trip per message, `SmtpMailer.send`'s ``then``). Every decision not to send k (a pause or cancel,
    # a lost or stale claim, a skip) is therefore taken before its envelope leaves: an envelope that went out
    # is always followed by its body.
    current: _Ready | None = None  # built, not sent (its envelope may be out)
    at = -1  # the index of `current` in claims
    in_hand: int | None = None  # the index of the message being sent or recorded (unknown outcome on an error)
    finished: set[int] = set()  # indices of the claims sent (or refused) and recorded, or skipped

    def count(o: _Outcome) -> None:
        keeper.done(o.claim.id)
        metrics.record_outcome(o.result)
        outcomes[o.result] += 1

    def settle() -> None:
        """Read the reply of the record in flight (if any) and count it."""
        nonlocal pending
        if pending is None or writer is None:
            return
        o, pending = pending, None
        o.result = "sent" if o.claim.id in writer.end_sent() else "lost"
        if o.result == "lost":
            log.warning("delivery %s: sent, but its claim had been taken over", o.row.id)
        count(o)

    def finish(outcome: _Outcome, status: bool = False) -> None:
        """Record a sent message without waiting (its reply is read by the next `settle`; with ``status``
        the same statement reads the issue's status for the next check), anything else now."""
        nonlocal pending
        if outcome.kind == "sent" and writer is not None:
            writer.begin_sent(outcome.claim, outcome.relay, ctx.issue_id if status else None)
            pending = outcome
        else:
            with logs.bound(delivery_id=outcome.row.id):
                _record(session, ctx.settings, outcome, ctx.issue_id)
            count(outcome)

    built: tuple[int, _Ready | _Outcome] | None = None  # the claim after `current`'s next, built ahead (index, result)

    def build_ahead(i: int) -> None:
        """Build claim ``i``'s message while the relay takes a body; used only if its turn comes (see above)."""
        nonlocal built
        if i < len(claims):
            row = by_id[claims[i].id]
            with logs.bound(delivery_id=row.id):
                built = (i, _prepare(ctx, row, claims[i], mailer.name))

    accepted: tuple[_Outcome, bool] | None = None  # split sends: accepted, record not begun (with ``status``)

    def start_record() -> None:
        """Begin the record of the message accepted last (the record before it is settled)."""
        nonlocal accepted
        if accepted is not None:
            (o, status), accepted = accepted, None
            finish(o, status)

    def flush() -> None:
        """Every known outcome recorded: the counts agree with the database."""
        settle()
        start_record()
        settle()

    def transmit(then: _Ready | None, ahead: int | None = None) -> None:
        """Send `current` (with ``then``'s envelope behind it when the mailer pipelines) and record it.

        With a mailer that splits its send, message k-2's record is settled before k's body is written (the
        database had all of k-1's time to run it), and while the relay takes k's body k-1's record is begun
        and claim ``ahead`` built: at most 1 accepted message unrecorded when k is written, 2 once it is
        accepted, as without the split. Otherwise k-1's record is settled and k's begun after k's reply.
        """
        nonlocal current, in_hand, accepted
        assert current is not None
        ready, current, in_hand = current, None, at
        # The record that reads the issue's status too is settled before the next check, so the check costs no
        # round trip of its own (else it reads the status itself): the 3rd message before it, or the 4th when
        # records are begun one message later.
        status = at % STATUS_CHECK_EVERY == STATUS_CHECK_EVERY - (4 if splits else 3)
        with logs.bound(delivery_id=ready.row.id):
            if splits:
                settle()
                outcome = _transmit_split(ready, mailer, then if pipelines else None, lambda: work_meanwhile(ahead))
            else:
                outcome = _transmit(ready, mailer, then if pipelines else None)
        if splits and outcome.kind == "sent" and writer is not None:
            accepted = (outcome, status)  # recorded while the relay takes the next body
        else:
            settle()  # message k-1's record, while k is accepted: at most 2 unrecorded
            finish(outcome, status=status)
        finished.add(at)
        in_hand = None

    def work_meanwhile(ahead: int | None) -> None:
        """While the relay takes a body: begin the previous message's record, build the message after next."""
        start_record()
        if ahead is not None:
            build_ahead(ahead)

    n = 0
    try:
        for n, claim_ in enumerate(claims):
            if n and (n % STATUS_CHECK_EVERY == 0 or _breaker_due(ctx.settings, outcomes)):
                seen = writer.taken_status() if writer is not None and n % STATUS_CHECK_EVERY == 0 else None
                if seen is None or outcomes["failed"] >= outcomes["sent"]:
                    flush()  # the counts agree with the database before a pause rule is applied
                if _should_stop(session, ctx.settings, ctx.issue_id, outcomes, writer, seen):
                    flush()
                    if current is not None:  # messages before n go out, as when each was sent before n's check
                        transmit(None)
                        flush()
                    outcomes["released"] += _stop(session, ctx.issue_id, [c for c in claims[n:] if not keeper.lost(c.id)])
                    finished.update(range(len(claims)))
                    break
            if not keeper.wait_until_held(claim_.id, ctx.settings.lease_seconds / 2):
                if keeper.lost(claim_.id):
                    log.warning("delivery %s: claim taken over by another worker before sending; left to it", claim_.id)
                    outcomes["lost"] += 1
                    continue
                if current is not None:
                    transmit(None)
                flush()
                log.warning("issue %s: cannot renew claims; leaving %s unsent deliveries to the sweeper", ctx.issue_number, len(claims) - n)
                outcomes["abandoned"] += len(claims) - n
                finished.update(range(len(claims)))
                break
            if built is not None and built[0] == n:  # built while the relay took the previous body
                ready, built = built[1], None
            else:
                row = by_id[claim_.id]
                with logs.bound(delivery_id=row.id):
                    ready = _prepare(ctx, row, claim_, mailer.name)
            if isinstance(ready, _Outcome):  # nothing to send: recorded now, `current` still goes first
                finish(ready)
                finished.add(n)
                continue
            if current is not None:
                transmit(ready, ahead=n + 1)
            current, at = ready, n
        else:
            if current is not None:
                transmit(None)
            flush()
            if outcomes["failed"] > outcomes["sent"]:
                _auto_pause(session, ctx.settings, ctx.issue_id)
    except BaseException:
        # An error that is not a relay's answer (a bug, a broken pool): record what was accepted, hand back
        # what was not sent (the claim in hand runs out and is swept), and let the task see the error.
        with contextlib.suppress(Exception):
            flush()
            left = [c for i, c in enumerate(claims) if i not in finished and i != in_hand and not keeper.lost(c.id)]
            if left:
                outcomes["released"] += _stop(session, ctx.issue_id, left)
        raise
    finally:
        try:
            mailer.close()
        finally:
            if writer is not None:
                writer.close()


def _send_concurrently(
    session: Session,
    ctx: _Context,
    claims: Sequence[ledger.Claim],
    by_id: dict[int, _Row],
    source: MailerSource,
    keeper: ledger.LeaseKeeper,
    outcomes: Counter[str],
) -> None:
    """Up to ``source.connections`` sender threads, each on its own connection; this thread writes
    the ledger (see `send_batch` for the bound on unrecorded messages). Each sender takes and builds its
    next message before sending the current one, whose body the next envelope follows (as in
    `_send_pipelined`); a message taken is sent, also after a stop (at most one per connection)."""
    work = deque(claims)
    stop = threading.Event()  # pause, cancel, or the ledger cannot be written
    abandon = threading.Event()  # claims may run out: leave the rest to the sweeper
    results: queue.SimpleQueue[_Outcome | None] = queue.SimpleQueue()

    errors: list[BaseException] = []

    def sender(first: bool) -> None:
        mailer: Mailer | None = None
        handed: _Outcome | None = None
        # As in `_send_pipelined`: the next message is taken and built before the current one is sent, so its
        # envelope can go out behind the current body; a message taken is sent, also after a stop.
        current: _Ready | None = None
        after: _Ready | None = None

        def hand(outcome: _Outcome) -> None:
            """Give an outcome to the writer once the previous one is recorded (at most 2 unrecorded)."""
            nonlocal handed
            if handed is not None:
                _wait_recorded(handed, stop)
            handed = outcome
            results.put(outcome)

        try:
            while mailer is None:  # a connection once the relay has a free slot, while work is left
                if stop.is_set() or not work:
                    return
                mailer = source.get(wait=False)
                if mailer is None:
                    time.sleep(SLOT_POLL if first else EXTRA_SLOT_POLL)
            pipelines = bool(getattr(mailer, "pipelines", False))
            while True:
                after = None
                while after is None and not stop.is_set():
                    try:
                        claim_ = work.popleft()
                    except IndexError:
                        break
                    row = by_id[claim_.id]
                    if not keeper.wait_until_held(claim_.id, ctx.settings.lease_seconds / 2):
                        if keeper.lost(claim_.id):
                            results.put(_Outcome(claim_, row, "lost", mailer.name))
                            continue
                        work.appendleft(claim_)
                        abandon.set()
                        stop.set()
                        break
                    with logs.bound(delivery_id=row.id):
                        ready = _prepare(ctx, row, claim_, mailer.name)
                    if isinstance(ready, _Outcome):
                        hand(ready)
                    else:
                        after = ready
                if current is not None:
                    ready, current = current, None  # in hand: its outcome is unknown if this raises
                    with logs.bound(delivery_id=ready.row.id):
                        outcome = _transmit(ready, mailer, after if pipelines else None)
                    hand(outcome)
                if after is None:
                    break
                current, after = after, None
            if handed is not None:
                _wait_recorded(handed, stop)
        except BaseException as exc:  # re-raised by the batch's thread; the claim in hand runs out and is swept
            errors.append(exc)
            stop.set()
            for taken in (after, current):  # taken, not sent: handed back with the rest
                if taken is not None:
                    work.appendleft(taken.claim)
        finally:
            if mailer is not None:
                try:
                    mailer.close()
                except Exception:
                    log.exception("giving an SMTP connection back failed")
            results.put(None)

    threads = [
        threading.Thread(target=sender, args=(i == 0,), name=f"smtp-sender-{i}", daemon=True)
        for i in range(min(source.connections, len(claims)))
    ]
    for t in threads:
        t.start()
    running, recorded = len(threads), 0
    engine = session.get_bind().engine
    writer = ledger.OutcomeWriter(engine) if ledger.OutcomeWriter.usable(engine) else None
    try:
        while running:
            got = [results.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    got.append(results.get_nowait())
            running -= sum(1 for o in got if o is None)
            batch = [o for o in got if o is not None]
            failed_before = outcomes["failed"]
            _record_many(session, ctx.settings, batch, writer, ctx.issue_id)
            for o in batch:
                keeper.done(o.claim.id)
                metrics.record_outcome(o.result)
                outcomes[o.result] += 1
                o.recorded.set()
            before, recorded = recorded, recorded + len(batch)
            checkpoint = recorded // STATUS_CHECK_EVERY > before // STATUS_CHECK_EVERY or _breaker_due(
                ctx.settings, outcomes, failed_before
            )
            if checkpoint and not stop.is_set() and _should_stop(session, ctx.settings, ctx.issue_id, outcomes, writer):
                stop.set()
    finally:
        stop.set()  # on an error here, senders must not wait for records that will not come
        for t in threads:
            t.join()
        if writer is not None:
            writer.close()
    left = [c for c in work if not keeper.lost(c.id)]
    if abandon.is_set():
        log.warning("issue %s: cannot renew claims; leaving %s unsent deliveries to the sweeper", ctx.issue_number, len(left))
        outcomes["abandoned"] += len(left)
    elif left:
        outcomes["released"] += _stop(session, ctx.issue_id, left)
    elif outcomes["failed"] > outcomes["sent"]:
        _auto_pause(session, ctx.settings, ctx.issue_id)
    if errors:
        raise errors[0]


def _wait_recorded(outcome: _Outcome, stop: threading.Event) -> None:
    """Block until ``outcome`` is committed (or the batch stops: the writer then records nothing more)."""
    while not outcome.recorded.wait(0.5):
        if stop.is_set() and outcome.recorded.wait(1.0) is False:
            return


def _should_stop(
    session: Session,
    settings: Settings,
    issue_id: int,
    outcomes: Counter[str],
    writer: ledger.OutcomeWriter | None = None,
    seen: tuple[IssueStatus | None] | None = None,
) -> bool:
    """True when the batch must stop: the issue was paused or cancelled, or this batch fails more than
    it sends and the issue's failures reach the auto-pause threshold (which pauses it). The status is
    ``seen`` when the caller read it with a record (`ledger.OutcomeWriter.taken_status`), else read on
    ``writer``'s connection when there is one (a prepared statement, not an ORM query; the writer must
    have no record in flight)."""
    if outcomes["failed"] > outcomes["sent"] and _auto_pause(session, settings, issue_id):
        return True
    if seen is None:
        seen = (writer.issue_status(issue_id) if writer is not None else _issue_status(session, issue_id),)
    return seen[0] not in SENDABLE_ISSUE_STATES


def _breaker_due(settings: Settings, outcomes: Counter[str], failed_before: int | None = None) -> bool:
    """True right after this batch's first `sweeper.first_failures_limit` outcomes all failed with none
    sent (``failed_before``: the failures counted before the outcomes just recorded, when several came
    at once; else one came): the relay may be refusing everyone, so the pause rules are checked now
    rather than at the next `STATUS_CHECK_EVERY` (a small list would be through by then)."""
    limit = first_failures_limit(settings)
    failed = outcomes["failed"]
    before = failed - 1 if failed_before is None else failed_before
    return bool(limit) and outcomes["sent"] == 0 and before < limit <= failed


def _auto_pause(session: Session, settings: Settings, issue_id: int) -> bool:
    return ledger.retrying(session, lambda: pause_if_failing(session, settings, issue_id), f"issue id {issue_id}: auto-pause check")


@dataclass(frozen=True)
class _Ready:
    """One claim's message, built and not yet sent."""

    claim: ledger.Claim
    row: _Row
    sender: str  # the VERP return path (RFC 5321 §4.1.1.2)
    recipient: str
    raw: bytes

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.sender, self.recipient, len(self.raw))


def _deliver(ctx: _Context, row: _Row, claim_: ledger.Claim, mailer: Mailer) -> _Outcome:
    """Build and send one message; touches no database (sender threads call it)."""
    ready = _prepare(ctx, row, claim_, mailer.name)
    return ready if isinstance(ready, _Outcome) else _transmit(ready, mailer)


def _prepare(ctx: _Context, row: _Row, claim_: ledger.Claim, relay: str) -> _Ready | _Outcome:
    """One claim's message, or its outcome when there is nothing to send (a skip, or a message that
    cannot be built: a permanent error). Touches no database and no relay."""
    settings = ctx.settings
    if row.subscriber_status != SubscriberStatus.ACTIVE:
        return _Outcome(claim_, row, "skip", relay, reason=str(row.subscriber_status))
    if row.paused:
        return _Outcome(claim_, row, "skip", relay, reason="paused")
    if ctx.topics and not ctx.topics & set(row.topics or ()):
        # The reader left this issue's topic after planning: a topic is a newsletter of its own.
        return _Outcome(claim_, row, "skip", relay, reason="left-topic")
    if row.email in ctx.suppressed:
        return _Outcome(claim_, row, "skip", relay, reason="suppressed")
    template = ctx.templates.get(row.lang, "not rendered")
    try:
        if isinstance(template, str):
            raise PermanentDeliveryError(f"edition {row.lang} of issue {ctx.issue_number} is {template}")
        unsub = unsubscribe_url(settings, row.subscriber_id, ctx.issue_id)
        values = {
            "GREETING": greeting(row.lang, row.name),
            "EMAIL": row.email,
            "UNSUBSCRIBE_URL": unsub,
            "PREFERENCES_URL": preferences_url(settings, row.subscriber_id),
        }
        try:
            # The edition's message is encoded once per process; only the personal bytes are written here
            # (the same message as mime.build_message would build: tests/test_message_template.py).
            raw = template.render(to_address=row.email, to_name=row.name, message_id=row.message_id, unsubscribe_url=unsub, values=values)
            if settings.dkim is not None:  # the one place a message is signed: final bytes, after personalisation
                raw = dkim.sign(raw, settings.dkim)
        except (HeaderInjection, ValueError) as exc:
            raise PermanentDeliveryError(f"subscriber {row.subscriber_id}: cannot build message: {exc}") from exc
        return _Ready(claim_, row, verp_address(settings, row.id), ascii_address(row.email), raw)  # RFC 5321 §4.1.1.2 return path
    except DeliveryError as exc:
        return _Outcome(claim_, row, "error", exc.relay or relay, error=exc)


def _transmit(ready: _Ready, mailer: Mailer, then: _Ready | None = None) -> _Outcome:
    """Send a built message; with ``then`` (only to a mailer that `pipelines`), the next message's envelope
    goes out behind it (`SmtpMailer.send`), and the next transmit must be ``then``'s."""
    try:
        with metrics.SEND_SECONDS.time():
            if then is None:
                mailer.send(ready.sender, ready.recipient, ready.raw)
            else:
                mailer.send(ready.sender, ready.recipient, ready.raw, then.envelope)  # type: ignore[call-arg]
    except DeliveryError as exc:
        return _Outcome(ready.claim, ready.row, "error", exc.relay or mailer.name, error=exc)
    return _Outcome(ready.claim, ready.row, "sent", mailer.name)


def _transmit_split(ready: _Ready, mailer: Mailer, then: _Ready | None, meanwhile: Callable[[], None]) -> _Outcome:
    """`_transmit` on a mailer that `splits` its send: ``meanwhile()`` runs after the body was written and
    before its reply is read (also when nothing was written: the message was refused before its body)."""
    start = time.perf_counter()
    try:
        mailer.send_begin(ready.sender, ready.recipient, ready.raw, then.envelope if then is not None else None)  # type: ignore[attr-defined]
    except DeliveryError as exc:
        metrics.SEND_SECONDS.observe(time.perf_counter() - start)  # every attempt is timed, as by `_transmit`
        meanwhile()
        return _Outcome(ready.claim, ready.row, "error", exc.relay or mailer.name, error=exc)
    spent = time.perf_counter() - start
    meanwhile()
    start = time.perf_counter()
    try:
        mailer.send_end()  # type: ignore[attr-defined]
    except DeliveryError as exc:
        return _Outcome(ready.claim, ready.row, "error", exc.relay or mailer.name, error=exc)
    finally:
        metrics.SEND_SECONDS.observe(spent + time.perf_counter() - start)  # the relay's part, not ours
    return _Outcome(ready.claim, ready.row, "sent", mailer.name)


def _record(session: Session, settings: Settings, o: _Outcome, issue_id: int) -> str:
    """Commit one outcome; returns its name for the counts (``lost`` when the claim was taken over)."""
    if o.kind == "sent":
        if ledger.mark_sent(session, o.claim, o.relay):
            o.result = "sent"
        else:
            log.warning("delivery %s: sent, but its claim had been taken over", o.row.id)
            o.result = "lost"
    elif o.kind == "skip":
        o.result = f"skipped:{o.reason}" if ledger.mark_skipped(session, o.claim, o.reason) else "lost"
    elif o.kind == "error":
        assert o.error is not None
        o.result = _record_failure(session, settings, issue_id, o.row, o.claim, o.error, o.relay)
    else:
        log.warning("delivery %s: claim taken over by another worker before sending; left to it", o.row.id)
        o.result = "lost"
    return o.result


def _record_many(
    session: Session, settings: Settings, batch: Sequence[_Outcome], writer: ledger.OutcomeWriter | None, issue_id: int
) -> None:
    """Commit several outcomes: the messages sent in one statement (on ``writer``'s autocommit
    connection, else with one COMMIT), the rest one by one."""
    sent = [o for o in batch if o.kind == "sent"]
    by_relay: dict[str, list[_Outcome]] = {}
    for o in sent:
        by_relay.setdefault(o.relay, []).append(o)
    for relay, group in by_relay.items():
        claims = [o.claim for o in group]
        done = writer.sent(claims, relay) if writer is not None else ledger.mark_sent_many(session, claims, relay)
        for o in group:
            o.result = "sent" if o.claim.id in done else "lost"
            if o.result == "lost":
                log.warning("delivery %s: sent, but its claim had been taken over", o.row.id)
    for o in batch:
        if o.kind != "sent":
            with logs.bound(delivery_id=o.row.id):
                _record(session, settings, o, issue_id)


def _issue_status(session: Session, issue_id: int) -> IssueStatus | None:
    return ledger.retrying(
        session, lambda: session.scalar(select(Issue.status).where(Issue.id == issue_id)), f"issue id {issue_id}: status"
    )


def _stop(session: Session, issue_id: int, claims: Sequence[ledger.Claim]) -> int:
    """The issue was paused or cancelled mid-batch: hand back (or skip) the claims not yet sent."""
    if _issue_status(session, issue_id) == IssueStatus.CANCELLED:
        for claim_ in claims:
            ledger.mark_skipped(session, claim_, "cancelled")
    else:
        ledger.release(session, claims)
    return len(claims)


def _record_failure(
    session: Session, settings: Settings, issue_id: int, delivery: _Row, claim_: ledger.Claim, exc: DeliveryError, relay: str
) -> str:
    if isinstance(exc, PermanentDeliveryError):
        if ledger.mark_failed(session, claim_, str(exc), exc.smtp_code, relay) and is_dead_address(exc.enhanced_code):
            # The relay says the mailbox does not exist: as final as a hard bounce, so never again, but only
            # on the word of a relay that shows it accepts mail (one refusing everyone says nothing about the
            # address): otherwise the delivery is held, decided when the issue ends (`breaker.settle_held`).
            def bounce() -> bool:
                trusted = breaker.relay_vouches_now(session, issue_id, relay)
                if trusted:
                    suppress(session, delivery.email, "hard-bounce", f"{relay}: {exc}")
                    mark_bounced(session, delivery.subscriber_id, delivery.email)
                session.commit()
                return trusted

            if not ledger.retrying(session, bounce, f"delivery {delivery.id}: suppressing a dead address"):
                log.warning(
                    "delivery %s: %s refused the address as unknown but has not shown it accepts this issue's mail: "
                    "held, not suppressed (%s)", delivery.id, relay, exc,
                )  # fmt: skip
        log.info("delivery %s failed permanently: %s", delivery.id, exc)
        return "failed"
    now = utcnow()
    attempts = delivery.attempts  # already counts this attempt (the claim incremented it)
    when = next_attempt(settings.retry, attempts, delivery.first_attempt_at or now, now)
    if when is None:
        ledger.mark_failed(session, claim_, f"gave up after {attempts} attempts: {exc}", exc.smtp_code, relay)
        return "failed"
    ledger.mark_deferred(session, claim_, when, str(exc), exc.smtp_code, relay)
    log.info("delivery %s deferred until %s: %s", delivery.id, when.isoformat(), exc)
    return "deferred"
