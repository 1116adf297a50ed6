"""Starting, resuming and requeueing a publish, and following it until every delivery is final (used by the
CLI, the demo, the editor API and the admin pages)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from newsletter import control, publishing, sweeper
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery import ledger
from newsletter.issues import get_issue
from newsletter.models import FINAL_DELIVERY_STATES, Issue, IssueStatus

Progress = Callable[[int, int], None]  # (final deliveries, total deliveries)


@dataclass
class PublishOutcome:
    """How a followed publish ended."""

    number: int
    status: str
    error: str | None


def start_publish(settings: Settings, number: int) -> tuple[int, threading.Thread | None]:
    """Validate issue ``number`` and start its pipeline.

    With a broker the pipeline is enqueued for the workers and this returns at once. In the embedded
    mode the tasks run eagerly in a background thread of this process (the in-process worker), so
    the caller can follow progress. Returns ``(issue_id, thread or None)``.

    Raises:
        IssueError, RenderError: the issue cannot be published (nothing was changed).
    """
    from tasks.publish import publish_pipeline, use_settings  # Celery lives at the edge

    use_settings(settings)
    with session_factory(settings.database_url)() as session:
        issue = get_issue(session, number)
        publishing.request_publish(session, settings, issue)
        issue_id = issue.id
    if not settings.embedded:
        publish_pipeline(issue_id).apply_async()
        return issue_id, None

    def run() -> None:
        # A failure is recorded on the issue by the task base class; the follower reports it.
        with contextlib.suppress(Exception):
            publish_pipeline(issue_id).apply()

    thread = threading.Thread(target=run, name=f"publish-{number}", daemon=True)
    thread.start()
    return issue_id, thread


def follow(
    settings: Settings, issue_id: int, progress: Progress | None = None, poll: float = 0.5, timeout: float | None = None
) -> PublishOutcome:
    """Poll the ledger until the issue is ``sent`` or ``failed`` (or ``timeout`` seconds pass).

    In the embedded mode this process is also the sweeper: deferred deliveries are re-sent here when
    due, since no beat process runs.
    """
    from tasks.publish import enqueue_send, use_settings

    use_settings(settings)
    factory = session_factory(settings.database_url)
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sweep = 0.0
    while True:
        with factory() as session:
            issue = session.get_one(Issue, issue_id)
            counts = ledger.counts(session, issue_id)
            done = sum(n for (state, _), n in counts.items() if state in FINAL_DELIVERY_STATES)
            if progress:
                progress(done, sum(counts.values()))
            if issue.status in (IssueStatus.SENT, IssueStatus.FAILED, IssueStatus.PAUSED, IssueStatus.CANCELLED):
                return PublishOutcome(issue.number, str(issue.status), issue.error)
            if (
                settings.embedded
                and issue.status == IssueStatus.SENDING
                and time.monotonic() - last_sweep >= min(settings.sweep_interval, 1.0)
            ):
                sweeper.sweep(session, settings, enqueue_send)
                last_sweep = time.monotonic()
        if deadline is not None and time.monotonic() > deadline:
            return PublishOutcome(issue.number, str(issue.status), "still running: gave up following")
        time.sleep(poll)


def resume_publish(settings: Settings, number: int, *, background: bool = False) -> tuple[int, int, bool]:
    """Resume paused issue ``number`` (`newsletter.control.resume_issue`), restarting planning if it had
    not finished. Returns ``(issue_id, batches enqueued, planning restarted)``.

    Without a broker the batches are sent in this process: before this returns, or with ``background``
    (a server) in a thread that then follows the issue (see `watch`).

    Raises:
        IssueError: the issue is not paused (checked before anything is sent).
    """
    from tasks.publish import enqueue_send, plan_deliveries, use_settings

    use_settings(settings)
    later: list[tuple[int, list[int]]] = []
    defer = background and settings.embedded
    with session_factory(settings.database_url)() as session:
        issue = get_issue(session, number)
        batches = control.resume_issue(session, settings, issue, (lambda i, ids: later.append((i, ids))) if defer else enqueue_send)
        issue_id, replan = issue.id, issue.planned_at is None

    def rest() -> None:
        for batch in later:
            enqueue_send(*batch)
        if replan:
            plan_deliveries.delay(issue_id)

    if defer:
        watch(settings, issue_id, rest)
    else:
        rest()
    return issue_id, batches, replan


def requeue_publish(settings: Settings, number: int, *, background: bool = False) -> tuple[int, int]:
    """Send issue ``number``'s failed deliveries again (`newsletter.control.requeue_failed`).
    Returns ``(issue_id, deliveries requeued)``; ``background`` as for `resume_publish`.

    Raises:
        IssueError: the issue is not planned (checked before anything is sent).
    """
    from tasks.publish import enqueue_send, use_settings

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
