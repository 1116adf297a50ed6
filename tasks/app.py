"""The Celery application: broker, queues, routes, delivery-safety settings and the beat schedule."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_init, worker_process_shutdown
from kombu import Exchange, Queue

from newsletter import logs
from newsletter.config import Settings, load_settings


def _prepare_multiprocess_metrics() -> None:
    # prometheus_client picks its storage when first imported, so this must run before anything imports
    # it: with a metrics port, every pool process writes to files that the serving process sums up.
    if os.environ.get("NEWSLETTER_METRICS_PORT") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="newsletter-metrics-")
        # The celery command may have imported prometheus_client already (Flower's CLI plugin does);
        # metrics created from here on must still use the multiprocess storage.
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue()


_prepare_multiprocess_metrics()

# Longest time a message may sit unacknowledged before Redis hands it to another worker. Our tasks
# use no countdowns (retry times live in the delivery row), so it only needs to exceed the longest
# task run: a send batch of NEWSLETTER_BATCH_SIZE messages.
VISIBILITY_TIMEOUT = 2 * 3600
QUEUES = ("render", "plan", "send")


def make_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (default: the environment).

    Without ``REDIS_URL`` tasks run eagerly in the calling process (the embedded default).
    """
    settings = settings or load_settings()
    app = Celery("newsletter")
    app.conf.update(
        task_eager_propagates=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acknowledged only after it finished, and a worker killed mid-task gives its
        # message back: re-execution is harmless because every step is idempotent on the ledger.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Task events let Flower (and `celery events`) show tasks as they run.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Each queue has its own direct exchange and routing key, so a task reaches exactly one queue.
        task_queues=tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES),
        task_default_queue="plan",
        task_routes={
            "newsletter.attach_related": {"queue": "render"},
            "newsletter.render_editions": {"queue": "render"},
            "newsletter.plan_deliveries": {"queue": "plan"},
            "newsletter.sweep": {"queue": "plan"},
            "newsletter.send_batch": {"queue": "send"},
        },
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    configure(app, settings)
    return app


def configure(app: Celery, settings: Settings) -> None:
    """Apply the settings-dependent parts: broker (or eager mode) and the sweep schedule."""
    broker = settings.redis_url or "memory://localhost/"
    if app.conf.broker_url != broker:
        # Drop the connection and producer pools bound to the old broker (Celery caches both).
        if app._pool is not None:
            app._pool.force_close_all()
            app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=broker,
        task_always_eager=settings.embedded,
        beat_schedule={
            "sweep": {"task": "newsletter.sweep", "schedule": settings.sweep_interval, "options": {"expires": settings.sweep_interval}},
        },
    )


def longest_unacked_seconds(settings: Settings) -> float:
    """The longest a task message may stay unacknowledged in normal operation (seconds).

    No task uses a countdown or ETA (retry times live in the delivery row), so this is the longest
    task run: a send batch whose every message waits the full SMTP timeout, or a claim's lease.
    """
    return max(settings.lease_seconds, settings.batch_size * settings.smtp_timeout)


def check_visibility_timeout(app: Celery, settings: Settings) -> None:
    """Refuse to start a worker whose broker would redeliver messages of tasks still running.

    Raises:
        RuntimeError: the Redis visibility timeout does not exceed `longest_unacked_seconds`.
    """
    if settings.embedded:
        return
    timeout = (app.conf.broker_transport_options or {}).get("visibility_timeout", 3600)
    needed = longest_unacked_seconds(settings)
    if timeout <= needed:
        raise RuntimeError(
            f"broker visibility_timeout {timeout}s must exceed the longest task run {needed:.0f}s "
            "(NEWSLETTER_BATCH_SIZE x SMTP_TIMEOUT, or NEWSLETTER_LEASE_SECONDS): lower those or raise the timeout"
        )


def check_lease(settings: Settings) -> str | None:
    """A warning when one message's send (connect, MAIL, RCPT, DATA: up to 4 x SMTP_TIMEOUT) could outlast
    the half lease a claim is renewed at, so a slow relay could let another worker take it over."""
    if settings.lease_seconds / 2 < 4 * settings.smtp_timeout:
        return (
            f"NEWSLETTER_LEASE_SECONDS={settings.lease_seconds:g} is short for SMTP_TIMEOUT={settings.smtp_timeout:g}: "
            f"use at least {8 * settings.smtp_timeout:g} so a slow send cannot outlive its claim"
        )
    return None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    """Give Celery's log handlers the issue/delivery/task context (and JSON with NEWSLETTER_LOG_FORMAT=json)."""
    from tasks.publish import settings

    for handler in logger.handlers:
        logs.install(handler, settings().log_format)


@worker_init.connect
def _check_at_worker_start(sender: Any = None, **_: Any) -> None:
    from newsletter.db import check_schema, get_engine
    from tasks.publish import settings

    check_schema(settings().database_url)  # refuse to run tasks against a schema this code does not know
    get_engine(settings().database_url).dispose()  # no pooled connection may be inherited by the forked pool
    check_visibility_timeout(sender.app if sender is not None else Celery(), settings())
    warning = check_lease(settings())
    if warning:
        logging.getLogger(__name__).warning(warning)


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """Serve this worker's process metrics (all pool processes summed) on NEWSLETTER_METRICS_PORT."""
    from tasks.publish import settings

    port = settings().metrics_port
    if not port or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A forked pool process must not use sockets opened by its parent (SQLAlchemy "pooling with multiprocessing")."""
    from newsletter.db import get_engine
    from tasks.publish import settings

    get_engine(settings().database_url).dispose(close=False)


@worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
