"""API: subscribers — search, one, add, update, unsubscribe, export as CSV, erase (GDPR)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from newsletter.db import session_factory
from newsletter.erasure import erase_subscriber
from newsletter.models import Delivery, Issue, Subscriber, SubscriberStatus, Suppression
from newsletter.subscriber_admin import add_subscriber, export_csv, get_subscriber, search_subscribers, update_subscriber
from newsletter.subscribers import unsubscribe
from newsletter.web.api.schemas import (
    DeliveryOut,
    Lang,
    SubscriberDetail,
    SubscriberIn,
    SubscriberOut,
    SubscriberPage,
    SubscriberPatch,
)
from newsletter.web.deps import DB, State

router = APIRouter(prefix="/subscribers", tags=["subscribers"])
Id = Annotated[int, Path(ge=1, le=2**31 - 1, description="the subscriber id")]


def _found(session: DB, subscriber_id: int) -> Subscriber:
    subscriber = get_subscriber(session, subscriber_id)
    if subscriber is None:
        raise HTTPException(404, f"no subscriber {subscriber_id}")
    return subscriber


def _suppressed(session: DB, s: Subscriber) -> str | None:
    return session.scalar(select(Suppression.reason).where(Suppression.email == s.email))


@router.get("", response_model=SubscriberPage)
def search(
    session: DB,
    q: Annotated[str | None, Query(max_length=320, description="text in the address or name")] = None,
    status: SubscriberStatus | None = None,
    lang: Lang | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SubscriberPage:
    """Search subscribers by address or name, status and language (id order)."""
    page, total = search_subscribers(session, q, status=status, lang=lang, limit=limit, offset=offset)
    return SubscriberPage(items=[SubscriberOut.of(s, _suppressed(session, s)) for s in page], total=total, limit=limit, offset=offset)


@router.post("", response_model=SubscriberOut, status_code=201)
def add(body: SubscriberIn, session: DB, response: Response) -> SubscriberOut:
    """Add one subscriber (the editor vouches for their consent)."""
    s = add_subscriber(session, body.email, name=body.name, lang=body.lang, topics=body.topics, attributes=body.attributes,
                       status=SubscriberStatus(body.status))  # fmt: skip
    response.headers["Location"] = f"/api/subscribers/{s.id}"
    return SubscriberOut.of(s)


@router.get("/export", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def export(web: State) -> StreamingResponse:
    """The whole list as CSV (the columns ``subscribers import`` reads, plus status and attributes)."""

    def rows():  # type: ignore[no-untyped-def]
        with session_factory(web.settings.database_url)() as session:  # outlives the request's session
            yield from export_csv(session)

    headers = {"Content-Disposition": 'attachment; filename="subscribers.csv"'}
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/{subscriber_id}", response_model=SubscriberDetail)
def get(subscriber_id: Id, session: DB) -> SubscriberDetail:
    """One subscriber with their 20 latest deliveries."""
    s = _found(session, subscriber_id)
    rows = session.execute(
        select(Issue.number, Delivery.status, Delivery.lang, Delivery.attempts, Delivery.last_error, Delivery.sent_at)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Delivery.subscriber_id == s.id)
        .order_by(Issue.number.desc())
        .limit(20)
    )
    deliveries = [DeliveryOut(issue=n, status=str(st), lang=lang, attempts=a, error=e, sent_at=at) for n, st, lang, a, e, at in rows]
    return SubscriberDetail(**SubscriberOut.of(s, _suppressed(session, s)).model_dump(), deliveries=deliveries)


@router.patch("/{subscriber_id}", response_model=SubscriberOut)
def update(subscriber_id: Id, body: SubscriberPatch, session: DB) -> SubscriberOut:
    """Change name, language, topics or attributes."""
    s = update_subscriber(session, _found(session, subscriber_id), name=body.name, lang=body.lang, topics=body.topics,
                          attributes=body.attributes)  # fmt: skip
    return SubscriberOut.of(s, _suppressed(session, s))


@router.post("/{subscriber_id}/unsubscribe", response_model=SubscriberOut)
def unsubscribe_one(subscriber_id: Id, session: DB) -> SubscriberOut:
    """Unsubscribe and suppress the address (as the subscriber's own link would)."""
    _found(session, subscriber_id)
    s = unsubscribe(session, subscriber_id, source="editor")
    assert s is not None
    return SubscriberOut.of(s, _suppressed(session, s))


@router.delete("/{subscriber_id}", status_code=204)
def erase(subscriber_id: Id, session: DB) -> Response:
    """Erase the subscriber's personal data (GDPR Art. 17). Their deliveries stay, anonymised, so issue
    counts do not change; a suppressed address stays suppressed only as a hash."""
    _found(session, subscriber_id)
    erase_subscriber(session, subscriber_id)
    return Response(status_code=204)
