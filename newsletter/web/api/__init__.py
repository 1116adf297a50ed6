"""The editor API under ``/api``: every route needs a bearer token (``newsletter tokens create NAME``).

Routers: `articles` (search, get, import), `issues` (drafts, previews, test sends, publish and control),
`subscribers` (search, add, update, unsubscribe, export, erase) and `segments` (preview a rule).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from newsletter.content import unstorable
from newsletter.web.api import articles, issues, segments, subscribers
from newsletter.web.auth import require_token
from newsletter.web.problems import PROBLEM_RESPONSES


def clean_url(request: Request) -> None:
    """Refuse (400) a path or query with NUL or unencodable characters, which no database stores."""
    if unstorable([request.url.path, *request.query_params.keys(), *request.query_params.values()]):
        raise HTTPException(400, "the URL contains a NUL or an unpaired surrogate character")


router = APIRouter(prefix="/api", dependencies=[Depends(clean_url), Depends(require_token)], responses=PROBLEM_RESPONSES)
for module in (articles, issues, subscribers, segments):
    router.include_router(module.router)
