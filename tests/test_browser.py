"""The web pages in a real browser (Playwright driving Debian's chromium) against `newsletter web`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from newsletter.db import session_factory, upgrade
from newsletter.issues import create_issue
from newsletter.models import Article, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.runner import follow, start_publish
from newsletter.tokens import sign
from tests.conftest import ROOT, unavailable
from tests.smtp_server import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        unavailable(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path: Path, make_settings) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A published issue in a SQLite database, served by a real `newsletter web` process."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    upgrade(url)
    port = free_port()
    settings = make_settings(url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}", NEWSLETTER_ALLOW_HTTP="1")  # a local test server
    with session_factory(url)() as session:
        now = utcnow()
        article = Article(external_id="w1", title="Grid security rules tightened", summary="Utilities must patch in 30 days.",
                          lang="en", published_at=now, url="https://example.org/grid")  # fmt: skip
        ann = Subscriber(email="ann@example.com", name="Ann", lang="en", topics=["security"], attributes={})
        session.add_all([article, ann])
        session.flush()
        number = create_issue(session, [article], titles={"en": "Week 48"}).number
        session.commit()
        sid = ann.id
    issue_id, _ = start_publish(settings, number)
    assert follow(settings, issue_id, timeout=60).status == "sent"
    env = {**os.environ, "DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": settings.secret_key, "NEWSLETTER_BASE_URL": settings.base_url,
           "NEWSLETTER_ALLOW_HTTP": "1"}  # fmt: skip
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "newsletter.cli", "web", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=(tmp_path / "web.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
            time.sleep(0.1)
    yield {"base": base, "url": url, "settings": settings, "sid": sid, "number": number, "tmp": tmp_path}
    proc.terminate()
    proc.wait(timeout=10)


def test_view_in_browser_page(browser: Any, site: dict[str, Any]) -> None:
    page = browser.new_page()
    response = page.goto(f"{site['base']}/issues/{site['number']}/en")
    assert response.status == 200
    assert page.title() == "Week 48"
    assert page.locator("h2 a").first.text_content() == "Grid security rules tightened"
    # CSS was inlined: the masthead is dark blue without any stylesheet lookup.
    assert page.locator(".masthead").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(15, 42, 74)"
    page.screenshot(path=str(site["tmp"] / "edition.png"), full_page=True)


def test_unsubscribe_by_clicking(browser: Any, site: dict[str, Any]) -> None:
    token = sign(site["settings"].secret_key, "unsubscribe", site["sid"], 1)
    page = browser.new_page()
    page.goto(f"{site['base']}/unsubscribe/{token}")
    assert page.locator("h1").text_content() == "Unsubscribe"
    page.get_by_role("button", name="Unsubscribe").click()
    page.wait_for_selector("text=You will not receive further issues.")
    with session_factory(site["url"])() as session:
        assert session.get_one(Subscriber, site["sid"]).status == SubscriberStatus.UNSUBSCRIBED
        assert session.scalar(select(Suppression.reason)) == "unsubscribe"


def test_preferences_by_clicking(browser: Any, site: dict[str, Any]) -> None:
    token = sign(site["settings"].secret_key, "preferences", site["sid"])
    page = browser.new_page()
    page.goto(f"{site['base']}/preferences/{token}")
    assert page.get_by_label("security").is_checked()  # the subscriber's topic, labelled by its slug without NEWSLETTER_TOPICS
    page.get_by_label("Language", exact=True).select_option("zh-Hans")
    page.get_by_label("Pause deliveries (you stay subscribed)").check()
    page.get_by_role("button", name="Save").click()
    assert page.get_by_role("status").text_content() == "已保存。"  # the page now speaks the language just chosen
    with session_factory(site["url"])() as session:
        subscriber = session.get_one(Subscriber, site["sid"])
        assert (subscriber.lang, subscriber.topics, subscriber.paused) == ("zh-Hans", ["security"], True)
