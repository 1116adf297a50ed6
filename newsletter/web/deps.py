"""What routes share: the settings, a session per request and the page templates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session, sessionmaker

from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.rendering import templates_dir
from newsletter.web.ratelimit import RateLimiter

SIGN_IN_LIMIT = 10  # failed sign-ins per address, and per client address, in SIGN_IN_WINDOW
SIGN_IN_WINDOW = 15 * 60  # seconds
SIGNUP_CLIENT_LIMIT = 20  # sign-up requests per client address in SIGNUP_WINDOW (a shared office NAT stays fine)
SIGNUP_ADDRESS_LIMIT = 3  # confirmation messages per subscriber address in SIGNUP_WINDOW (no mail-bombing anyone)
SIGNUP_WINDOW = 60 * 60  # seconds


@dataclass(frozen=True)
class WebState:
    """Built once per app."""

    settings: Settings
    sessions: sessionmaker[Session]
    pages: jinja2.Environment
    sign_in_limiter: RateLimiter
    signup_client_limiter: RateLimiter
    signup_address_limiter: RateLimiter

    @classmethod
    def build(cls, settings: Settings) -> WebState:
        packaged = jinja2.FileSystemLoader(templates_dir() / "web")
        override = settings.branding.templates
        # NEWSLETTER_TEMPLATES/web/<page> replaces the packaged page of the same name.
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(override / "web"), packaged]) if override else packaged
        env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
        redis_url = settings.redis_url
        return cls(
            settings=settings,
            sessions=session_factory(settings.database_url),
            pages=env,
            sign_in_limiter=RateLimiter("sign-in", SIGN_IN_LIMIT, SIGN_IN_WINDOW, redis_url),
            signup_client_limiter=RateLimiter("signup-client", SIGNUP_CLIENT_LIMIT, SIGNUP_WINDOW, redis_url),
            signup_address_limiter=RateLimiter("signup-address", SIGNUP_ADDRESS_LIMIT, SIGNUP_WINDOW, redis_url),
        )


def state(request: Request) -> WebState:
    """The app's `WebState`."""
    return request.app.state.web  # type: ignore[no-any-return]


def db_session(request: Request) -> Iterator[Session]:
    """A session for one request, closed afterwards."""
    with state(request).sessions() as session:
        yield session


State = Annotated[WebState, Depends(state)]
DB = Annotated[Session, Depends(db_session)]


def page(web: WebState, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/web/<template>`` as an HTML response."""
    return HTMLResponse(web.pages.get_template(template).render(**context), status_code=status_code)
