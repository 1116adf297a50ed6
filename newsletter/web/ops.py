"""Operations endpoints: health check for load balancers and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from newsletter.metrics import ledger_registry
from newsletter.web.deps import WebState, state

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz(request: Request, response: Response) -> dict[str, Any]:
    """Each dependency's state, ``"ok"`` or ``"degraded"``: ``database`` and ``broker`` (Redis; ``"none"`` in
    the embedded mode, which has none: the work runs in-process), and ``status``, ``degraded`` when any is.

    The HTTP status is 503 only when the database does not answer: then no page can be served, and a load
    balancer should take this instance out and an orchestrator may restart it. Without the broker the app
    still serves every page (rate limits count in-process, `newsletter.web.ratelimit`; a publish answers
    503 broker-unavailable), and restarting the web app would not bring Redis back, so the answer stays
    200 and the body says ``degraded`` (for monitoring: alert on it, and on ``newsletter_broker_up``).
    """
    web = state(request)
    checks = {
        "database": _check("database", lambda: _database(web)),
        "broker": _check("broker", lambda: _broker(web)) if web.settings.redis_url else "none",
    }
    if checks["database"] != "ok":
        response.status_code = 503
    return {"status": "degraded" if "degraded" in checks.values() else "ok", **checks}


_last: dict[str, str] = {}  # each dependency's last state, to log changes rather than every probe


def _check(name: str, probe: Callable[[], None]) -> str:
    try:
        probe()
        now, why = "ok", ""
    except Exception as exc:  # any failure to answer counts: the point is to say so, not to raise
        now, why = "degraded", f": {exc}"
    if _last.get(name, "ok") != now:
        log.warning("healthz: %s is %s%s", name, now, why)
    _last[name] = now
    return now


def _database(web: WebState) -> None:
    with web.sessions() as session:
        session.execute(text("SELECT 1"))


def _broker(web: WebState) -> None:
    if web.settings.redis_url:
        import redis

        client = redis.Redis.from_url(web.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()


def _registry(request: Request) -> CollectorRegistry:
    web = state(request)
    registry = getattr(request.app.state, "ledger_registry", None)
    if registry is None:
        registry = request.app.state.ledger_registry = ledger_registry(web.settings)
    return registry  # type: ignore[no-any-return]


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Ledger metrics (deliveries by state and language, issues by status, queue depth)."""
    return Response(generate_latest(_registry(request)), media_type=CONTENT_TYPE_LATEST)
