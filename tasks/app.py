"""The Celery application: broker, queues, routes, delivery-safety settings, the beat schedule, and the
settings this process's tasks use.

Dependencies go one way: task modules (`tasks.publish`) import `app` and `settings` from here, this
module imports no task module, and ``tasks/__init__`` imports both so that ``celery -A tasks`` finds
the app with its tasks registered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from kombu import Exchange, Queue, pools

from newsletter import logs
from newsletter.config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


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
# use no long countdowns (retry times live in the delivery row; a send batch that found the database
# away retries after 2 s), so it only needs to exceed the longest task run: a send batch of
# NEWSLETTER_BATCH_SIZE messages.
VISIBILITY_TIMEOUT = 2 * 3600
# Every worker consumes all of them unless told otherwise (`-Q`). Subscription messages have a queue of their
# own: on `send` a sign-up's confirmation waited behind every batch of a large publish.
QUEUES = ("render", "plan", "send", "notices")

_startup_errors: list[SettingsError] = []  # why the environment's settings could not be loaded at import
_override: list[Settings] = []


@cache
def settings() -> Settings:
    """Settings, read once per process from the environment (or as set by `use_settings`).

    Raises:
        SettingsError: the environment's settings are not usable.
    """
    return _override[-1] if _override else load_settings()


def use_settings(new: Settings) -> None:
    """Run this process's task layer with ``new`` (the CLI, the demo, tests): the database the tasks
    use, and the broker, or eager in-process execution when ``new`` has no broker."""
    _override[:] = [new]
    _startup_errors.clear()
    settings.cache_clear()
    configure(app, new)


def make_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (default: the environment).

    Without ``REDIS_URL`` tasks run eagerly in the calling process (the embedded default). When the
    environment's settings are not usable the app is still built (so that ``celery -A tasks`` can
    import it) and `check_at_start` refuses to run a worker or beat with it.
    """
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            _startup_errors[:] = [exc]
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
            "newsletter.send_notice": {"queue": "notices"},
        },
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    configure(app, settings)
    return app


def configure(app: Celery, settings: Settings | None) -> None:
    """Apply the settings-dependent parts: broker (or eager mode) and the sweep schedule."""
    if settings is None:  # unusable settings: a worker or beat started with them stops in check_at_start
        app.conf.update(broker_url=os.environ.get("REDIS_URL") or "memory://localhost/", task_always_eager=False)
        return
    broker = settings.redis_url or "memory://localhost/"
    if app.conf.broker_url != broker:
        # Drop the connection and producer pools bound to the old broker. Celery caches both, and they
        # live in kombu's global registry keyed by broker URL: closed in place and left there, they would
        # fail the next switch back to that URL ("Acquire on closed pool"), so they leave the registry too.
        if app._pool is not None:
            old = app.connection_for_write()
            app._pool.force_close_all()
            for group in (pools.connections, pools.producers):
                with contextlib.suppress(KeyError):
                    del group[old]
            app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=broker,
        task_always_eager=settings.embedded,
        beat_schedule={
            "sweep": {"task": "newsletter.sweep", "schedule": settings.sweep_interval, "options": {"expires": settings.sweep_interval}},
        },
    )


def is_broker_error(exc: BaseException) -> bool:
    """True when ``exc`` says the broker cannot be reached (refused, reset, timed out), as opposed to a
    bug or a bad message: the work is still in the database and can be enqueued again later."""
    import redis.exceptions
    from kombu.exceptions import OperationalError

    return isinstance(exc, OperationalError | redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | ConnectionError)


def broker_problem(timeout: float = 3.0) -> str | None:
    """None when this process's broker answers within ``timeout`` seconds, else why not (one line)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
    except Exception as exc:
        if not is_broker_error(exc):
            raise
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def workers_listening(timeout: float = 1.0) -> bool:
    """True when at least one worker answers a remote-control ping within ``timeout`` seconds."""
    try:
        return bool(app.control.ping(timeout=timeout))
    except Exception as exc:
        if not is_broker_error(exc):
            raise
        return False


def longest_unacked_seconds(settings: Settings) -> float:
    """The longest a task message may stay unacknowledged in normal operation (seconds).

    No task uses a long countdown or ETA (retry times live in the delivery row), so this is the
    longest task run: a send batch whose every message waits the full SMTP timeout, or a claim's lease.
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


def _refuse(message: str) -> NoReturn:
    """Stop a starting worker or beat with one line on stderr per problem (several settings can be
    refused at once) and exit status 2 (as the CLI does)."""
    # The real stderr: beat redirects sys.stderr into its log by the time its signal fires.
    print("\n".join(f"error: {line}" for line in message.splitlines()), file=sys.__stderr__ or sys.stderr, flush=True)
    raise SystemExit(2)  # a BaseException: Celery's signal dispatch lets it through and the process exits


def check_at_start(app: Celery) -> None:
    """What every worker and beat checks before it runs anything: settings usable, the schema current,
    and the broker's visibility timeout longer than any task. Exits with status 2 and one line if not."""
    from newsletter.db import SchemaOutOfDate, check_schema

    if _startup_errors:
        _refuse(str(_startup_errors[0]))
    try:
        current = settings()
    except SettingsError as exc:
        _refuse(str(exc))
    try:
        check_schema(current.database_url)  # refuse to run tasks against a schema this code does not know
    except SchemaOutOfDate as exc:
        _refuse(str(exc))
    except Exception as exc:  # the database is down or the URL points nowhere: say so in one line
        _refuse(f"cannot reach the database at {current.describe()['DATABASE_URL']}: {str(exc).splitlines()[0]}")
    try:
        check_visibility_timeout(app, current)
    except RuntimeError as exc:
        _refuse(str(exc))


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    """Give Celery's log handlers the issue/delivery/task context (and JSON with NEWSLETTER_LOG_FORMAT=json)."""
    fmt = "json" if os.environ.get("NEWSLETTER_LOG_FORMAT", "").strip().lower() == "json" else "text"
    for handler in logger.handlers:
        logs.install(handler, fmt)


@worker_init.connect
def _check_at_worker_start(sender: Any = None, **_: Any) -> None:
    from newsletter.db import get_engine

    check_at_start(sender.app if sender is not None else app)
    get_engine(settings().database_url).dispose()  # no pooled connection may be inherited by the forked pool


@worker_init.connect
def _warm_before_fork(sender: Any = None, **_: Any) -> None:
    """Import and build, in the worker's main process before its pool forks, what the related and render
    steps use (`newsletter.warmup`): every pool process inherits it, and the first publish after a start
    no longer pays for it. Only for a worker consuming ``render`` (``-Q send,notices`` warms nothing); the
    CLI, the web app and the embedded default never run this."""
    from newsletter import warmup

    consume = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    queues = set(consume.consume_from) if consume is not None and consume.consume_from else None
    took = warmup.warm(settings(), queues)
    if took:
        log.info("warmed before forking the pool: %s", ", ".join(f"{name} {seconds:.2f} s" for name, seconds in took.items()))


@beat_init.connect
def _check_at_beat_start(sender: Any = None, **_: Any) -> None:
    check_at_start(sender.app if sender is not None else app)


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """Serve this worker's process metrics (all pool processes summed) on NEWSLETTER_METRICS_PORT."""
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

    get_engine(settings().database_url).dispose(close=False)


# A random secret of this worker's main process, made before its pool forks (so every pool process has it):
# each pool process's claim tokens begin with a mark made of it and its pid (`ledger.holder_mark`), by which the
# main process names the claims of a pool process it saw die (`release_dead_claims`).
_holder_secret: list[bytes] = []


@worker_init.connect
def _make_holder_secret(**_: Any) -> None:
    _holder_secret[:] = [secrets.token_bytes(16)]


@worker_process_init.connect
def _mark_claim_tokens(**_: Any) -> None:
    from newsletter.delivery import ledger

    if _holder_secret:
        ledger.set_holder(ledger.holder_mark(_holder_secret[0], os.getpid()))


def release_dead_claims(pid: int, release: Callable[[Session, str], int], what: str) -> int:
    """In a worker's main process: end at once the leases of the claims its pool process ``pid`` held when it
    died (Celery's WorkerLostError: killed, out of memory), so that the task message Celery gives back
    (``task_reject_on_worker_lost``) takes them over at once instead of finding them busy and leaving them to
    the sweeper once their lease ran out. ``release(session, mark)`` ends the leases of the task's rows whose
    token begins with ``mark`` (`ledger.expire_claims_of`, `notice_queue.expire_claim_of`) and returns how
    many; ``what`` names them in a log line. Returns how many; 0 when the database does not answer within a
    few seconds (the leases then run out as before). Never raises.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    from newsletter.db import first_line, normalise_url
    from newsletter.delivery import ledger

    if not _holder_secret:
        return 0
    url = normalise_url(settings().database_url)
    # A connection of its own, closed after: this process forks the replacement pool process, which must
    # inherit no socket; and a database that is away must not hold the worker's event loop for long.
    connect_args = {"connect_timeout": 3, "options": "-c statement_timeout=5000"} if url.startswith("postgresql") else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with Session(engine) as session:
            return release(session, ledger.holder_mark(_holder_secret[0], pid))
    except Exception as exc:
        log.warning("pool process %s died holding %s; their claims run out with their lease (%s)", pid, what, first_line(exc))
        return 0
    finally:
        engine.dispose()


def lost_worker_pid(request: Any, exc_info: Any) -> int | None:
    """The pid of the pool process that died under ``request`` (a Celery ``Request`` failing with
    WorkerLostError), else None."""
    from billiard.exceptions import WorkerLostError

    exc = getattr(exc_info.exception, "exc", exc_info.exception)  # Celery may wrap it (ExceptionWithTraceback)
    return request.worker_pid if isinstance(exc, WorkerLostError) and request.worker_pid else None


@worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


app = make_app()
