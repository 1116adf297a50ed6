"""The admin pages under ``/admin``: server-rendered Jinja2 with htmx, no front-end build step.

Every page but sign-in needs a signed-in editor (`newsletter users create EMAIL`) and every form a
CSRF token. Templates live in ``templates/web/admin/``; htmx and the page script in ``web/static/``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import RedirectResponse

from newsletter.web.admin import issues, sending, signin, subscribers
from newsletter.web.auth import require_user
from newsletter.web.csrf import csrf_protect

router = APIRouter(prefix="/admin", include_in_schema=False)
router.include_router(signin.router)
_signed_in = APIRouter(dependencies=[Depends(require_user), Depends(csrf_protect)])
for module in (issues, sending, subscribers):
    _signed_in.include_router(module.router)
_signed_in.add_api_route("/", lambda: RedirectResponse("/admin/issues", status_code=303), methods=["GET"], name="admin_home")
router.include_router(_signed_in)
