"""Web pages: one-click unsubscribe (RFC 8058), preferences, view in browser, health and metrics."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.db import session_factory
from newsletter.models import Subscriber, SubscriberStatus, Suppression
from newsletter.tokens import sign
from newsletter.web import create_app

TOPICS = '{"economy": {"en": "Economy", "zh-Hant": "經濟"}, "security": {"en": "Security", "zh-Hant": "安全"}}'


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def _app(db_url: str, make_settings):  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, NEWSLETTER_TOPICS=TOPICS)
    with session_factory(db_url)() as session:
        session.add(Subscriber(email="ann@example.com", name="Ann", lang="en", topics=["security"], attributes={}))
        session.commit()
        sid = session.scalar(select(Subscriber.id))
    return TestClient(create_app(settings), base_url="https://testserver"), settings, sid  # https: the CSRF cookie is Secure


def test_one_click_unsubscribe(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings, sid = _app(db_url, make_settings)
    token = sign(settings.secret_key, "unsubscribe", sid, 1)
    # GET only asks: link scanners must not unsubscribe anyone.
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and b'<form method="post">' in page.content
    with session_factory(db_url)() as session:
        assert session.get_one(Subscriber, sid).status == SubscriberStatus.ACTIVE
    # The mail client's one-click POST (RFC 8058 section 3.2).
    done = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and b"Unsubscribed" in done.content
    with session_factory(db_url)() as session:
        assert session.get_one(Subscriber, sid).status == SubscriberStatus.UNSUBSCRIBED
        assert session.scalar(select(Suppression.detail).where(Suppression.email == "ann@example.com")) == "one-click"
    assert client.post(f"/unsubscribe/{token}x").status_code == 400
    assert client.post(f"/unsubscribe/{sign(settings.secret_key, 'preferences', sid)}").status_code == 400  # wrong purpose


def test_preferences_page_changes_language_and_topics(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    client, settings, sid = _app(db_url, make_settings)
    token = sign(settings.secret_key, "preferences", sid)
    page = client.get(f"/preferences/{token}")
    assert page.status_code == 200 and "ann@example.com" in page.text
    # Topics are checkboxes with readable labels; the subscriber's own is ticked.
    assert '<input type="checkbox" name="topics" value="security" checked> Security' in page.text
    assert '<input type="checkbox" name="topics" value="economy"> Economy' in page.text
    form = {"csrf_token": _csrf(page.text), "lang": "zh-Hant", "topics": ["economy", "security", "made-up"], "paused": "1"}
    saved = client.post(f"/preferences/{token}", data=form)
    assert saved.status_code == 200 and "已儲存。" in saved.text  # answered in the language just chosen
    assert '<html lang="zh-Hant">' in saved.text and "經濟" in saved.text
    with session_factory(db_url)() as session:
        subscriber = session.get_one(Subscriber, sid)
        assert (subscriber.lang, subscriber.topics, subscriber.paused) == ("zh-Hant", ["economy", "security"], True)
    bad = client.post(f"/preferences/{token}", data={"csrf_token": _csrf(page.text), "lang": "fr"})
    assert bad.status_code == 400
    assert client.get("/preferences/1.0.forged").status_code == 400


def test_health_metrics_and_unknown_edition(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = _app(db_url, make_settings)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/issues/99/en").status_code == 404
    assert b"newsletter_deliveries" in client.get("/metrics").content
