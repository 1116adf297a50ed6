"""Sign-in and sign-out of the admin pages; failed attempts are rate-limited per address and per client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from newsletter.editors import authenticate
from newsletter.web.admin.common import back, render
from newsletter.web.auth import current_user, safe_next, sign_in, sign_out
from newsletter.web.csrf import csrf_protect
from newsletter.web.deps import DB, State

router = APIRouter(dependencies=[Depends(csrf_protect)])


@router.get("/sign-in")
def sign_in_form(request: Request, session: DB, next: str = "/admin") -> Response:
    """The sign-in form (or straight on, when already signed in)."""
    if current_user(request, session) is not None:
        return back(safe_next(next))
    return render(request, "sign_in.html", next=safe_next(next), email="", error=None)


@router.post("/sign-in")
def sign_in_post(
    request: Request,
    web: State,
    session: DB,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/admin",
) -> Response:
    """Check the password; after `SIGN_IN_LIMIT` failures for an address or a client, wait (429)."""
    limiter = web.sign_in_limiter
    keys = [f"user:{email.strip().lower()}", f"ip:{request.client.host if request.client else '-'}"]
    wait = max(limiter.blocked(k) for k in keys)
    if wait:
        minutes = max(1, round(wait / 60))
        error = f"Too many failed attempts: try again in about {minutes} minute{'s' if minutes != 1 else ''}."
        response = render(request, "sign_in.html", 429, next=safe_next(next), email=email, error=error)
        response.headers["Retry-After"] = str(wait)
        return response
    user = authenticate(session, email, password)
    if user is None:
        for key in keys:
            limiter.hit(key)
        return render(request, "sign_in.html", 401, next=safe_next(next), email=email, error="Wrong address or password.")
    limiter.reset(keys[0])
    sign_in(request, user)
    return back(safe_next(next))


@router.post("/sign-out")
def sign_out_post(request: Request) -> Response:
    """End the session."""
    sign_out(request)
    return back("/admin/sign-in")
