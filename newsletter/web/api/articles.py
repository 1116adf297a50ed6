"""API: the article archive (search, one article, JSON Lines import)."""

from __future__ import annotations

import codecs
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from newsletter.article_text import keep_derived
from newsletter.articles import import_lines, parse_datetime
from newsletter.issues import IssueNotFound, Selection, articles_by_external_id, search_articles
from newsletter.web.api.schemas import ArticleDetail, ArticleOut, ArticlePage, ImportLineError, ImportResult, Lang
from newsletter.web.deps import DB

router = APIRouter(tags=["articles"])
MAX_IMPORT_BYTES = 64 * 1024 * 1024


def query_date(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or time from a query parameter (a date alone: midnight UTC).

    Raises:
        HTTPException: 422 naming the parameter.
    """
    try:
        parsed = parse_datetime(value)
    except (ValueError, OverflowError) as exc:
        raise HTTPException(422, f"{name}: not an ISO 8601 date or time: {value!r}") from exc
    if parsed is not None and not 1900 <= parsed.year <= 2999:
        raise HTTPException(422, f"{name}: the year must be between 1900 and 2999")
    return parsed


@router.get("/articles", response_model=ArticlePage)
def list_articles(
    session: DB,
    q: Annotated[str | None, Query(max_length=200, description="text in the title or summary (case-insensitive)")] = None,
    lang: Lang | None = None,
    category: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[str | None, Query(description="published on or after (ISO 8601 date or time)")] = None,
    until: Annotated[str | None, Query(description="published before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> ArticlePage:
    """Search the archive by text, language, category and publication date; newest first."""
    sel = Selection(limit, lang, category, query_date(since, "since"), query_date(until, "until"))
    page, total = search_articles(session, q, sel, offset=offset)
    keep_derived(session, page)  # summaries an import left pending: made once, stored
    return ArticlePage(items=[ArticleOut.of(a) for a in page], total=total, limit=limit, offset=offset)


@router.get("/articles/{article_id:path}", response_model=ArticleDetail)
def get_article(article_id: str, session: DB) -> ArticleDetail:
    """One article by its id (as imported; ids may contain slashes)."""
    try:
        article = articles_by_external_id(session, [article_id])[0]
        keep_derived(session, [article])
        return ArticleDetail.of(article)
    except IssueNotFound as exc:
        raise HTTPException(404, f"no article {article_id!r}") from exc


@router.post(
    "/articles/import",
    response_model=ImportResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "JSON Lines: one article object per line (id, title, body or body_html, lang, category, published_at, url)",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def import_articles(request: Request, session: DB) -> ImportResult:
    """Import articles from a JSON Lines body; idempotent on ``id``. Bad lines are reported, the rest imported."""
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"at most {MAX_IMPORT_BYTES // 2**20} MiB per import")
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"at most {MAX_IMPORT_BYTES // 2**20} MiB per import")
    text = codecs.decode(body, "utf-8", errors="replace").replace("\x00", "")
    report = import_lines(session, text.splitlines())
    errors = [ImportLineError(line=e.line, id=e.record_id, reason=e.reason) for e in report.errors]
    return ImportResult(created=report.created, updated=report.updated, unchanged=report.unchanged, errors=errors)
