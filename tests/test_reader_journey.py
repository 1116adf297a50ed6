"""A reader's whole journey in a real browser (Playwright driving Debian's chromium, 375 px wide) against a
real `newsletter web` process, with every message read at an in-process SMTP server (aiosmtpd):
subscribe in zh-Hant, confirm, choose topics with checkboxes, receive an issue sent to a topic, switch
its web version to English, leave that topic, then everything. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter.db import session_factory, upgrade
from newsletter.issues import create_issue
from newsletter.models import Article, Subscriber, SubscriberStatus, utcnow
from newsletter.runner import follow, start_publish
from tests.conftest import ROOT
from tests.smtp_server import SMTPServer, free_port
from tests.test_browser import browser  # noqa: F401 - the chromium fixture
from tests.test_signup import TOPICS

ARTIFACTS = ROOT / "tests" / "artifacts"
PHONE = {"width": 375, "height": 812}


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()  # type: ignore[no-any-return]


def _wait_for(server: SMTPServer, count: int, seconds: float = 30) -> list[EmailMessage]:
    deadline = time.monotonic() + seconds
    while len(server.recorder.messages) < count:
        assert time.monotonic() < deadline, f"{len(server.recorder.messages)} messages, expected {count}"
        time.sleep(0.1)
    return list(server.recorder.messages)


@pytest.fixture
def service(tmp_path: Path, make_settings) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'journey.db'}"
    upgrade(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with SMTPServer() as smtp:
        values = {"NEWSLETTER_BASE_URL": base, "NEWSLETTER_ALLOW_HTTP": "1", "SMTP_URL": smtp.url, "NEWSLETTER_TOPICS": TOPICS,
                  "NEWSLETTER_POSTAL_ADDRESS": "1 Main St, Springfield"}  # fmt: skip
        settings = make_settings(url, **values)
        env = {
            **os.environ,
            **values,
            "DATABASE_URL": url,
            "NEWSLETTER_SECRET_KEY": settings.secret_key,
            "NEWSLETTER_HOME": str(tmp_path / "home"),
        }
        env.pop("REDIS_URL", None)
        log = tmp_path / "web.log"
        proc = subprocess.Popen([sys.executable, "-m", "newsletter.cli", "web", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        try:
            yield {"base": base, "url": url, "settings": settings, "smtp": smtp}
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _publish_economy_issue(settings: Any, db_url: str) -> None:
    with session_factory(db_url)() as session:
        now = utcnow()
        zh = Article(external_id="zh1", title="央行下调存款准备金率", summary="释放长期资金约一万亿元。", lang="zh-Hans", published_at=now,
                     url="https://example.org/zh/1", category="经济")  # fmt: skip
        en = Article(external_id="en1", title="Central bank cuts reserve ratio", summary="About one trillion yuan released.", lang="en",
                     published_at=now, url="https://example.org/en/1", category="economy")  # fmt: skip
        session.add_all([zh, en])
        session.flush()
        issue = create_issue(session, [en, zh], titles={"en": "Week 49", "zh-Hans": "第49周"})
        issue.segment = {"topics": {"any": ["economy"]}}
        session.commit()
        number = issue.number
    issue_id, _ = start_publish(settings, number)
    assert follow(settings, issue_id, timeout=60).status == "sent"


def _subscriber(db_url: str) -> Subscriber:
    with session_factory(db_url)() as session:
        found = session.scalar(select(Subscriber).where(Subscriber.email == "lin@example.tw"))
        assert found is not None
        session.expunge(found)
        return found


def test_a_reader_joins_chooses_reads_and_leaves_in_traditional_chinese(browser: Any, service: dict[str, Any]) -> None:  # noqa: F811
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base, smtp, db_url = service["base"], service["smtp"], service["url"]
    context = browser.new_context(viewport=PHONE, locale="zh-TW")
    page = context.new_page()

    def shot(name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"journey-{name}.png"), full_page=True)

    # 1. Subscribe: the browser's zh-TW picks the Traditional Chinese form.
    page.goto(f"{base}/subscribe")
    assert page.locator("html").get_attribute("lang") == "zh-Hant"
    page.get_by_label("電子郵件地址").fill("lin@example.tw")
    page.get_by_label("姓名（選填）").fill("林小姐")
    page.get_by_label("政策").check()
    shot("1-subscribe")
    page.get_by_role("button", name="訂閱").click()
    assert page.locator("h1").text_content() == "請查收郵件"
    assert _subscriber(db_url).status == SubscriberStatus.PENDING

    # 2. The confirmation arrives at the SMTP server, in zh-Hant; its link opens a page whose button confirms.
    [confirm] = _wait_for(smtp, 1)
    assert confirm["Subject"] == "請確認訂閱《每週評論》" and "林小姐，您好：" in _text(confirm)
    link = re.search(r"(http://127\.0\.0\.1:\d+/confirm/\S+)", _text(confirm)).group(1)  # type: ignore[union-attr]
    html = confirm.get_body(preferencelist=("html",))
    assert html is not None and f'href="{link}"' in html.get_content()  # the button carries the same link
    mail_view = context.new_page()
    mail_view.set_content(html.get_content())
    assert mail_view.get_by_role("link", name="確認訂閱").is_visible()
    mail_view.screenshot(path=str(ARTIFACTS / "journey-2-confirm-email.png"), full_page=True)
    mail_view.close()
    page.goto(link)
    assert _subscriber(db_url).status == SubscriberStatus.PENDING  # opening the link changed nothing
    page.get_by_role("button", name="確認訂閱").click()
    assert page.locator("h1").text_content() == "已訂閱"
    shot("2-confirmed")
    [_, welcome] = _wait_for(smtp, 2)
    assert welcome["Subject"] == "歡迎訂閱《每週評論》"

    # 3. Preferences: topics are checkboxes with readable labels.
    page.get_by_role("link", name="管理訂閱偏好").click()
    assert page.get_by_label("政策").is_checked() and not page.get_by_label("經濟").is_checked()
    page.get_by_label("經濟").check()
    shot("3-preferences")
    page.get_by_role("button", name="儲存").click()
    assert page.get_by_role("status").text_content() == "已儲存。"
    assert _subscriber(db_url).topics == ["economy", "policy"]

    # 4. An issue sent to the economy topic arrives in zh-Hant (converted from zh-Hans).
    _publish_economy_issue(service["settings"], db_url)
    issue = _wait_for(smtp, 3)[2]
    body = _text(issue)
    assert "央行下調存款準備金率" in body and issue["Content-Language"] == "zh-Hant"
    web = re.search(r"(http://127\.0\.0\.1:\d+/issues/\d+/zh-Hant)", body).group(1)  # type: ignore[union-attr]
    unsubscribe = str(issue["List-Unsubscribe"]).strip("<> ")

    # 5. Its web version has the language switcher; English is one click away, and links back.
    page.goto(web)
    assert page.locator("h2 a").first.text_content() == "央行下調存款準備金率"
    shot("4-web-zh-Hant")
    page.get_by_role("link", name="English").click()
    assert page.url.endswith("/en") and page.locator("h2 a").first.text_content() == "Central bank cuts reserve ratio"
    assert page.get_by_role("link", name="繁體").count() == 1
    shot("5-web-en")

    # 6. Leave only the economy topic (the issue's segment); policy stays.
    page.goto(unsubscribe)
    shot("6-unsubscribe")
    page.get_by_role("button", name="只退出此主題").click()
    assert page.locator("h1").text_content() == "已退出主題"
    reader = _subscriber(db_url)
    assert (reader.status, reader.topics) == (SubscriberStatus.ACTIVE, ["policy"])

    # 7. Then everything, from the preferences page's unsubscribe link.
    page.get_by_role("link", name="管理訂閱偏好").click()
    page.get_by_role("link", name="取消訂閱").click()
    page.get_by_role("button", name="取消訂閱").click()
    assert page.locator("h1").text_content() == "已取消訂閱"
    shot("7-unsubscribed")
    assert _subscriber(db_url).status == SubscriberStatus.UNSUBSCRIBED
    time.sleep(0.5)
    assert len(smtp.recorder.messages) == 3  # no acknowledgement: the reader did not ask for one
    for name in ("1-subscribe", "3-preferences", "7-unsubscribed"):
        assert (ARTIFACTS / f"journey-{name}.png").stat().st_size > 5000
    context.close()
