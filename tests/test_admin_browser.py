"""An editor's session in a real browser (Playwright driving Debian's chromium) against `newsletter web`:
sign in, build an issue from searched articles, reorder, preview the three editions, test-send to an
in-process SMTP server, publish with confirmation and watch progress reach `sent`.

Screenshots are saved in tests/artifacts/ (git-ignored), one per step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from newsletter.db import session_factory, upgrade
from newsletter.models import Delivery
from tests.conftest import ROOT
from tests.editor_setup import EDITOR, PASSWORD, seed
from tests.smtp_server import SMTPServer, free_port
from tests.test_browser import browser  # noqa: F401  (the shared chromium fixture)

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def server(tmp_path: Path, make_settings) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """`newsletter web` on a fresh SQLite database with the sample archive, mailing through an in-process SMTP server."""
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    upgrade(url)
    port = free_port()
    with SMTPServer() as smtp:
        # Plain http on 127.0.0.1, as on an editor's laptop: the cookies are then not marked Secure.
        settings = make_settings(url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}", SMTP_URL=smtp.url, NEWSLETTER_ALLOW_HTTP="1")
        seed(settings)
        env = {**os.environ, "DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": settings.secret_key, "NEWSLETTER_BASE_URL": settings.base_url,
               "SMTP_URL": smtp.url, "NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_ALLOW_HTTP": "1"}  # fmt: skip
        env.pop("REDIS_URL", None)
        log = tmp_path / "web.log"
        proc = subprocess.Popen([sys.executable, "-m", "newsletter.cli", "web", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
        try:
            yield {"base": base, "url": url, "smtp": smtp, "log": log}
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _titles(page: Any) -> list[str]:
    return page.locator("#article-list li .title").all_text_contents()


def test_editor_builds_previews_tests_and_publishes_an_issue(browser: Any, server: dict[str, Any]) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    shots: list[Path] = []

    def shot(name: str) -> None:
        path = ARTIFACTS / f"admin-{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    base = server["base"]

    # Sign in (the admin home sends a stranger to the sign-in page first).
    page.goto(f"{base}/admin/")
    assert "/admin/sign-in" in page.url
    page.get_by_label("Email").fill(EDITOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/admin/issues")
    shot("issues")

    # A new draft, built from searched articles (htmx swaps the results and the article list in place).
    page.get_by_role("link", name="New draft").click()  # asks first: no empty draft on one click
    page.wait_for_url(f"{base}/admin/issues/new")
    page.get_by_role("button", name="Create issue 1").click()
    page.wait_for_url(f"{base}/admin/issues/1")
    page.get_by_label("Text").fill("ransomware")
    page.get_by_label("Language").select_option("en")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name="Add: Agency issues ransomware guidance for small water utilities").click()
    page.get_by_role("button", name="Add: Hospitals must report ransomware attacks within 72 hours").wait_for()
    # The editions section follows the articles without a reload; what is typed in an edition stays.
    page.locator("#edition-en").get_by_label("Title").fill("Typed, not saved yet")
    page.get_by_role("button", name="Add: Hospitals must report ransomware attacks within 72 hours").click()
    page.locator("#article-list li[data-id='sample-en-05']").wait_for()
    # Added articles are no longer offered in the results (adding one twice would be refused).
    expect(page.get_by_role("button", name="Add: Agency issues ransomware guidance for small water utilities")).to_have_count(0)
    expect(page.locator("#search-results")).to_contain_text("in the issue")
    page.get_by_label("Language").select_option("zh-Hans")
    page.get_by_label("Text").fill("网络安全")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name="Add: 多地启动关键信息基础设施网络安全检查").click()
    page.locator("#article-list li[data-id='sample-zh-Hans-01']").wait_for()
    expect(page.locator("form.edition h3")).to_have_count(3)  # was still "Editions appear as you add articles…"
    expect(page.locator("#edition-zh-Hans").get_by_label("Title")).to_be_visible()
    expect(page.locator("#edition-en").get_by_label("Title")).to_have_value("Typed, not saved yet")
    expect(page.locator("#issue-editions")).not_to_contain_text("Editions appear")
    assert _titles(page) == ["Agency issues ransomware guidance for small water utilities",
                             "Hospitals must report ransomware attacks within 72 hours under new rule", "多地启动关键信息基础设施网络安全检查"]  # fmt: skip
    shot("built")

    # Reorder with the buttons, then by dragging.
    page.get_by_role("button", name="Move down: Agency issues ransomware guidance for small water utilities").click()
    expect(page.locator("#article-list li").first).to_have_attribute("data-id", "sample-en-05")
    page.locator("#article-list li[data-id='sample-zh-Hans-01']").drag_to(page.locator("#article-list li[data-id='sample-en-05']"),
                                                                          target_position={"x": 20, "y": 2})  # fmt: skip
    expect(page.locator("#article-list li").first).to_have_attribute("data-id", "sample-zh-Hans-01")
    assert [li.get_attribute("data-id") for li in page.locator("#article-list li").all()] == [
        "sample-zh-Hans-01",
        "sample-en-05",
        "sample-en-01",
    ]
    page.reload()  # the order is stored, not only shown
    assert _titles(page)[0] == "多地启动关键信息基础设施网络安全检查"
    # A refused change (here a stale order, as from a second tab) shows its message instead of failing silently.
    page.evaluate("""() => { const f = document.getElementById("reorder-form");
                             f.querySelector("input[name=order]").value = "sample-en-05"; htmx.trigger(f, "submit"); }""")
    expect(page.locator("#issue-articles .flash.error")).to_contain_text("changed meanwhile")
    expect(page.locator("#article-list li")).to_have_count(3)  # the list is still shown, unchanged
    refused = [e for e in errors if "/articles/order" in e or "422 (Unprocessable" in e]
    assert refused and len(refused) <= 2, errors  # the 422 itself (and the browser's note of it) are expected
    errors[:] = [e for e in errors if e not in refused]

    # Titles and notes per language (three editions: zh-Hant converted from zh-Hans).
    assert page.locator("form.edition h3").all_text_contents()[2].startswith("zh-Hant")
    page.locator("#edition-en").get_by_label("Title").fill("Ransomware week")
    page.locator("#edition-en").get_by_label("Editor's note (Markdown)").fill("Patch *everything*.")
    page.get_by_role("button", name="Save en").click()
    page.get_by_text("The en edition is saved.").wait_for()
    shot("editor")

    # Previews side by side at 600 and 375 px.
    page.get_by_role("link", name="Preview & test").click()
    frames = page.locator("iframe")
    assert frames.count() == 6
    widths = sorted({round(frames.nth(i).bounding_box()["width"]) for i in range(6)})  # type: ignore[index]
    assert widths == [377, 602]  # 600 and 375 plus the 1 px border on each side
    for lang, text in (
        ("en", "Patch everything."),
        ("zh-Hans", "多地启动关键信息基础设施网络安全检查"),
        ("zh-Hant", "多地啟動關鍵資訊基礎設施網路安全檢查"),  # OpenCC s2twp: Taiwan standard with phrases
    ):
        frame = page.frame_locator(f"#preview-{lang} iframe.w375")
        frame.locator("body").wait_for()
        assert text in frame.locator("body").inner_text().replace("\n", " "), lang
    page.wait_for_timeout(300)  # let the lazy frames paint
    shot("previews")

    # A test send, caught by the SMTP server; no delivery is recorded.
    page.get_by_label("Edition").select_option("zh-Hant")
    page.get_by_label("To (up to 10 addresses)").fill("proofreader@example.org")
    page.get_by_role("button", name="Send test").click()
    page.get_by_text("Test of the zh-Hant edition sent to proofreader@example.org.").wait_for()
    recorder = server["smtp"].recorder
    assert len(recorder.messages) == 1 and str(recorder.messages[0]["Subject"]).startswith("[TEST] ")
    assert recorder.messages[0]["X-Newsletter-Test"] == "yes"
    with session_factory(server["url"])() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0

    # Schedule from the publish page: a past time is refused with the reason; then scheduled, shown, unscheduled.
    page.get_by_role("link", name="Publish").click()
    expect(page.get_by_label("Time zone")).to_have_value("UTC")  # NEWSLETTER_TIMEZONE
    page.get_by_label("Date").fill("2020-01-06")
    page.get_by_label("Time", exact=True).fill("09:00")
    page.get_by_role("button", name="Schedule").click()
    expect(page.locator("#schedule-error")).to_contain_text("2020-01-06 09:00 (UTC) is in the past")
    day = (datetime.now(UTC) + timedelta(days=30)).astimezone(ZoneInfo("Asia/Taipei")).date()
    page.get_by_label("Date").fill(day.isoformat())
    page.get_by_label("Time", exact=True).fill("09:30")
    page.get_by_label("Time zone").fill("Asia/Taipei")
    page.get_by_role("button", name="Schedule").click()
    expect(page.locator("#scheduled-at")).to_have_text(f"{day} 09:30 Asia/Taipei")
    shot("scheduled")
    page.get_by_role("button", name="Unschedule").click()
    page.get_by_text("Issue 1 is no longer scheduled: it is a draft again.").wait_for()
    expect(page.locator("#scheduled-at")).to_have_count(0)
    refused = [e for e in errors if (e.startswith("422 ") and e.endswith("/admin/issues/1/schedule")) or "422 (Unprocessable" in e]
    assert refused and len(refused) <= 2, errors  # the refused past time (and the browser's note of it)
    errors[:] = [e for e in errors if e not in refused]

    # Publish: the page shows the recipient count and wants it confirmed.
    assert page.locator("#recipient-count").text_content() == "3"
    publish = page.get_by_role("button", name="Publish to 3 subscribers")
    publish.click()  # the checkbox is required: the browser refuses to submit
    assert "/publish" in page.url
    page.get_by_label("I have checked the previews").check()
    shot("confirm")
    publish.click()
    page.wait_for_url(f"{base}/admin/issues/1/progress")
    expect(page.locator("#issue-status")).to_have_text("sent", timeout=60_000)  # (a string predicate would break the CSP)
    assert page.locator("#progress-count").text_content() == "3 of 3"
    assert page.locator("tr[data-state=sent] td").all_text_contents() == ["1", "1", "1", "3"]
    shot("sent")
    assert sorted(m["To"].addresses[0].addr_spec for m in recorder.messages[1:]) == ["ann@example.com", "bo@example.com", "cy@example.com"]

    # Subscriber search and detail.
    page.get_by_role("link", name="Subscribers").click()
    page.get_by_label("Address or name").fill("ann")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="ann@example.com").click()
    assert page.locator("table.list td").nth(2).text_content() == "sent"
    shot("subscriber")

    # The API docs render from the package's own Swagger UI files, under the same CSP.
    page.goto(f"{base}/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() >= 30
    shot("api-docs")

    assert not errors, errors  # no CSP violation or script error on any page
    print("screenshots:", *shots, sep="\n  ")
    context.close()
