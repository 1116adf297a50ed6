"""Admin pages: subscriber search and detail (with unsubscribe and GDPR erase)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from newsletter.erasure import erase_subscriber
from newsletter.models import LANGUAGES, Delivery, Issue, SubscriberStatus, Suppression
from newsletter.notice_queue import of_subscriber
from newsletter.subscriber_admin import get_subscriber, search_subscribers
from newsletter.subscribers import unsubscribe
from newsletter.web.admin.common import back, flash, render
from newsletter.web.deps import DB

router = APIRouter()
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
PAGE = 50


@router.get("/subscribers")
def search(
    request: Request,
    session: DB,
    q: Annotated[str, Query(max_length=320)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    lang: Annotated[str, Query(max_length=16)] = "",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    """Search by address or name, status and language."""
    found, total = search_subscribers(session, q, status=status or None, lang=lang or None, limit=PAGE, offset=offset)
    statuses = [s for s in SubscriberStatus if s != SubscriberStatus.ERASED]
    return render(request, "subscribers.html", subscribers=found, total=total, offset=offset, page=PAGE,
                  form={"q": q, "status": status, "lang": lang}, statuses=statuses, languages=LANGUAGES)  # fmt: skip


@router.get("/subscribers/{subscriber_id}")
def detail(request: Request, subscriber_id: Id, session: DB) -> Response:
    """One subscriber: status, language, topics, attributes, suppression, latest deliveries and subscription
    messages (queued ones with their next attempt, failed ones with the relay's answer)."""
    s = get_subscriber(session, subscriber_id)
    if s is None:
        raise HTTPException(404, f"no subscriber {subscriber_id}")
    suppression = session.scalar(select(Suppression).where(Suppression.email == s.email))
    deliveries = session.execute(
        select(Issue.number, Delivery.status, Delivery.lang, Delivery.attempts, Delivery.last_error, Delivery.sent_at)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Delivery.subscriber_id == s.id)
        .order_by(Issue.number.desc())
        .limit(20)
    ).all()
    notices = of_subscriber(session, s.id, limit=20)
    return render(request, "subscriber.html", s=s, suppression=suppression, deliveries=deliveries, notices=notices)


@router.post("/subscribers/{subscriber_id}/unsubscribe")
def unsubscribe_post(request: Request, subscriber_id: Id, session: DB) -> Response:
    """Unsubscribe and suppress the address."""
    if unsubscribe(session, subscriber_id, source="editor") is not None:
        flash(request, "Unsubscribed.")
    return back(f"/admin/subscribers/{subscriber_id}")


@router.post("/subscribers/{subscriber_id}/erase")
def erase_post(request: Request, subscriber_id: Id, session: DB, confirm: Annotated[str, Form()] = "") -> Response:
    """Erase the personal data (GDPR); the form asks to tick a box first."""
    if confirm != "yes":
        flash(request, "Tick the box to erase this subscriber.", "error")
        return back(f"/admin/subscribers/{subscriber_id}")
    if erase_subscriber(session, subscriber_id):
        flash(request, f"Subscriber {subscriber_id} erased; their deliveries stay, anonymised.")
    return back("/admin/subscribers")
