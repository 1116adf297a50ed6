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
    assert [q.name for q in conf.task_queues] == ["render", "plan", "send"]
    # One exchange and routing key per queue: a message published for one queue lands in no other.
    assert [(q.exchange.name, q.routing_key) for q in conf.task_queues] == [("render", "render"), ("plan", "plan"), ("send", "send")]
    assert conf.task_routes["newsletter.send_batch"] == {"queue": "send"}
    assert conf.task_routes["newsletter.render_editions"] == {"queue": "render"}
    assert conf.task_routes["newsletter.plan_deliveries"] == {"queue": "plan"}
    assert conf.beat_schedule["sweep"]["task"] == "newsletter.sweep"


def test_embedded_default_runs_eagerly(make_settings) -> None:
    app = make_app(make_settings("sqlite://"))
    assert app.conf.task_always_eager is True


def test_visibility_timeout_must_exceed_the_longest_task(make_settings) -> None:
    settings = make_settings("sqlite://", REDIS_URL="redis://127.0.0.1:6379/15", NEWSLETTER_BATCH_SIZE="500", SMTP_TIMEOUT="60")
    assert longest_unacked_seconds(settings) == 30000
    app = make_app(settings)
    with pytest.raises(RuntimeError, match="visibility_timeout 7200s must exceed the longest task run 30000s"):
        check_visibility_timeout(app, settings)
    check_visibility_timeout(app, make_settings("sqlite://", REDIS_URL="redis://127.0.0.1:6379/15"))  # 100 x 30 s fits


def test_lease_shorter_than_a_slow_send_is_flagged(make_settings) -> None:
    from tasks.app import check_lease

    assert check_lease(make_settings("sqlite://")) is None  # 300 s lease, 30 s timeout
    warning = check_lease(make_settings("sqlite://", NEWSLETTER_LEASE_SECONDS="60", SMTP_TIMEOUT="30"))
    assert warning is not None and "use at least 240" in warning
