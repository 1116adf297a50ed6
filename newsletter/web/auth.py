"""Who is asking: a bearer token for the API, a signed session cookie for the admin pages.

The session cookie (Starlette's SessionMiddleware: signed with the secret key, HttpOnly, SameSite=Lax,
``Secure`` whenever NEWSLETTER_BASE_URL is https) holds the user id and a fingerprint of the password
hash, so a password change or a disabled account ends every session at once. Tokens and passwords are
never logged: only the token's name and the user's address appear in logs and test-send records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from newsletter.editors import session_fingerprint, token_owner
from newsletter.models import User
from newsletter.web.deps import DB, state

log = logging.getLogger(__name__)
SESSION_COOKIE = "nl_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Actor:
    """Who made a request: ``kind`` is ``token`` or ``user``; ``name`` the token's name or the user's address."""

    kind: str
    name: str

    @property
    def label(self) -> str:
        """``token:ci`` or ``user:ann@example.org``, as recorded in the test-send log."""
        return f"{self.kind}:{self.name}"


def require_token(request: Request, session: DB) -> Actor:
    """Dependency of every API route: a live bearer token (RFC 6750), else 401 with ``WWW-Authenticate``.

    Raises:
        HTTPException: 401.
    """
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    token = token_owner(session, secret.strip()) if scheme.lower() == "bearer" and secret else None
    if token is None:
        error = ', error="invalid_token"' if scheme.lower() == "bearer" else ""
        raise HTTPException(401, "a valid bearer token is required (newsletter tokens create NAME)",
                            headers={"WWW-Authenticate": f'Bearer realm="newsletter"{error}'})  # fmt: skip
    return Actor("token", token.name)


class SignInRequired(Exception):
    """An admin page was asked for without a valid session; answered with a redirect to sign-in."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def current_user(request: Request, session: Session) -> User | None:
    """The signed-in user of this request's session, if the session is still valid."""
    data = request.session
    uid = data.get("uid")
    if not isinstance(uid, int):
        return None
    user = session.get(User, uid)
    if user is None or user.disabled or data.get("fp") != session_fingerprint(user, state(request).settings.secret_key):
        return None
    return user


def require_user(request: Request, session: DB) -> User:
    """Dependency of every admin page: the signed-in user, else a redirect to the sign-in page.

    Raises:
        SignInRequired: not signed in (or the session ended).
    """
    user = current_user(request, session)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target if request.method == "GET" else "/admin")
    request.state.user = user
    return user


def sign_in(request: Request, user: User) -> None:
    """Start a session for ``user`` (a new session: nothing from before sign-in carries over)."""
    request.session.clear()
    request.session.update({"uid": user.id, "fp": session_fingerprint(user, state(request).settings.secret_key)})
    log.info("user %s signed in", user.email)


def sign_out(request: Request) -> None:
    """End the session."""
    request.session.clear()


def sign_in_url(next_path: str) -> str:
    """The sign-in page, returning to ``next_path`` (a local path only) afterwards."""
    return "/admin/sign-in?next=" + quote(safe_next(next_path), safe="/")


def safe_next(value: str | None) -> str:
    """``value`` if it is a path of the admin pages, else ``/admin`` (no open redirect)."""
    if value and value.startswith("/admin") and "//" not in value and "\\" not in value:
        return value
    return "/admin"


Editor = Annotated[User, Depends(require_user)]
ApiActor = Annotated[Actor, Depends(require_token)]
