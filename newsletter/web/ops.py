"""Operations endpoints: health check for load balancers and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from newsletter.metrics import ledger_registry
from newsletter.web.deps import DB, state

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(session: DB) -> dict[str, str]:
    """200 when the database answers (for load balancers and container health checks)."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}


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
