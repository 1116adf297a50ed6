"""CSRF protection for forms (signed double-submit cookie, OWASP CSRF Prevention Cheat Sheet).

Every response to a visitor without one sets the ``nl_csrf`` cookie (random, HttpOnly, SameSite=Lax,
Secure on https). A form carries ``csrf_token`` = HMAC(secret key, cookie value), which only this
server can compute; htmx sends the same value in the ``X-CSRF-Token`` header (set once on ``<body>``
with ``hx-headers``). `csrf_protect` checks it on every POST, PUT, PATCH and DELETE of the routers
that use it. Requests authenticated by a bearer token carry no ambient credentials and are exempt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie

from fastapi import HTTPException, Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "nl_csrf"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


def _cookie(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is the client's problem: treat as absent
                return None
            if COOKIE in jar and 16 <= len(jar[COOKIE].value) <= 128:
                return jar[COOKIE].value
    return None


def _sign(secret: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


class CsrfCookie:
    """Pure ASGI middleware: makes sure every visitor has a CSRF cookie, and exposes it to `csrf_token`."""

    def __init__(self, app: ASGIApp, secure: bool) -> None:
        self.app, self.secure = app, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = _cookie(scope)
        fresh = nonce is None
        nonce = nonce or secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf_nonce"] = nonce
        scope["state"]["csrf_cookie"] = None if fresh else nonce

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                flags = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if self.secure else "")
                MutableHeaders(scope=message).append("set-cookie", f"{COOKIE}={nonce}{flags}")
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def csrf_token(request: Request) -> str:
    """The token forms on this page must carry (field ``csrf_token`` or header ``X-CSRF-Token``)."""
    return _sign(request.app.state.web.settings.secret_key, request.state.csrf_nonce)


async def csrf_protect(request: Request) -> None:
    """Dependency: refuse (403) an unsafe request whose token does not match the cookie it came with.

    Raises:
        HTTPException: 403, token missing or wrong.
    """
    if request.method not in UNSAFE or request.headers.get("authorization", "").lower().startswith("bearer "):
        return
    sent = request.headers.get(HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(FIELD)
        sent = value if isinstance(value, str) else None
    check_token(request, sent)


def check_token(request: Request, sent: str | None) -> None:
    """Refuse (403) a form token ``sent`` that does not match the cookie the request came with; for a
    route that reads its form fields itself (the unsubscribe POST, where the token is one of two ways in).

    Raises:
        HTTPException: 403, token missing or wrong.
    """
    cookie = request.state.csrf_cookie
    if not sent or cookie is None or not hmac.compare_digest(sent, _sign(request.app.state.web.settings.secret_key, cookie)):
        raise HTTPException(403, "the form has expired or did not come from this site (CSRF check failed): reload the page and try again")
