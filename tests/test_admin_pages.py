"""Admin pages without a browser: every page renders, the forms do what they say, frames may only be framed here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from newsletter.db import session_factory
from newsletter.models import Issue, Subscriber, SubscriberStatus
from newsletter.runner import follow
from tests.editor_setup import csrf_of, make_site, sign_in


def test_pages_render_and_forms_work(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(sqlite_url)
    site = make_site(settings)
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-en-01", "sample-zh-Hans-01"]}, headers=site.auth)
    sign_in(c)
    token = csrf_of(c.get("/admin/issues").text)
    hx = {"HX-Request": "true", "X-CSRF-Token": token}

    for path in ("/admin/issues", "/admin/issues/1", "/admin/issues/1?q=grid&lang=en", "/admin/issues/1/preview", "/admin/issues/1/publish",
                 "/admin/issues/1/progress", "/admin/subscribers", "/admin/subscribers?q=ann&status=active", "/admin/subscribers/1"):  # fmt: skip
        page = c.get(path)
        assert page.status_code == 200 and "<script>" not in page.text, path
    results = c.get("/admin/issues/1/search", params={"q": "flood"}, headers=hx)
    assert results.text.startswith('<div id="search-results">') and "sample-en-02" in results.text
    frame = c.get("/admin/issues/1/preview/zh-Hant")
    assert "frame-ancestors 'self'" in frame.headers["content-security-policy"] and frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "script-src" not in frame.headers["content-security-policy"] and "多地啟動" in frame.text
    assert c.get("/admin/issues/1/preview/zh-Hant", params={"format": "text"}).text.startswith("Subject: ")
    assert "cannot be shown" in c.get("/admin/issues/1/preview/fr").text

    # Article list changes answer with the list fragment for htmx.
    added = c.post("/admin/issues/1/articles", data={"article": "sample-en-02"}, headers=hx)
    assert added.text.startswith('<div id="issue-articles">') and added.text.count("<li draggable") == 3
    # The search results shown beside stop offering "Add" for it (out-of-band swap of its row's cell).
    row = next(tr for tr in results.text.split("<tr>") if "sample-en-02" in tr).split('<td id="')[1].split('"')[0]
    assert f'hx-swap-oob="innerHTML:#{row}"><span class="meta">in the issue</span>' in added.text
    twice = c.post("/admin/issues/1/articles", data={"article": "sample-en-02"}, headers=hx)
    assert twice.status_code == 422 and "appears twice" in twice.text
    moved = c.post("/admin/issues/1/articles/order", data={"order": "sample-en-02\nsample-zh-Hans-01\nsample-en-01"}, headers=hx)
    assert moved.text.index("sample-en-02") < moved.text.index("sample-en-01")
    stale = c.post("/admin/issues/1/articles/order", data={"order": "sample-en-02"}, headers=hx)
    assert "changed meanwhile" in stale.text
    c.post("/admin/issues/1/articles/remove", data={"article": "sample-en-02", "csrf_token": token})
    saved = c.post("/admin/issues/1/editions/en", data={"title": "Week 48", "note": "Hi", "csrf_token": token})
    assert "The en edition is saved." in saved.text and 'value="Week 48"' in saved.text
    bad_rule = c.post("/admin/issues/1/segment", data={"rule": '{"languages": "en"}', "csrf_token": token})
    assert "Audience not saved" in bad_rule.text

    # Publishing: the count on the form must still hold.
    stale_count = c.post("/admin/issues/1/publish", data={"recipients": "7", "confirm": "yes", "csrf_token": token})
    assert stale_count.status_code == 409 and "would now go to 3 subscribers, not 7" in stale_count.text
    unticked = c.post("/admin/issues/1/publish", data={"recipients": "3", "csrf_token": token})
    assert unticked.status_code == 409
    done = c.post("/admin/issues/1/publish", data={"recipients": "3", "confirm": "yes", "csrf_token": token})
    assert done.url.path == "/admin/issues/1/progress" and "is being published to 3 subscribers" in done.text
    with session_factory(sqlite_url)() as session:
        issue_id = session.scalar(select(Issue.id))
    assert follow(settings, issue_id, timeout=60).status == "sent"
    progress = c.get("/admin/issues/1/progress", headers=hx)
    assert 'hx-trigger="every 1s"' not in progress.text and '<tr data-state="sent">' in progress.text  # final: polling stops
    assert "only a publishing or sending issue can be paused" in c.post("/admin/issues/1/pause", data={"csrf_token": token}).text

    # Drafts are deleted only with the box ticked.
    c.post("/admin/issues", data={"confirm": "yes", "csrf_token": token})
    assert "Tick the box" in c.post("/admin/issues/2/delete", data={"csrf_token": token}).text
    assert "Issue 2 deleted." in c.post("/admin/issues/2/delete", data={"confirm": "yes", "csrf_token": token}).text

    # Subscribers: unsubscribe and erase.
    assert "Unsubscribed." in c.post("/admin/subscribers/2/unsubscribe", data={"csrf_token": token}).text
    assert "Tick the box" in c.post("/admin/subscribers/2/erase", data={"csrf_token": token}).text
    assert "erased" in c.post("/admin/subscribers/2/erase", data={"confirm": "yes", "csrf_token": token}).text
    assert c.get("/admin/subscribers/2").status_code == 404
    with session_factory(sqlite_url)() as session:
        assert session.get_one(Subscriber, 2).status == SubscriberStatus.ERASED


def test_an_admin_address_that_names_no_page_is_an_html_page_not_json(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c = site.client
    sign_in(c)
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    for path, status, said in (
        ("/admin/issues/99", 404, "no issue number 99"),
        ("/admin/issues/latest", 422, "/admin/issues/latest is not an address"),
    ):
        page = c.get(path, headers=browser)
        assert (page.status_code, page.headers["content-type"]) == (status, "text/html; charset=utf-8"), path
        assert "<title>No such page · newsletter admin</title>" in page.text and said in page.text
        assert '<a href="/admin/issues">Back to the issue list</a>' in page.text
        assert 'href="/admin/subscribers"' in page.text  # the admin layout, with its navigation
    api = c.get("/api/issues/99", headers={**site.auth, **browser})  # the API keeps problem details
    assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"


def test_search_results_leave_out_a_missing_category(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c = site.client
    line = '{"id": "no-category", "title": "无分类的文章", "body": "正文。", "lang": "zh-Hans", "published_at": "2024-12-31"}\n'
    c.post("/api/articles/import", content=line.encode(), headers={**site.auth, "Content-Type": "application/x-ndjson"})
    c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=site.auth)
    sign_in(c)
    hx = {"HX-Request": "true", "X-CSRF-Token": csrf_of(c.get("/admin/issues").text)}
    results = c.get("/admin/issues/1/search", params={"q": "无分类"}, headers=hx).text
    assert '<span class="meta">zh-Hans · 2024-12-31 · <code>no-category</code>' in results  # was "zh-Hans ·  · 2024-12-31"
    # Regression (trial): an offset past the database's integers in the editor's URL answered 500.
    far = c.get("/admin/issues/1", params={"q": "无分类", "offset": "99999999999999999999"})
    assert far.status_code == 200 and "no-category" not in far.text.split('id="search-results"')[-1]


def test_saving_the_zh_hans_edition_converts_the_zh_hant_one_again(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-zh-Hans-01"], "titles": {"zh-Hans": "软件周报"}}, headers=site.auth)
    sign_in(c)
    token = csrf_of(c.get("/admin/issues/1").text)
    c.post("/admin/issues/1/editions/zh-Hans", data={"title": "信息周报", "note": "新的编者按：信息", "csrf_token": token})
    editions = {e["lang"]: e for e in c.get("/api/issues/1", headers=site.auth).json()["editions"]}
    assert (editions["zh-Hant"]["title"], editions["zh-Hant"]["editors_note"]) == ("資訊週報", "新的編者按：資訊")  # was 軟體週報 and ""


def test_a_refused_save_shows_the_editor_what_they_typed(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): a refused edition or audience save redirected to the editor, which showed the stored
    title, note and rule: the text just written was gone. Now the editor comes back (422) with it."""
    site = make_site(make_settings(sqlite_url))
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-en-01"], "titles": {"en": "Stored title"}}, headers=site.auth)
    sign_in(c)
    token = csrf_of(c.get("/admin/issues/1").text)
    note = "A long note I wrote <em>by hand</em> [x](javascript:alert(1))"
    refused = c.post("/admin/issues/1/editions/en", data={"title": "My new title", "note": note, "csrf_token": token})
    assert refused.status_code == 422 and "javascript: URL" in refused.text
    assert 'value="My new title"' in refused.text and "A long note I wrote &lt;em&gt;by hand&lt;/em&gt;" in refused.text
    assert [e["title"] for e in c.get("/api/issues/1", headers=site.auth).json()["editions"]] == ["Stored title"]
    rule = '{"languages": ["fr"], "topics": {"any": ["grid"]}}'
    refused = c.post("/admin/issues/1/segment", data={"rule": rule, "csrf_token": token})
    assert refused.status_code == 422 and "Audience not saved" in refused.text
    assert "{&#34;languages&#34;: [&#34;fr&#34;], &#34;topics&#34;: {&#34;any&#34;: [&#34;grid&#34;]}}" in refused.text
    not_json = c.post("/admin/issues/1/segment", data={"rule": "{half", "csrf_token": token})
    assert not_json.status_code == 422 and ">{half</textarea>" in not_json.text
    saved = c.post("/admin/issues/1/editions/en", data={"title": "My new title", "note": "Fine", "csrf_token": token})
    assert saved.status_code == 200 and 'value="My new title"' in saved.text  # after the redirect


def test_the_issue_list_shows_titles_and_a_new_draft_is_asked_for_first(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-en-01"], "titles": {"en": "Week 48 in security"}}, headers=site.auth)
    sign_in(c)
    listing = c.get("/admin/issues").text
    assert "Week 48 in security" in listing  # was only "Issue 1"
    assert 'href="/admin/issues/new">New draft</a>' in listing and 'action="/admin/issues"' not in listing  # no one-click create
    token = csrf_of(listing)

    # A post without the confirmation (an old one-click form) creates nothing and shows the form.
    stray = c.post("/admin/issues", data={"csrf_token": token})
    assert stray.url.path == "/admin/issues/new" and "Create issue 2" in stray.text
    with session_factory(sqlite_url)() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 1  # was 2
    created = c.post("/admin/issues", data={"confirm": "yes", "csrf_token": token})
    assert created.url.path == "/admin/issues/2" and "Issue 2 created" in created.text
    assert '<td class="issue-title"><span class="meta">no articles yet</span>' in c.get("/admin/issues").text
    # Asked again, the page points to the empty draft to continue it.
    again = c.get("/admin/issues/new").text
    assert '<a href="/admin/issues/2">2</a>' in again and "is a draft" in again and "Create issue 3" in again


def test_adding_articles_updates_the_editions_section(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c = site.client
    c.post("/api/issues", json={}, headers=site.auth)
    sign_in(c)
    editor = c.get("/admin/issues/1").text
    assert '<div id="issue-editions">' in editor and "Editions appear as you add articles" in editor
    hx = {"HX-Request": "true", "X-CSRF-Token": csrf_of(editor)}
    added = c.post("/admin/issues/1/articles", data={"article": "sample-zh-Hans-01"}, headers=hx).text
    # The fragment swaps the editions section out of band: zh-Hans and its converted zh-Hant, with their fields.
    oob = added[added.index('<div id="issue-editions" hx-swap-oob="outerHTML">') :]
    assert 'id="edition-zh-Hans"' in oob and 'id="edition-zh-Hant"' in oob and "Editions appear" not in oob
    assert 'id="edition-zh-Hans-texts" hx-preserve' in oob and 'id="edition-zh-Hant-texts-converted" hx-preserve' in oob
    removed = c.post("/admin/issues/1/articles/remove", data={"article": "sample-zh-Hans-01"}, headers=hx).text
    assert "Editions appear as you add articles" in removed[removed.index('<div id="issue-editions"') :]


def test_scheduling_from_the_publish_page(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url, NEWSLETTER_TIMEZONE="Asia/Taipei"))
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=site.auth)
    c.post("/api/issues", json={}, headers=site.auth)
    sign_in(c)
    page = c.get("/admin/issues/1/publish").text
    assert 'action="/admin/issues/1/schedule"' in page and 'name="tz" value="Asia/Taipei"' in page  # NEWSLETTER_TIMEZONE
    token = csrf_of(page)

    def post(path: str, **data: str):  # type: ignore[no-untyped-def]
        return c.post(f"/admin/issues/{path}", data={**data, "csrf_token": token})

    def status(number: int = 1) -> tuple[str, datetime | None]:
        with session_factory(sqlite_url)() as session:
            issue = session.scalars(select(Issue).where(Issue.number == number)).one()
            return issue.status, issue.scheduled_at

    # Refused: a time in the past, an unknown zone, a malformed date, an issue that could not publish; no CSRF token.
    past = post("1/schedule", date="2020-01-06", time="09:00", tz="Asia/Taipei")
    assert past.status_code == 422 and "Not scheduled: 2020-01-06 09:00 (Asia/Taipei) is in the past" in past.text
    assert 'name="date" value="2020-01-06"' in past.text  # the form keeps what was typed
    assert "Unknown time zone" not in past.text and status() == ("draft", None)
    unknown = post("1/schedule", date="2099-01-06", time="09:00", tz="Mars/Olympus")
    assert unknown.status_code == 422 and "unknown time zone &#39;Mars/Olympus&#39;" in unknown.text
    assert "give the date as 2026-12-07" in post("1/schedule", date="06/01/2099", time="09:00", tz="UTC").text
    empty = post("2/schedule", date="2099-01-06", time="09:00", tz="UTC")
    assert empty.status_code == 422 and "issue 2 has no editions" in empty.text and status(2) == ("draft", None)
    assert c.post("/admin/issues/1/schedule", data={"date": "2099-01-06", "time": "09:00", "tz": "UTC"}).status_code == 403
    assert status() == ("draft", None)

    # Scheduled at a local time in the zone given; the page shows it there and in UTC, the list in UTC.
    day = (datetime.now(UTC) + timedelta(days=30)).astimezone(ZoneInfo("Asia/Taipei")).date()
    done = post("1/schedule", date=day.isoformat(), time="09:30", tz="Asia/Taipei")
    at = datetime(day.year, day.month, day.day, 9, 30, tzinfo=ZoneInfo("Asia/Taipei"))
    assert done.url.path == "/admin/issues/1/publish" and f"Issue 1 is scheduled for {day} 09:30 Asia/Taipei" in done.text
    assert status() == ("scheduled", at)
    shown = " ".join(done.text.split())
    assert f'<strong id="scheduled-at">{day} 09:30 Asia/Taipei</strong> ({at.astimezone(UTC):%Y-%m-%d %H:%M} UTC)' in shown
    assert f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in c.get("/admin/issues").text
    assert c.get("/api/issues/1", headers=site.auth).json()["status"] == "scheduled"
    # Rescheduled in another zone (the form shows the issue's own zone once scheduled).
    moved = post("1/schedule", date=day.isoformat(), time="08:00", tz="+09:00").text
    assert 'name="tz" value="+09:00"' in moved and f'<strong id="scheduled-at">{day} 08:00 +09:00</strong>' in moved
    assert status() == ("scheduled", datetime(day.year, day.month, day.day, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo")))

    # Unscheduled: a draft again; a second time is refused with the reason.
    back = post("1/unschedule")
    assert "Issue 1 is no longer scheduled" in back.text and status() == ("draft", None) and 'id="scheduled-at"' not in back.text
    assert "Not unscheduled: issue 1 is draft, not scheduled" in post("1/unschedule").text


def test_the_publish_page_counts_one_subscriber_in_the_singular(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression: with one recipient the confirmation and the button said "1 subscribers"."""
    site = make_site(make_settings(sqlite_url))
    c = site.client
    c.post("/api/issues", json={"articles": ["sample-en-01"]}, headers=site.auth)
    with session_factory(sqlite_url)() as session:
        for subscriber in session.scalars(select(Subscriber).where(Subscriber.email != "ann@example.com")):
            subscriber.status = SubscriberStatus.UNSUBSCRIBED
        session.commit()
    sign_in(c)
    page = c.get("/admin/issues/1/publish").text
    assert "to 1 subscriber now" in page and ">Publish to 1 subscriber<" in page and "1 subscribers" not in page
