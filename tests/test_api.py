"""The editor API, route by route, on SQLite and PostgreSQL (real SMTP server for test sends and publishing)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from newsletter.db import session_factory
from newsletter.erasure import address_hash
from newsletter.models import Delivery, Issue, Subscriber, SubscriberStatus, Suppression, TestSend, utcnow
from newsletter.runner import follow
from newsletter.testsend import PER_HOUR, TEST_HEADER
from tests.editor_setup import make_site
from tests.smtp_server import SMTPServer

PROBLEM = "application/problem+json"


def test_articles_and_draft_editing(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(db_url))
    c, h = site.client, site.auth

    found = c.get("/api/articles", params={"q": "RANSOMWARE", "lang": "en"}, headers=h).json()
    assert [a["id"] for a in found["items"]] == ["sample-en-09", "sample-en-05", "sample-en-01"] and found["total"] == 3
    zh = c.get("/api/articles", params={"q": "网络安全", "since": "2026-11-18", "until": "2026-11-20"}, headers=h).json()
    assert [a["id"] for a in zh["items"]] == ["sample-zh-Hans-05"]
    assert c.get("/api/articles", params={"category": "climate", "limit": 2}, headers=h).json()["total"] == 6
    bad = c.get("/api/articles", params={"since": "last week"}, headers=h)
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM and "since" in bad.json()["detail"]
    assert c.get("/api/articles/sample-en-01", headers=h).json()["body_html"].startswith("<p>")
    missing = c.get("/api/articles/no/such/id", headers=h)
    assert missing.status_code == 404 and missing.json()["title"] == "Not found"

    body = '{"id": "new-1", "title": "A new article", "body": "Text.", "lang": "en", "published_at": "2026-11-23"}\n{"id": "bad", "lang": "fr"}\n'
    imported = c.post("/api/articles/import", content=body.encode(), headers={**h, "Content-Type": "application/x-ndjson"}).json()
    assert (imported["created"], [(e["line"], e["id"]) for e in imported["errors"]]) == (1, [(2, "bad")])

    created = c.post(
        "/api/issues", json={"articles": ["sample-en-01", "sample-en-02", "sample-zh-Hans-01"], "titles": {"en": "Week 47"}}, headers=h
    )
    # A title for a language the articles give no edition was dropped without a word (edit refuses it)
    foreign = c.post("/api/issues", json={"articles": ["sample-en-01"], "titles": {"zh-Hans": "一周"}}, headers=h)
    assert foreign.status_code == 422 and foreign.json()["errors"][0]["field"] == "titles.zh-Hans", foreign.json()
    assert created.status_code == 201 and created.headers["location"] == f"/api/issues/{created.json()['number']}"
    issue = created.json()
    n = issue["number"]
    assert [(e["lang"], e["converted_from"]) for e in issue["editions"]] == [("en", None), ("zh-Hans", None), ("zh-Hant", "zh-Hans")]
    assert issue["status"] == "draft" and issue["editions"][0]["title"] == "Week 47"

    patched = c.patch(f"/api/issues/{n}", json={"titles": {"zh-Hant": "本週"}, "notes": {"en": "Hello *readers*"}}, headers=h).json()
    assert {e["lang"]: (e["title"], e["editors_note"]) for e in patched["editions"]}["en"] == ("Week 47", "Hello *readers*")
    not_json = c.patch(f"/api/issues/{n}", content=b'{"titles": ', headers={**h, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "body"  # was "0" (a character offset)
    typo = c.patch(f"/api/issues/{n}", json={"tittles": {"en": "x"}}, headers=h)
    assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "tittles"
    empty = c.patch(f"/api/issues/{n}", json={"titles": {"en": " "}}, headers=h)
    assert empty.status_code == 422 and empty.json()["errors"] == [{"field": "titles.en", "detail": "the en title is empty"}]
    segment = c.patch(f"/api/issues/{n}", json={"segment": {"topics": {"some": ["x"]}}}, headers=h)
    assert segment.status_code == 422 and segment.json()["errors"][0]["field"].startswith("segment.topics")
    # Regression (trial): the titles of a PATCH whose segment was refused were stored behind the 422.
    half = c.patch(f"/api/issues/{n}", json={"titles": {"en": "Half done"}, "segment": {"languages": ["fr"]}}, headers=h)
    assert half.status_code == 422 and half.json()["errors"][0]["field"] == "segment.languages", half.json()
    assert [e["title"] for e in c.get(f"/api/issues/{n}", headers=h).json()["editions"] if e["lang"] == "en"] == ["Week 47"]

    added = c.post(f"/api/issues/{n}/articles", json={"articles": ["sample-en-03"], "position": 0}, headers=h).json()
    assert [a["id"] for a in added["articles"]] == ["sample-en-03", "sample-en-01", "sample-en-02", "sample-zh-Hans-01"]
    twice = c.post(f"/api/issues/{n}/articles", json={"articles": ["sample-en-01"]}, headers=h)
    assert twice.status_code == 422 and twice.json()["errors"][0]["field"] == "articles"
    order = ["sample-zh-Hans-01", "sample-en-02", "sample-en-01", "sample-en-03"]
    assert [a["id"] for a in c.put(f"/api/issues/{n}/articles", json={"articles": order}, headers=h).json()["articles"]] == order
    removed = c.delete(f"/api/issues/{n}/articles/sample-zh-Hans-01", headers=h).json()
    assert [e["lang"] for e in removed["editions"]] == ["en"]  # the Chinese editions went with their last article
    gone = c.patch(f"/api/issues/{n}", json={"titles": {"zh-Hans": "x"}}, headers=h)
    assert gone.status_code == 422 and gone.json()["errors"][0]["field"] == "titles.zh-Hans"
    assert [a["id"] for a in c.get(f"/api/issues/{n}", headers=h).json()["articles"]] == ["sample-en-02", "sample-en-01", "sample-en-03"]

    html = c.get(f"/api/issues/{n}/preview/en", headers=h)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html") and "Hello <em>readers</em>" in html.text
    assert "@@NL_" not in html.text and "preview@example.org" in html.text
    text = c.get(f"/api/issues/{n}/preview/en", params={"format": "text"}, headers=h)
    assert text.headers["content-type"].startswith("text/plain") and "Coastal states agree" in text.text
    assert c.get(f"/api/issues/{n}/preview/zh-Hans", headers=h).status_code == 422  # no such edition now

    assert [i["number"] for i in c.get("/api/issues", headers=h).json()] == [n]
    other = c.post("/api/issues", json={}, headers=h).json()
    assert other["editions"] == [] and other["number"] == n + 1
    assert c.delete(f"/api/issues/{other['number']}", headers=h).status_code == 204
    assert c.get(f"/api/issues/{other['number']}", headers=h).json()["status"] == 404
    taken = c.post("/api/issues", json={"number": n}, headers=h)
    assert taken.status_code == 409 and taken.json()["errors"][0]["field"] == "number"


def test_a_new_zh_hans_title_and_note_reach_the_converted_zh_hant_edition(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c, h = site.client, site.auth
    body = {"articles": ["sample-zh-Hans-01"], "titles": {"zh-Hans": "软件周报"}, "notes": {"zh-Hans": "软件与网络的编者按"}}
    n = c.post("/api/issues", json=body, headers=h).json()["number"]
    patched = c.patch(f"/api/issues/{n}", json={"titles": {"zh-Hans": "信息周报"}, "notes": {"zh-Hans": "新的编者按：信息"}}, headers=h)
    hant = {e["lang"]: e for e in patched.json()["editions"]}["zh-Hant"]
    assert (hant["title"], hant["editors_note"], hant["converted_from"]) == ("資訊週報", "新的編者按：資訊", "zh-Hans")


def test_test_send_publish_control_and_status(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    with SMTPServer() as smtp:
        settings = make_settings(db_url, SMTP_URL=smtp.url)
        site = make_site(settings)
        c, h = site.client, site.auth
        n = c.post("/api/issues", json={"articles": ["sample-en-01", "sample-zh-Hans-01"]}, headers=h).json()["number"]

        sent = c.post(f"/api/issues/{n}/test-send", json={"lang": "zh-Hant", "addresses": ["me@example.org", "you@EXAMPLE.org"]}, headers=h)
        assert sent.status_code == 200, sent.text
        assert sorted(sent.json()["sent"]) == ["me@example.org", "you@example.org"] and sent.json()["subject"].startswith("[TEST] ")
        assert len(smtp.recorder.messages) == 2
        message = smtp.recorder.messages[0]
        assert message[TEST_HEADER] == "yes" and str(message["Subject"]).startswith("[TEST] 本週要聞")
        with session_factory(db_url)() as session:
            assert session.scalar(select(func.count()).select_from(Delivery)) == 0  # never in the ledger
            assert session.scalar(select(TestSend.sent_by)) == "token:tests"
        invalid = c.post(f"/api/issues/{n}/test-send", json={"addresses": ["not an address"]}, headers=h)
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "addresses"

        audience = c.get(f"/api/issues/{n}/audience", headers=h).json()
        assert audience == {"recipients": 3, "by_edition": {"en": 1, "zh-Hans": 1, "zh-Hant": 1}, "no_edition": 0}
        unconfirmed = c.post(f"/api/issues/{n}/publish", json={}, headers=h)
        assert unconfirmed.status_code == 409 and unconfirmed.json()["recipients"] == 3
        assert unconfirmed.json()["type"].endswith("confirmation-required") and unconfirmed.json()["errors"][0]["field"] == "confirm"
        uncounted = c.post(f"/api/issues/{n}/publish", json={"confirm": True}, headers=h)  # was 202: the count went unchecked
        assert uncounted.status_code == 422 and uncounted.json()["errors"][0]["field"] == "recipients"
        assert f"GET /api/issues/{n}/audience first" in uncounted.json()["detail"]
        stale = c.post(f"/api/issues/{n}/publish", json={"confirm": True, "recipients": 2}, headers=h)
        assert stale.status_code == 409 and "not 2" in stale.json()["detail"]
        with session_factory(db_url)() as session:
            assert session.scalar(select(Issue.status).where(Issue.number == n)) == "draft"  # nothing happened yet
        published = c.post(f"/api/issues/{n}/publish", json={"confirm": True, "recipients": 3}, headers=h)
        assert published.status_code == 202 and published.json()["recipients"] == 3
        with session_factory(db_url)() as session:
            issue_id = session.scalar(select(Issue.id).where(Issue.number == n))
        assert follow(settings, issue_id, timeout=60).status == "sent"
        status = c.get(f"/api/issues/{n}/status", headers=h).json()
        assert (status["status"], status["total"], status["final"], status["by_state"]) == ("sent", 3, 3, {"sent": 3})
        assert {(x["state"], x["lang"]) for x in status["counts"]} == {("sent", "en"), ("sent", "zh-Hans"), ("sent", "zh-Hant")}
        assert status["by_relay"][0]["relay"].startswith("127.0.0.1:")
        assert len(smtp.recorder.messages) == 5

        again = c.post(f"/api/issues/{n}/publish", json={"confirm": True, "recipients": 3}, headers=h)
        assert again.status_code == 409 and "already sent" in again.json()["detail"]
        for action in ("pause", "resume"):
            assert c.post(f"/api/issues/{n}/{action}", headers=h).status_code == 409
        assert c.post(f"/api/issues/{n}/requeue", headers=h).json()["detail"] == "0 failed deliveries queued again"
        assert c.put(f"/api/issues/{n}/schedule", json={"at": "2099-01-01T09:00:00+08:00"}, headers=h).status_code == 409
        assert c.delete(f"/api/issues/{n}/schedule", headers=h).status_code == 409
        assert c.delete(f"/api/issues/{n}", headers=h).status_code == 409  # a sent issue is the record of what was sent
        assert c.post(f"/api/issues/{n}/cancel", headers=h).status_code == 409

        # Schedule, unschedule, pause and cancel on a second issue.
        m = c.post("/api/issues", json={"articles": ["sample-en-02"]}, headers=h).json()["number"]
        naive = c.put(f"/api/issues/{m}/schedule", json={"at": "2099-01-01T09:00:00"}, headers=h)
        assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "at"
        at = utcnow() + timedelta(days=1)
        scheduled = c.put(f"/api/issues/{m}/schedule", json={"at": at.isoformat()}, headers=h)
        assert scheduled.json()["status"] == "scheduled"
        assert scheduled.json()["detail"] == f"scheduled for {at:%Y-%m-%d %H:%M} UTC", scheduled.json()  # as the CLI says it
        assert c.patch(f"/api/issues/{m}", json={"titles": {"en": "x"}}, headers=h).status_code == 409  # unschedule first
        assert c.delete(f"/api/issues/{m}/schedule", headers=h).json()["status"] == "draft"
        assert c.post(f"/api/issues/{m}/pause", headers=h).status_code == 409
        assert c.post(f"/api/issues/{m}/cancel", headers=h).json()["status"] == "cancelled"

        # The hourly test-send quota.
        with session_factory(db_url)() as session:
            session.add_all(TestSend(issue_id=issue_id, lang="en", email="x@example.org", sent_by="cli") for _ in range(PER_HOUR))
            session.commit()
        limited = c.post(f"/api/issues/{n}/test-send", json={"addresses": ["me@example.org"]}, headers=h)
        assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 3600
        assert len(smtp.recorder.messages) == 5


def test_subscribers_segments_and_erasure(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url)
    site = make_site(settings)
    c, h = site.client, site.auth

    page = c.get("/api/subscribers", params={"q": "EXAMPLE.com", "limit": 2}, headers=h).json()
    assert (page["total"], [s["email"] for s in page["items"]]) == (3, ["ann@example.com", "bo@example.com"])
    assert c.get("/api/subscribers", params={"lang": "zh-Hant"}, headers=h).json()["items"][0]["email"] == "cy@example.com"
    new = c.post("/api/subscribers", json={"email": "Dee@Example.COM", "name": "Dee", "lang": "zh-TW", "topics": ["b", "a"]}, headers=h)
    assert new.status_code == 201 and (new.json()["email"], new.json()["lang"], new.json()["topics"]) == (
        "Dee@example.com",
        "zh-Hant",
        ["a", "b"],
    )
    dee = new.json()["id"]
    assert c.post("/api/subscribers", json={"email": "dee@example.com"}, headers=h).status_code == 201  # local parts are case-sensitive
    duplicate = c.post("/api/subscribers", json={"email": "Dee@example.com"}, headers=h)
    assert duplicate.status_code == 409 and duplicate.json()["errors"][0]["field"] == "email"
    invalid = c.post("/api/subscribers", json={"email": "nobody"}, headers=h)
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "email"
    patched = c.patch(f"/api/subscribers/{dee}", json={"name": "Dee Dee", "attributes": {"plan": "pro", "seats": 3}}, headers=h).json()
    assert (patched["name"], patched["attributes"]) == ("Dee Dee", {"plan": "pro", "seats": 3})
    bad_attr = c.patch(f"/api/subscribers/{dee}", json={"attributes": {"1bad": "x"}}, headers=h)
    assert bad_attr.status_code == 422 and bad_attr.json()["errors"][0]["field"] == "attributes.1bad"

    preview = c.post("/api/segments/preview", json={"rule": {"attributes": {"plan": "pro"}}}, headers=h).json()
    assert preview["count"] == 2 and {s["email"] for s in preview["sample"]} == {"ann@example.com", "Dee@example.com"}
    wrong = c.post("/api/segments/preview", json={"rule": {"languages": "en"}}, headers=h)
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "segment.languages"

    unsub = c.post(f"/api/subscribers/{dee}/unsubscribe", headers=h).json()
    assert (unsub["status"], unsub["suppressed"]) == ("unsubscribed", "unsubscribe")
    csv_text = c.get("/api/subscribers/export", headers=h)
    assert csv_text.headers["content-type"].startswith("text/csv")
    lines = csv_text.text.splitlines()
    assert lines[0] == "email,name,lang,topics,status,signed_up,plan,seats" and len(lines) == 6
    assert "Dee@example.com,Dee Dee,zh-Hant,a;b,unsubscribed," in csv_text.text

    # A delivery to Dee, to see it anonymised and still counted.
    with session_factory(db_url)() as session:
        issue = Issue(number=50, status="sent")
        session.add(issue)
        session.flush()
        session.add(Delivery(issue_id=issue.id, subscriber_id=dee, lang="zh-Hant", email="Dee@example.com", status="failed",
                             message_id="<m@x>", last_error="550 5.1.1 <Dee@example.com>: no such user"))  # fmt: skip
        session.commit()
    detail = c.get(f"/api/subscribers/{dee}", headers=h).json()
    assert detail["deliveries"][0]["issue"] == 50
    assert c.delete(f"/api/subscribers/{dee}", headers=h).status_code == 204
    assert c.get(f"/api/subscribers/{dee}", headers=h).status_code == 404
    assert c.delete(f"/api/subscribers/{dee}", headers=h).status_code == 404
    with session_factory(db_url)() as session:
        erased = session.get_one(Subscriber, dee)
        assert (erased.status, erased.name, erased.attributes, erased.topics) == (SubscriberStatus.ERASED, "", {}, [])
        delivery = session.scalar(select(Delivery).where(Delivery.subscriber_id == dee))
        assert delivery.email == erased.email == f"erased-{dee}@erased.invalid" and "Dee@example.com" not in (delivery.last_error or "")
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1  # counts intact
        assert session.scalar(select(Suppression.email).where(Suppression.reason == "unsubscribe")) == address_hash("Dee@example.com")
        assert session.scalar(select(Suppression.id).where(Suppression.email == "Dee@example.com")) is None
    refused = c.post("/api/subscribers", json={"email": "Dee@example.com"}, headers=h)
    assert refused.status_code == 422 and "opted out" in refused.json()["detail"]
    # An address that was never suppressed leaves nothing behind.
    bo = c.get("/api/subscribers", params={"q": "bo@"}, headers=h).json()["items"][0]["id"]
    assert c.delete(f"/api/subscribers/{bo}", headers=h).status_code == 204
    assert c.post("/api/subscribers", json={"email": "bo@example.com"}, headers=h).status_code == 201
    assert "Dee" not in c.get("/api/subscribers/export", headers=h).text


def test_publish_with_the_broker_down_is_a_503_and_changes_nothing(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.smtp_server import free_port

    site = make_site(make_settings(sqlite_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    c, h = site.client, site.auth
    n = c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=h).json()["number"]
    down = c.post(f"/api/issues/{n}/publish", json={"confirm": True, "recipients": 1}, headers=h)
    assert down.status_code == 503 and down.headers["content-type"] == PROBLEM and down.headers["retry-after"] == "30"
    assert "cannot reach the broker" in down.json()["detail"]
    assert c.get(f"/api/issues/{n}", headers=h).json()["status"] == "draft"


def test_a_publish_that_loses_the_race_is_a_409(pg_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression: of two publish POSTs at once, the second got "422 Invalid input: issue 2 is already being
    published"; it is a conflict with the issue's state (409). On PostgreSQL, the other publish holds the
    issue's row (its UPDATE not yet committed) while this one runs its checks; it commits once this one
    waits on the row, and this one's conditional UPDATE then finds the issue publishing."""
    import threading

    from sqlalchemy import create_engine, text, update

    site = make_site(make_settings(pg_url))
    c, h = site.client, site.auth
    n = c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=h).json()["number"]
    recipients = c.get(f"/api/issues/{n}/audience", headers=h).json()["recipients"]
    engine = create_engine(pg_url)
    answer: list = []
    with engine.connect() as other, engine.connect() as watch:
        other.execute(update(Issue).where(Issue.number == n).values(status="publishing"))  # the first publish, uncommitted
        post = threading.Thread(
            target=lambda: answer.append(c.post(f"/api/issues/{n}/publish", json={"confirm": True, "recipients": recipients}, headers=h))
        )
        post.start()
        waiting = "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
        for _ in range(200):
            if watch.execute(text(waiting)).scalar() or not post.is_alive():
                break
            watch.rollback()
            post.join(0.05)
        other.commit()
        post.join(30)
    engine.dispose()
    [lost] = answer
    assert lost.status_code == 409 and lost.headers["content-type"] == PROBLEM, lost.text
    assert lost.json()["detail"] == f"issue {n} is already being published (publishing)"


def test_a_bad_link_in_a_note_names_the_field(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression: a `javascript:` link in an editor's note gave a 422 without `errors[].field` (the README
    promises the field at fault)."""
    site = make_site(make_settings(sqlite_url))
    c, h = site.client, site.auth
    note = {"en": "Read [this](javascript:alert(1))."}
    created = c.post("/api/issues", json={"articles": ["sample-en-01"], "notes": note}, headers=h)
    assert created.status_code == 422 and created.json()["errors"][0]["field"] == "notes.en", created.json()
    n = c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=h).json()["number"]
    patched = c.patch(f"/api/issues/{n}", json={"notes": note}, headers=h)
    assert patched.status_code == 422 and patched.json()["errors"][0]["field"] == "notes.en", patched.json()
    assert "editor's note (en): " in patched.json()["errors"][0]["detail"]
