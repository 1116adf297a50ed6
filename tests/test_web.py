"""Web pages: one-click unsubscribe (RFC 8058), preferences, view in browser, health and metrics."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select, update

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
    # A bare POST (`curl -X POST`, a prefetcher) carries neither the one-click body nor the page's form
    # token: it unsubscribed; now a 400 page says what is missing and nothing changes. So does a wrong body.
    for body in (None, {"List-Unsubscribe": "Yes"}, {"scope": "all"}):
        bare = client.post(f"/unsubscribe/{token}", data=body)
        assert bare.status_code == 400 and "List-Unsubscribe=One-Click (RFC 8058)" in bare.text, bare.text
        assert "Nothing was changed" in bare.text
    forged = client.post(f"/unsubscribe/{token}", data={"csrf_token": "forged", "scope": "all"})
    assert forged.status_code == 403
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


def test_one_click_unsubscribe_as_multipart_and_the_page_button(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Some mail clients send the one-click body as multipart/form-data; the page's own button sends the
    form's CSRF token (the page said forms carry one; this one did not)."""
    client, settings, sid = _app(db_url, make_settings)
    token = sign(settings.secret_key, "unsubscribe", sid, 1)
    cookieless = TestClient(client.app, base_url="https://testserver")  # a mail client: no cookie, no page first
    done = cookieless.post(f"/unsubscribe/{token}", files={"List-Unsubscribe": (None, "One-Click")})
    assert done.status_code == 200 and b"Unsubscribed" in done.content, done.text
    with session_factory(db_url)() as session:
        assert session.get_one(Subscriber, sid).status == SubscriberStatus.UNSUBSCRIBED
        session.execute(update(Subscriber).values(status=SubscriberStatus.ACTIVE))
        session.commit()
    page = client.get(f"/unsubscribe/{token}")
    assert '<input type="hidden" name="csrf_token"' in page.text
    left = client.post(f"/unsubscribe/{token}", data={"csrf_token": _csrf(page.text), "scope": "all"})
    assert left.status_code == 200 and "You will not receive further issues." in left.text
    with session_factory(db_url)() as session:
        assert session.get_one(Subscriber, sid).status == SubscriberStatus.UNSUBSCRIBED


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
    # Embedded: no broker to check, said as such ("ok" read as if Redis had answered).
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "broker": "none"}
    assert client.get("/issues/99/en").status_code == 404
    assert b"newsletter_deliveries" in client.get("/metrics").content


def test_with_redis_unreachable_the_site_still_serves_and_says_degraded(sqlite_url: str, make_settings, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    from newsletter.web.deps import SIGNUP_ADDRESS_LIMIT
    from tests.editor_setup import csrf_of, make_site
    from tests.smtp_server import free_port

    caplog.set_level(logging.WARNING)
    site = make_site(make_settings(sqlite_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there
    c = site.client
    # Sign-up and sign-in were 500 (the rate limiter raised); they count in this process instead, same limits.
    answers = [c.post("/subscriptions", json={"email": "new@example.com"}).status_code for _ in range(SIGNUP_ADDRESS_LIMIT + 1)]
    assert answers == [202] * (SIGNUP_ADDRESS_LIMIT + 1)  # the per-address limit answers alike (and sends nothing)
    page = c.get("/admin/sign-in")
    wrong = c.post("/admin/sign-in", data={"email": "editor@example.org", "password": "wrong", "csrf_token": csrf_of(page.text)})
    assert wrong.status_code == 401 and "Wrong address or password." in wrong.text
    limiter_warnings = [r for r in caplog.records if r.name == "newsletter.web.ratelimit"]
    assert len(limiter_warnings) == 1 and "counting in this process" in limiter_warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]  # no traceback per request

    metrics = c.get("/metrics")
    assert metrics.status_code == 200 and "newsletter_deliveries" in metrics.text and "newsletter_broker_up 0.0" in metrics.text
    assert "newsletter_queue_depth" not in metrics.text
    health = c.get("/healthz")
    # 200: pages are still served; the body tells monitoring what is missing.
    assert health.status_code == 200 and health.json() == {"status": "degraded", "database": "ok", "broker": "degraded"}


def test_health_is_503_when_the_database_does_not_answer(tmp_path, make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.smtp_server import free_port

    settings = make_settings(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    health = TestClient(create_app(settings)).get("/healthz")
    assert health.status_code == 503 and health.json() == {"status": "degraded", "database": "degraded", "broker": "none"}


def test_an_unexpected_error_is_answered_and_logged_once(sqlite_url: str, make_settings, caplog) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(sqlite_url))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    # The default TestClient re-raises what escapes the app, as uvicorn logs it ("Exception in ASGI application").
    answer = TestClient(app).get("/boom")
    assert answer.status_code == 500 and answer.json()["detail"] == "an unexpected error occurred; it was logged"
    assert "x-content-type-options" in answer.headers  # it now passes through the security headers too
    assert [r.name for r in caplog.records if r.exc_info] == ["newsletter.web.problems"]
