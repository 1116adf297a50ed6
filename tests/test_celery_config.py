"""The Celery settings that make redelivery safe (issue 3, item 5)."""

from __future__ import annotations

import pytest

from tasks.app import check_visibility_timeout, longest_unacked_seconds, make_app


def test_delivery_safety_settings(make_settings) -> None:
    app = make_app(make_settings("sqlite://", REDIS_URL="redis://127.0.0.1:6379/15"))
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_always_eager is False
    assert [q.name for q in conf.task_queues] == ["render", "plan", "send", "notices"]
    # One exchange and routing key per queue: a message published for one queue lands in no other.
    assert [(q.exchange.name, q.routing_key) for q in conf.task_queues] == [
        ("render", "render"), ("plan", "plan"), ("send", "send"), ("notices", "notices"),
    ]  # fmt: skip
    assert conf.task_routes["newsletter.send_batch"] == {"queue": "send"}
    # Subscription messages have a queue of their own: on `send` they waited behind every batch of a publish.
    assert conf.task_routes["newsletter.send_notice"] == {"queue": "notices"}
    assert conf.task_routes["newsletter.render_editions"] == {"queue": "render"}
    assert conf.task_routes["newsletter.plan_deliveries"] == {"queue": "plan"}
    assert conf.beat_schedule["sweep"]["task"] == "newsletter.sweep"


def test_embedded_default_runs_eagerly(make_settings) -> None:
    app = make_app(make_settings("sqlite://"))
    assert app.conf.task_always_eager is True


def test_visibility_timeout_must_exceed_the_longest_task(make_settings) -> None:
    # (A worker started with such settings exits with status 2 and this line; see tasks.app.check_at_start.)
    settings = make_settings("sqlite://", REDIS_URL="redis://127.0.0.1:6379/15", NEWSLETTER_BATCH_SIZE="500", SMTP_TIMEOUT="60")
    assert longest_unacked_seconds(settings) == 30000
    app = make_app(settings)
    with pytest.raises(RuntimeError, match="visibility_timeout 7200s must exceed the longest task run 30000s"):
        check_visibility_timeout(app, settings)
    check_visibility_timeout(app, make_settings("sqlite://", REDIS_URL="redis://127.0.0.1:6379/15"))  # 100 x 30 s fits


def test_the_app_module_and_the_task_modules_depend_one_way() -> None:
    """tasks.app defines the app and settings; task modules import it; only tasks/__init__ wires both."""
    import ast

    from tests.conftest import ROOT

    def imported(path: str) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert not {n for n in imported("tasks/app.py") if n.startswith("tasks")}
    publish = imported("tasks/publish.py")
    assert "tasks.app" in publish and "tasks" not in publish and "tasks.app.app" in publish


def test_switching_brokers_back_and_forth_keeps_a_usable_pool(make_settings, redis_available: str) -> None:
    """Regression: the pool of the broker switched away from was closed but left in kombu's registry,
    so switching back to that broker (the CLI, tests: embedded -> Redis -> embedded) failed with
    'Acquire on closed pool' in the next publish."""
    from tasks.app import app, use_settings

    embedded, real = make_settings("sqlite://", REDIS_URL=""), make_settings("sqlite://", REDIS_URL=redis_available)
    try:
        for settings in (embedded, real, embedded, real, embedded):
            use_settings(settings)
            make_app(settings)  # another app on the same brokers, as tests make them
            with app.producer_or_acquire(None) as producer:
                assert producer.connection.as_uri().split("://")[0] == ("redis" if settings.redis_url else "memory")
    finally:
        use_settings(embedded)
