"""The publish pipeline's tasks. Each loads by id, calls one `newsletter.publishing` function, commits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, chain, group
from celery.worker.request import Request

from newsletter import logs, publishing, sweeper
from newsletter.config import Settings
from newsletter.db import first_line, is_transient_db_error, session_factory
from newsletter.delivery import ledger
from newsletter.delivery.mailers import Mailer, open_mailer
from newsletter.delivery.pool import pool_for
from newsletter.delivery.send import MailerSource
from newsletter.delivery.send import send_batch as send_batch_fn
from tasks.app import app, is_broker_error, lost_worker_pid, release_dead_claims, settings

log = logging.getLogger(__name__)


def _session():  # type: ignore[no-untyped-def]
    return session_factory(settings().database_url)()


def is_outage(exc: BaseException) -> bool:
    """True for an error that says a service is away (broker, database), not that the work is wrong."""
    return is_broker_error(exc) or is_transient_db_error(exc)


class IssueTask(Task):  # type: ignore[misc]
    """A publish step: on an error in the work itself (a template, a segment) the issue is marked
    failed with the reason, never left 'publishing'. When a service is away instead (the broker or the
    database blinked) the issue is left ``publishing``: its heartbeat goes stale and the sweeper starts
    the pipeline again once the service is back (every step is idempotent), so nothing is lost and no
    editor has to publish again."""

    def run_step(self, issue_id: int, step, *args):  # type: ignore[no-untyped-def]
        """Run ``step(session, settings, issue_id, *args)`` with the issue and task bound to the logs."""
        name = f"issue id {issue_id}"  # until the database says its number (it may be the outage logged)
        with logs.bound(issue_id=issue_id, task_id=self.request.id), _session() as session:
            try:
                name = logs.issue_name(session, issue_id)
                publishing.heartbeat(session, issue_id)  # a worker took it: not stalled, whatever the step's length
                return step(session, settings(), issue_id, *args)
            except Exception as exc:
                if is_outage(exc):
                    log.warning(
                        "%s: %s stopped: a service is unreachable (%s); the sweeper restarts the publish when it is back",
                        name,
                        self.name,
                        first_line(exc),
                    )
                    raise
                log.exception("%s: %s failed", name, self.name)
                publishing.fail_issue(session, issue_id, f"{self.name}: {type(exc).__name__}: {exc}")
                raise


def enqueue_send(issue_id: int, delivery_ids: list[int]) -> None:
    """Hand one batch to the send queue."""
    send_batch.delay(issue_id, delivery_ids)


@app.task(base=IssueTask, bind=True, name="newsletter.attach_related")
def attach_related(self: IssueTask, issue_id: int) -> dict[str, int]:
    """See `newsletter.publishing.attach_related`."""
    return self.run_step(issue_id, publishing.attach_related)


@app.task(base=IssueTask, bind=True, name="newsletter.render_editions")
def render_editions(self: IssueTask, issue_id: int) -> dict[str, int]:
    """See `newsletter.publishing.render_editions`; what planning planned meanwhile goes to the send queue."""
    return self.run_step(issue_id, publishing.render_editions, enqueue_send)


@app.task(base=IssueTask, bind=True, name="newsletter.plan_deliveries")
def plan_deliveries(self: IssueTask, issue_id: int) -> int:
    """See `newsletter.publishing.plan_deliveries`; send batches go to the send queue."""
    return self.run_step(issue_id, publishing.plan_deliveries, enqueue_send)


def _mailer(s: Settings, index: int) -> Callable[[], Mailer] | MailerSource:
    """The relay for a batch, round-robin over SMTP_URL by first delivery id: this process's connection
    pool for it (with the relay's rate and connection limits), or the outbox when no relay is set."""
    if not s.smtp_urls:
        return lambda: open_mailer(s.smtp_urls, s.outbox_dir, s.smtp_timeout)
    return pool_for(s.smtp_urls[index % len(s.smtp_urls)], s.redis_url, s.smtp_timeout)


DB_RETRY_COUNTDOWN = 2.0  # seconds before a send batch that found the database away runs again
DB_RETRIES = 60


class SendBatchRequest(Request):  # type: ignore[misc]
    """A send batch as the worker's main process sees it: when its pool process dies under it (SIGKILL, the
    OOM killer), the claims that process held are released (`tasks.app.release_dead_claims`) before Celery
    gives the message back (``task_reject_on_worker_lost``), so the batch goes on at once on another process
    instead of a lease later. (Celery sends no ``task_failure`` signal for a message it requeues.)"""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        pid = lost_worker_pid(self, exc_info)
        if pid is not None:
            args = list(self.args or ()) + [self.kwargs.get(k) for k in ("issue_id", "delivery_ids") if k in (self.kwargs or {})]
            ids = [int(i) for i in args[1]] if len(args) > 1 and isinstance(args[1], list) else []
            released = release_dead_claims(pid, lambda session, mark: ledger.expire_claims_of(session, ids, mark), "deliveries")
            log.warning("send batch %s: pool process %s died; %s claims released for the redelivered task", self.id, pid, released)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


@app.task(bind=True, name="newsletter.send_batch", Request=SendBatchRequest)
def send_batch(self: Task, issue_id: int, delivery_ids: list[int]) -> dict[str, int]:
    """May run more than once for the same ids: see `newsletter.delivery.send.send_batch`. When the pool
    process running it dies, the worker's main process releases its claims (`SendBatchRequest`).

    When the database is away before anything was claimed (or at the end, finishing the issue), the
    task runs again a little later: re-running it is harmless, and the batch does not wait for the
    sweeper. Outcomes of messages already sent are recorded inside `send_batch` itself.
    """
    s = settings()
    name = f"issue id {issue_id}"  # until the database says its number (it may be the outage logged)
    with logs.bound(issue_id=issue_id, task_id=self.request.id), _session() as session:
        try:
            # session.get: send_batch_fn's own read of the issue then comes from the session, no extra query
            name = logs.issue_name(session, issue_id)
            result = send_batch_fn(session, s, issue_id, delivery_ids, _mailer(s, delivery_ids[0] if delivery_ids else 0))
            publishing.finish_if_done(session, issue_id)
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            log.warning("%s: database unreachable (%s); running this batch again shortly", name, first_line(exc))
            raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN, max_retries=DB_RETRIES) from exc
    return dict(result.outcomes)


@app.task(name="newsletter.sweep")
def sweep() -> dict[str, int]:
    """Periodic (beat): re-enqueue due retries, expired claims and lost messages (of deliveries and of
    notices); finish done issues."""
    from tasks.notices import enqueue_due_notices  # tasks.notices imports nothing of this module

    with _session() as session:
        result = sweeper.sweep(session, settings(), enqueue_send, start=start_pipeline)
    notices = enqueue_due_notices()
    return {"batches": sum(result.enqueued.values()), "finished": len(result.finished), "fired": len(result.fired), "notices": notices}


def start_pipeline(issue_id: int) -> None:
    """Enqueue the publish canvas of an issue already moved to ``publishing``."""
    publish_pipeline(issue_id).apply_async()


def publish_pipeline(issue_id: int):  # type: ignore[no-untyped-def]
    """The canvas for one publish: related -> render, and plan at the same time (planning selects the
    audience and needs no rendered edition; only sending does).

    No result backend is involved (``task_ignore_result``): the two branches meet in the database, under the
    issue's row lock (`newsletter.publishing.dispatch_state`). Whichever finishes second moves the issue to
    ``sending``; the send batches go out as soon as the editions are rendered (what was planned before, from
    the render step; every range planned after, from the plan step as it commits). Without a broker (the
    embedded default) the group runs in order, the chain first: a rendering error then stops it before any
    planning.
    """
    return group(chain(attach_related.si(issue_id), render_editions.si(issue_id)), plan_deliveries.si(issue_id))
