"""Prometheus metrics.

Two kinds, served from two places:

- process metrics, counted where the work happens (send latency, outcomes, retries); a worker serves
  them on ``NEWSLETTER_METRICS_PORT``, summed over its pool processes (prometheus_client's
  multiprocess mode);
- ledger metrics, read from the database and the broker at scrape time (deliveries by state, issues by
  status, notices by status and kind, queue depth), served by ``newsletter web`` at ``/metrics``. They are facts of the system, so
  any number of scrapers agree whichever process answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.models import Delivery, Issue, Notice

DELIVERY_OUTCOMES = Counter(
    "newsletter_delivery_outcomes_total", "Delivery attempts by outcome (sent, deferred, failed, skipped, ...)", ["outcome"]
)
SEND_SECONDS = Histogram(
    "newsletter_send_seconds",
    "Seconds to hand one message to the relay (SMTP MAIL to the reply after DATA, or the outbox write)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("newsletter_retries_total", "Transient failures scheduled for a retry")

QUEUES = ("render", "plan", "send", "notices")  # tasks.app.QUEUES (this module never imports Celery)
log = logging.getLogger(__name__)


def record_outcome(outcome: str) -> None:
    """Count one delivery outcome (``skipped:<reason>`` counts as ``skipped``)."""
    name = outcome.split(":", 1)[0]
    DELIVERY_OUTCOMES.labels(name).inc()
    if name == "deferred":
        RETRIES.inc()


class LedgerCollector(Collector):
    """Reads deliveries by (state, language), issues by status and broker queue depth at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._broker_down = False

    def collect(self) -> Iterator[Any]:
        deliveries = GaugeMetricFamily("newsletter_deliveries", "Deliveries in the ledger by state and language", labels=["state", "lang"])
        issues = GaugeMetricFamily("newsletter_issues", "Issues by status", labels=["status"])
        notices = GaugeMetricFamily(
            "newsletter_notices",
            "Subscription messages (confirm, welcome, ...) in the notice queue by status and kind",
            labels=["status", "kind"],
        )
        with session_factory(self.settings.database_url)() as session:
            for state, lang, n in session.execute(
                select(Delivery.status, Delivery.lang, func.count()).group_by(Delivery.status, Delivery.lang)
            ):
                deliveries.add_metric([str(state), lang], n)
            for status, n in session.execute(select(Issue.status, func.count()).group_by(Issue.status)):
                issues.add_metric([str(status)], n)
            for status, kind, n in session.execute(select(Notice.status, Notice.kind, func.count()).group_by(Notice.status, Notice.kind)):
                notices.add_metric([str(status), kind], n)
        yield deliveries
        yield issues
        yield notices
        if self.settings.redis_url:
            yield from self._broker()

    def _broker(self) -> Iterator[Any]:
        """Queue depths and ``newsletter_broker_up``; without an answer from Redis only ``newsletter_broker_up 0``
        (the rest of the scrape still answers), with one warning per outage rather than one per scrape."""
        import redis

        up = GaugeMetricFamily("newsletter_broker_up", "1 when the broker (REDIS_URL) answered this scrape, else 0")
        depth = GaugeMetricFamily("newsletter_queue_depth", "Task messages waiting in each broker queue", labels=["queue"])
        client = redis.Redis.from_url(self.settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2)
        try:
            lengths = [(queue, client.llen(queue)) for queue in QUEUES]
        except redis.RedisError as exc:
            if not self._broker_down:
                log.warning("metrics: the broker does not answer (%s); queue depths are left out until it does", exc)
            self._broker_down = True
            up.add_metric([], 0)
            yield up
            return
        finally:
            client.close()
        self._broker_down = False
        up.add_metric([], 1)
        yield up
        for queue, n in lengths:
            depth.add_metric([queue], n)
        yield depth


def ledger_registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only the `LedgerCollector` (for the web app's ``/metrics``)."""
    registry = CollectorRegistry()
    registry.register(LedgerCollector(settings))
    return registry
