"""Starting, resuming and requeueing a publish, and following it until every delivery is final (used by the
CLI, the demo, the editor API and the admin pages)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import control, notice_queue, publishing, sweeper
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery import ledger
from newsletter.issues import get_issue
from newsletter.models import FINAL_DELIVERY_STATES, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow

Progress = Callable[[int, int], None]  # (final deliveries, total deliveries)


STALL_WARNING_SECONDS = 15.0  # a followed publish that shows no progress this long asks whether a worker is there


class BrokerUnavailable(RuntimeError):
    """The broker (``REDIS_URL``) cannot be reached; ``str()`` is one line for the editor."""


@dataclass
class PublishOutcome:
    """How a followed publish ended: the issue's status, and its deliveries per state."""

    number: int
    status: str
    error: str | None
    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Deliveries that failed permanently."""
        return self.by_state.get("failed", 0)

    def summary(self) -> str:
        """``sent 57, failed 3, skipped 2`` (every state with deliveries, in lifecycle order)."""
        order = ("sent", "failed", "skipped", "bounced", "deferred", "sending", "pending")
        parts = [f"{state} {self.by_state[state]}" for state in order if self.by_state.get(state)]
        return ", ".join(parts) or "no deliveries"


def require_broker(settings: Settings, number: int) -> None:
    """Raise `BrokerUnavailable` (one line, naming the broker) unless the embedded default runs the tasks
    or the broker answers; callers check before asking an editor to confirm a publish."""
    from tasks.app import broker_problem, use_settings  # Celery lives at the edge

    use_settings(settings)
    if not settings.embedded and (problem := broker_problem()):
        where = settings.describe()["REDIS_URL"]
        raise BrokerUnavailable(f"cannot reach the broker at {where} ({problem}); issue {number} was not changed")


def start_publish(settings: Settings, number: int) -> tuple[int, threading.Thread | None]:
    """Validate issue ``number`` and start its pipeline.

    With a broker the pipeline is enqueued for the workers and this returns at once. In the embedded
    mode the tasks run eagerly in a background thread of this process (the in-process worker), so
    the caller can follow progress. Returns ``(issue_id, thread or None)``.

    Raises:
        IssueError, RenderError: the issue cannot be published (nothing was changed).
        BrokerUnavailable: the broker cannot be reached. Checked first, so normally nothing changed;
            if it went away between the check and the enqueue, the issue stays ``publishing`` and the
            sweeper starts its pipeline once the broker is back (the message says so).
    """
    from tasks.app import is_broker_error
    from tasks.publish import publish_pipeline

    require_broker(settings, number)
    with session_factory(settings.database_url)() as session:
        issue = get_issue(session, number)
        publishing.request_publish(session, settings, issue)
        issue_id = issue.id
    if not settings.embedded:
        try:
            publish_pipeline(issue_id).apply_async()
        except Exception as exc:
            if not is_broker_error(exc):
                raise
            raise BrokerUnavailable(
                f"the broker at {settings.describe()['REDIS_URL']} went away ({str(exc).splitlines()[0]}); issue {number} "
                "is publishing and the sweeper (celery beat) starts it by itself once the broker is back"
            ) from exc
        return issue_id, None

    def run() -> None:
        # A failure is recorded on the issue by the task base class; the follower reports it.
        with contextlib.suppress(Exception):
            publish_pipeline(issue_id).apply()

    thread = threading.Thread(target=run, name=f"publish-{number}", daemon=True)
    thread.start()
    return issue_id, thread


@contextlib.contextmanager
def ctrl_c_flag() -> Iterator[threading.Event]:
    """While inside, SIGINT only sets the yielded event; the caller raises ``KeyboardInterrupt`` at a point of
    its choosing. Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and one that
    lands in a weakref or ``__del__`` callback (SQLAlchemy's connection pool has many) is printed as
    "Exception ignored" and lost, so a Ctrl-C could go unanswered. Off the main thread (where no signal
    handler can be set) the event is never set and signals behave as usual; the previous handler is put
    back on leaving."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(
    settings: Settings,
    issue_id: int,
    progress: Progress | None = None,
    poll: float = 0.5,
    timeout: float | None = None,
    on_stall: Callable[[float], None] | None = None,
    stall_after: float = STALL_WARNING_SECONDS,
    on_deferred: Callable[[int, str], None] | None = None,
) -> PublishOutcome:
    """Poll the ledger until the issue is ``sent``, ``failed``, ``paused`` or ``cancelled`` (or
    ``timeout`` seconds pass).

    ``on_stall(seconds)`` is called once when nothing has moved (issue status, pipeline heartbeat,
    deliveries per state) for ``stall_after`` seconds, e.g. to ask whether any worker is listening.
    ``on_deferred(count, last_error)`` is called whenever the number of deferred deliveries waiting for a
    retry changes to a non-zero count, with the latest error of one of them ("" when none is recorded);
    deferred deliveries already due (all of them right after a resume) are about to be sent, not waiting.
    In the embedded mode this process is also the sweeper: deferred deliveries (and due notices, see
    `newsletter.notice_queue`) are re-sent here when due, since no beat process runs.

    Raises:
        KeyboardInterrupt: Ctrl-C (SIGINT) while following, raised between two polls, never lost
            (see `ctrl_c_flag`).
    """
    with ctrl_c_flag() as stop:
        return _follow(settings, issue_id, stop, progress, poll, timeout, on_stall, stall_after, on_deferred)


def _follow(
    settings: Settings,
    issue_id: int,
    stop: threading.Event,
    progress: Progress | None,
    poll: float,
    timeout: float | None,
    on_stall: Callable[[float], None] | None,
    stall_after: float,
    on_deferred: Callable[[int, str], None] | None,
) -> PublishOutcome:
    from tasks.app import use_settings
    from tasks.publish import enqueue_send

    use_settings(settings)
    factory = session_factory(settings.database_url)
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sweep = 0.0
    seen: object = None
    moved_at = time.monotonic()
    warned = False
    deferred_seen = 0
    while True:
        if stop.is_set():
            raise KeyboardInterrupt
        with factory() as session:
            issue = session.get_one(Issue, issue_id)
            counts = ledger.counts(session, issue_id)
            done = sum(n for (state, _), n in counts.items() if state in FINAL_DELIVERY_STATES)
            by_state: dict[str, int] = {}
            for (state, _lang), n in counts.items():
                by_state[state] = by_state.get(state, 0) + n
            if progress:
                progress(done, sum(counts.values()))
            if issue.status in (IssueStatus.SENT, IssueStatus.FAILED, IssueStatus.PAUSED, IssueStatus.CANCELLED):
                return PublishOutcome(issue.number, str(issue.status), issue.error, by_state)
            deferred, error = _waiting_deferred(session, issue_id) if by_state.get(DeliveryStatus.DEFERRED) else (0, "")
            if on_deferred is not None and deferred and deferred != deferred_seen:
                on_deferred(deferred, error)
            deferred_seen = deferred
            state = (issue.status, issue.pipeline_heartbeat_at, sorted(by_state.items()))
            if state != seen:
                seen, moved_at = state, time.monotonic()
            elif on_stall is not None and not warned and time.monotonic() - moved_at >= stall_after:
                warned = True
                on_stall(time.monotonic() - moved_at)
            if (
                settings.embedded
                and issue.status == IssueStatus.SENDING
                and time.monotonic() - last_sweep >= min(settings.sweep_interval, 1.0)
            ):
                sweeper.sweep(session, settings, enqueue_send)
                notice_queue.send_due(session, settings)  # no beat in this mode: this process retries notices too
                last_sweep = time.monotonic()
        if deadline is not None and time.monotonic() > deadline:
            return PublishOutcome(issue.number, str(issue.status), "still running: gave up following", by_state)
        stop.wait(poll)


def _waiting_deferred(session: Session, issue_id: int) -> tuple[int, str]:
    """``(count, latest error)`` of the issue's deferred deliveries that wait for a retry (their next
    attempt is in the future; error "" when none is recorded). A deferred delivery already due is about
    to be sent (a resume makes every deferred one due): its error is from before and says nothing now."""
    waiting = (Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.DEFERRED, Delivery.next_attempt_at > utcnow())
    count = session.scalar(select(func.count()).select_from(Delivery).where(*waiting)) or 0
    if not count:
        return 0, ""
    error = session.scalar(
        select(Delivery.last_error).where(*waiting, Delivery.last_error.is_not(None)).order_by(Delivery.updated_at.desc()).limit(1)
    )
    return count, error or ""


def resume_publish(settings: Settings, number: int, *, background: bool = False) -> tuple[int, int, bool]:
    """Resume paused issue ``number`` (`newsletter.control.resume_issue`), restarting planning if it had
    not finished (and the whole pipeline if its editions were not rendered). Returns ``(issue_id, batches
    enqueued, planning restarted)``.

    Without a broker the batches are sent in this process: before this returns, or with ``background``
    (a server) in a thread that then follows the issue (see `watch`).

    Raises:
        IssueError: the issue is not paused (checked before anything is sent).
    """
    from tasks.app import use_settings
    from tasks.publish import enqueue_send, plan_deliveries, publish_pipeline

    use_settings(settings)
    later: list[tuple[int, list[int]]] = []
    defer = background and settings.embedded
    with session_factory(settings.database_url)() as session:
        issue = get_issue(session, number)
        batches = control.resume_issue(session, settings, issue, (lambda i, ids: later.append((i, ids))) if defer else enqueue_send)
        issue_id, replan, rerender = issue.id, issue.planned_at is None, not publishing.is_rendered(session, issue.id)

    def rest() -> None:
        for batch in later:
            enqueue_send(*batch)
        if rerender:  # paused before its editions were rendered: the whole pipeline again (each step is idempotent)
            publish_pipeline(issue_id).apply_async()
        elif replan:
            plan_deliveries.delay(issue_id)

    if defer:
        watch(settings, issue_id, rest)
    else:
        rest()
    return issue_id, batches, replan or rerender


def requeue_publish(settings: Settings, number: int, *, background: bool = False) -> tuple[int, int]:
    """Send issue ``number``'s failed deliveries again (`newsletter.control.requeue_failed`).
    Returns ``(issue_id, deliveries requeued)``; ``background`` as for `resume_publish`.

    Raises:
        IssueError: the issue is not planned (checked before anything is sent).
    """
    from tasks.app import use_settings
    from tasks.publish import enqueue_send

    use_settings(settings)
    later: list[tuple[int, list[int]]] = []
    defer = background and settings.embedded
    with session_factory(settings.database_url)() as session:
        issue = get_issue(session, number)
        count = control.requeue_failed(session, settings, issue, (lambda i, ids: later.append((i, ids))) if defer else enqueue_send)
        issue_id = issue.id
    if defer:
        watch(settings, issue_id, lambda: [enqueue_send(*batch) for batch in later])
    return issue_id, count


def watch(settings: Settings, issue_id: int, action: Callable[[], object] | None = None) -> threading.Thread | None:
    """For a server process without a broker (the web app in the embedded mode): run ``action``, then
    follow the issue in a daemon thread, so this process is the worker and the sweeper (retries) until
    every delivery is final. With a broker, workers and beat do that, and this does nothing."""
    if not settings.embedded:
        return None

    def run() -> None:
        with contextlib.suppress(Exception):  # outcomes are recorded on the issue and its deliveries
            if action is not None:
                action()
            follow(settings, issue_id, poll=0.5, timeout=24 * 3600)

    thread = threading.Thread(target=run, name=f"issue-id-{issue_id}", daemon=True)
    thread.start()
    return thread
