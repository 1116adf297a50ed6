"""The app factory: settings, database and templates shared by every router."""

from __future__ import annotations

from fastapi import FastAPI

from newsletter.config import Settings
from newsletter.web import ops, pages
from newsletter.web.deps import WebState


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for ``settings``; OpenAPI at ``/openapi.json``, docs at ``/docs``."""
    app = FastAPI(title="newsletter", summary="Weekly multilingual newsletter publishing", version="0.1.0")
    app.state.web = WebState.build(settings)
    app.include_router(ops.router)
    app.include_router(pages.router)
    return app
