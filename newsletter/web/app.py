"""The app factory: settings, database and templates shared by every router, and the middleware.

Routers: `ops` (health, metrics), `joining` (sign-up, confirm, re-subscribe), `reader` (unsubscribe,
preferences), `archive` (`/`, editions' web versions, Atom feeds), `api` (editor API, bearer tokens) and
`admin` (editor pages, sign-in). Shared web infrastructure, reusable by any page: `security` (headers),
`csrf` (form tokens), `problems` (RFC 9457 errors), `ratelimit`, `auth`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from newsletter.config import Settings
from newsletter.web import admin, api, archive, joining, ops, problems, reader
from newsletter.web.auth import SESSION_COOKIE, SESSION_SECONDS, SignInRequired, sign_in_url
from newsletter.web.csrf import CsrfCookie
from newsletter.web.deps import WebState, page
from newsletter.web.head import HeadAsGet
from newsletter.web.security import SecurityHeaders

STATIC = Path(__file__).with_name("static")


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for ``settings``; OpenAPI at ``/openapi.json``, docs at ``/docs``.

    Cookies are ``Secure`` whenever NEWSLETTER_BASE_URL is https (over plain http://localhost a browser
    would drop them, and signing in could not work).
    """
    https = settings.base_url.startswith("https://")
    app = FastAPI(
        title="newsletter",
        summary="Weekly multilingual newsletter publishing: the editor API",
        description="Every `/api` route needs `Authorization: Bearer <token>` (create one with `newsletter tokens create NAME`). "
        "Errors are problem details (RFC 9457) whose `errors` name the fields at fault.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
    )
    app.state.web = WebState.build(settings)
    app.include_router(ops.router)
    app.include_router(joining.router)
    app.include_router(reader.router)
    app.include_router(archive.router)
    app.include_router(api.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    problems.install(app)

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.headers.get("hx-request"):  # htmx follows HX-Redirect with a full page load
            return Response(status_code=401, headers={"HX-Redirect": sign_in_url(exc.next_path)})
        return RedirectResponse(sign_in_url(exc.next_path), status_code=303)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        return page(request.app.state.web, "docs.html")

    # Outermost last: headers on every response, including errors and redirects.
    app.add_middleware(SessionMiddleware, secret_key=settings.secret_key, session_cookie=SESSION_COOKIE, max_age=SESSION_SECONDS,
                       same_site="lax", https_only=https)  # fmt: skip
    app.add_middleware(CsrfCookie, secure=https)
    app.add_middleware(SecurityHeaders, https=https)
    app.add_middleware(HeadAsGet)  # outermost: every layer sees the GET that a HEAD stands for
    return app
