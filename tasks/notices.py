"""The notice queue's tasks: send one queued subscription message (see `newsletter.notice_queue`)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.worker.request import Request

from newsletter import logs, notice_queue
from newsletter.db import first_line, is_transient_db_error, session_factory
from tasks.app import app, lost_worker_pid, release_dead_claims, settings

log = logging.getLogger(__name__)

DB_RETRY_COUNTDOWN = 2.0  # seconds before a notice that found the database away is tried again
DB_RETRIES = 60


def enqueue_notice(notice_id: int) -> None:
    """Hand one committed notice to the ``notices`` queue (its own: a confirmation never waits behind an
    issue's send batches). The caller notes the hand-off (`notice_queue.mark_enqueued`)."""
    send_notice.delay(notice_id)


class SendNoticeRequest(Request):  # type: ignore[misc]
    """A notice's send as the worker's main process sees it: when its pool process dies under it, that
    process's claim is released (`tasks.app.release_dead_claims`) before Celery gives the message back, so
    the notice goes out at once instead of when its claim (at least 10 x SMTP_TIMEOUT) ran out."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        pid = lost_worker_pid(self, exc_info)
        if pid is not None:
            notice_id = self.args[0] if self.args else (self.kwargs or {}).get("notice_id")
            if isinstance(notice_id, int):
                end = notice_queue.expire_claim_of
                released = release_dead_claims(pid, lambda session, mark: end(session, notice_id, mark), "a notice")
                log.warning("notice id %s: pool process %s died; %s claim released for the redelivered task", notice_id, pid, released)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


@app.task(bind=True, name="newsletter.send_notice", Request=SendNoticeRequest)
def send_notice(self: Task, notice_id: int) -> str:
    """See `newsletter.notice_queue.send_queued`; may run more than once for the same id (only the claim's
    winner sends). Retries and lost messages are the sweeper's (`newsletter.sweep`), not Celery's: the
    retry time lives in the row. The database being away is retried here shortly. When the pool process
    running it dies, the worker's main process releases its claim (`SendNoticeRequest`)."""
    s = settings()
    with logs.bound(task_id=self.request.id), session_factory(s.database_url)() as session:
        try:
            return notice_queue.send_queued(session, s, notice_id)
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            log.warning("notice id %s: database unreachable (%s); trying again shortly", notice_id, first_line(exc))
            raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN, max_retries=DB_RETRIES) from exc


def enqueue_due_notices() -> int:
    """Enqueue every due notice (retries, lost hand-offs, expired claims) not already handed on since it
    became due (`notice_queue.due`), and note each hand-off in its row; the number enqueued. Beat runs this
    with each sweep: a notice waiting for a worker is enqueued once, not once per sweep."""
    with session_factory(settings().database_url)() as session:
        ids = notice_queue.due(session)
        handed: list[int] = []
        try:
            for notice_id in ids:
                enqueue_notice(notice_id)
                handed.append(notice_id)
        finally:
            notice_queue.mark_enqueued(session, handed)
    return len(ids)
