"""Errors as problem details (RFC 9457): ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail``, ``instance`` and, for input errors, ``errors: [{"field", "detail"}]`` naming the field at fault.

Domain errors map to a status here, in one table, so every route reports them alike. Pages that a
person opens in a browser get the same content as a small HTML page instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.editors import EditorError
from newsletter.issues import IssueError, IssueNotFound, IssueStateError
from newsletter.publishing import ConfirmationRequired
from newsletter.rendering import RenderError
from newsletter.runner import BrokerUnavailable
from newsletter.segments import SegmentError
from newsletter.subscriber_admin import SubscriberError, SubscriberExists
from newsletter.testsend import TestSendLimited

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:newsletter:problem:"


class FieldError(BaseModel):
    """One input at fault: ``field`` is a dotted path into the request (``titles.en``, ``query.limit``)."""

    field: str
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details; extension members (``recipients``, ``retry_after``) appear where documented."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {MEDIA_TYPE: {}}, "description": title}
    for code, title in (
        (401, "Not signed in: no valid bearer token"),
        (404, "Not found"),
        (409, "Conflict with the issue's state"),
        (422, "Invalid input; `errors` names the fields"),
    )
}

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
          409: "Conflict", 413: "Content too large", 415: "Unsupported media type", 422: "Invalid input",
          429: "Too many requests", 500: "Internal server error", 503: "Service unavailable"}  # fmt: skip


def wants_html(request: Request) -> bool:
    """A browser page (not the API, not an htmx fragment request) should get an HTML error page."""
    if request.url.path.startswith("/api") or request.headers.get("hx-request"):
        return False
    return "text/html" in request.headers.get("accept", "")


def problem_response(
    request: Request,
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """A problem details response (JSON, or HTML for a browser page)."""
    title = title or TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = [{"field": f, "detail": d} for f, d in errors]
    body.update(extensions)
    if wants_html(request):
        web = request.app.state.web
        if not request.url.path.startswith("/admin"):
            from newsletter.web.readerpage import error_page  # reader pages: the error in the reader's language

            return error_page(web, request, status, headers)
        return _admin_page(request, body, headers)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _admin_page(request: Request, problem: dict[str, Any], headers: dict[str, str] | None) -> Response:
    """The problem as an admin page (the admin layout, a heading a person reads, a link back to the issue list),
    with the problem's status. An address that names no page (a path parameter that does not parse, such as
    ``/admin/issues/new``) is headed "No such page" rather than "Invalid input"."""
    from newsletter.web.admin.common import render  # the admin pages' layout, user and CSRF token

    errors = problem.get("errors") or []
    heading = problem["title"]
    if (problem["status"] == 404 and not errors) or (errors and all(e["field"].startswith("path.") for e in errors)):
        heading = "No such page"
        if errors:
            problem = {**problem, "detail": f"{request.url.path} is not an address of the admin pages."}
    try:
        response = render(request, "problem.html", problem["status"], problem=problem, heading=heading)
    except Exception:  # an error before the admin layout can render (no CSRF state yet): the JSON still says it
        log.exception("cannot render the admin error page for %s", request.url.path)
        return JSONResponse(problem, status_code=problem["status"], headers=headers, media_type=MEDIA_TYPE)
    response.headers.update(headers or {})
    return response


def _loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def domain_problem(request: Request, exc: Exception) -> Response:
    """The response for a domain error raised by a route (see the module docstring)."""
    field = getattr(exc, "field", None)
    errors = [(field, str(exc))] if field else []
    if isinstance(exc, ConfirmationRequired):
        a = exc.audience
        return problem_response(request, 409, str(exc), slug="confirmation-required", title="Confirmation required", errors=errors,
                                recipients=a.recipients, by_edition=a.by_edition, no_edition=a.no_edition)  # fmt: skip
    if isinstance(exc, TestSendLimited):
        return problem_response(
            request, 429, str(exc), slug="test-send-limit", errors=errors, headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, BrokerUnavailable):
        return problem_response(request, 503, str(exc), slug="broker-unavailable", headers={"Retry-After": "30"})
    if isinstance(exc, IssueNotFound):
        return problem_response(request, 404, str(exc), slug="not-found", errors=errors)
    if isinstance(exc, IssueStateError | SubscriberExists):
        return problem_response(request, 409, str(exc), slug="conflict", errors=errors)
    if isinstance(exc, SegmentError):
        return problem_response(request, 422, str(exc), slug="invalid-segment", errors=[(exc.path, exc.problem)])
    if isinstance(exc, RenderError):
        return problem_response(
            request, 422, str(exc), slug="render-error", title="Edition does not render", errors=[(f"editions.{exc.lang}", str(exc))]
        )
    return problem_response(request, 422, str(exc), slug="invalid", errors=errors)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return problem_response(request, exc.status_code, str(exc.detail) if exc.detail else None, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # A body that is not JSON at all is reported at "body" (pydantic's location is the character offset, "0").
        errors = [
            ("body" if e.get("type") == "json_invalid" else _loc(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in exc.errors()
        ]
        return problem_response(request, 422, "the request does not match the schema", slug="invalid", errors=errors)

    async def domain_error(request: Request, exc: Exception) -> Response:
        return domain_problem(request, exc)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "an unexpected error occurred; it was logged")

    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    for cls in (IssueError, SubscriberError, EditorError, SegmentError, RenderError, BrokerUnavailable):
        app.add_exception_handler(cls, domain_error)
    app.add_exception_handler(Exception, server_error)  # what the middleware below cannot catch (outer layers)
    # Added before the other middleware, so innermost: an unexpected error is answered (and logged) here, once,
    # and no longer re-raised to the server, which logged it a second time ("Exception in ASGI application").
    app.add_middleware(AnswerUnexpected)


class AnswerUnexpected:
    """ASGI middleware: log an exception no handler took, once, and answer 500 problem details (JSON, or HTML
    for a browser page). If the response had already started, nothing can be answered: it is re-raised
    (unlogged here) for the server to log and close the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            if started:
                raise
            request = Request(scope)
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = problem_response(request, 500, "an unexpected error occurred; it was logged")
            await response(scope, receive, send)
