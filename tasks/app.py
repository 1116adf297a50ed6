"""The Celery application: broker, queues, routes, delivery-safety settings and the beat schedule."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from newsletter.config import Settings, load_settings

# Longest time a message may sit unacknowledged before Redis hands it to another worker. Our tasks
# use no countdowns (retry times live in the delivery row), so it only needs to exceed the longest
# task run: a send batch of NEWSLETTER_BATCH_SIZE messages.
VISIBILITY_TIMEOUT = 2 * 3600


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
        task_queues=(Queue("render"), Queue("plan"), Queue("send")),
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
    if app.conf.broker_url != broker and app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.conf.update(
        broker_url=broker,
        task_always_eager=settings.embedded,
        beat_schedule={
            "sweep": {"task": "newsletter.sweep", "schedule": settings.sweep_interval, "options": {"expires": settings.sweep_interval}},
        },
    )
