"""What the admin pages share: rendering a page with its CSRF token and flash messages, redirects."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from newsletter.web.csrf import csrf_token
from newsletter.web.deps import state


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """Show ``message`` on the next page this browser renders (``kind``: ok or error)."""
    request.session.setdefault("flash", []).append([kind, message])
    request.session["flash"] = request.session["flash"][-5:]


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/web/admin/<template>`` with the user, CSRF token and pending flash messages."""
    messages = request.session.pop("flash", []) if "session" in request.scope else []
    html = (
        state(request)
        .pages.get_template(f"admin/{template}")
        .render(request=request, user=getattr(request.state, "user", None), csrf=csrf_token(request), flashes=messages, **context)
    )
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def is_htmx(request: Request) -> bool:
    """The request came from htmx (it wants a fragment, not a page)."""
    return bool(request.headers.get("hx-request"))


def back(url: str) -> Response:
    """303 See Other to ``url`` (after a form POST, so reloading does not post again)."""
    return RedirectResponse(url, status_code=303)
