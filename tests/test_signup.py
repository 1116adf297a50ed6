"""Sign-up with double opt-in, confirmation, topic-aware unsubscribe, re-subscribe, CSRF and rate limits,
through the real app (TestClient) on SQLite and PostgreSQL, with messages read back from the outbox."""

from __future__ import annotations

import mailbox
import re
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from newsletter.db import session_factory
from newsletter.links import confirm_url
from newsletter.models import Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression
from newsletter.segments import count_audience
from newsletter.tokens import sign
from newsletter.web import create_app

TOPICS = '{"economy": {"en": "Economy", "zh-Hans": "经济", "zh-Hant": "經濟"}, "policy": {"en": "Policy", "zh-Hant": "政策"}}'


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def _h1(html: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", html).group(1)  # type: ignore[union-attr]


def outbox(tmp_path: Path) -> list[Message]:
    """Messages in the embedded outbox, oldest first."""
    box = mailbox.Maildir(tmp_path / "outbox", create=True)
    return sorted((box[k] for k in box.keys()), key=lambda m: str(m["Date"]) + str(m["Message-ID"]))  # noqa: SIM118


def header(message: Message, name: str) -> str:
    """A header decoded from RFC 2047."""
    return str(make_header(decode_header(message[name])))


def text_of(message: Message) -> str:
    """The text/plain part, decoded."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()  # type: ignore[union-attr]
    raise AssertionError("no text part")


def links_in(message: Message) -> list[str]:
    """Every https link of both parts (HTML hrefs and text URLs)."""
    found: set[str] = set()
    for part in message.walk():
        if part.get_content_maintype() == "text":
            body = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
            found.update(re.findall(r'https://news\.example\.org[^\s"<>]*', body))
    return sorted(found)


@pytest.fixture
def app(db_url: str, make_settings, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, NEWSLETTER_TOPICS=TOPICS, NEWSLETTER_POSTAL_ADDRESS="1 Main St, Springfield")
    client = TestClient(create_app(settings), base_url="https://testserver")  # https: the CSRF cookie is Secure
    return {"client": client, "settings": settings, "url": db_url, "tmp": tmp_path}


def _subscribe(client: TestClient, **form: Any) -> Any:
    page = client.get(f"/subscribe?lang={form.get('lang', 'en')}")
    return client.post("/subscribe", data={"csrf_token": _csrf(page.text), **form})


def _get(url: str, db_url: str) -> Subscriber:
    with session_factory(db_url)() as session:
        found = session.scalar(select(Subscriber).where(Subscriber.email == url))
        assert found is not None
        session.expunge(found)
        return found


def test_double_opt_in_in_traditional_chinese(app: dict[str, Any]) -> None:
    client, tmp = app["client"], app["tmp"]
    form = client.get("/subscribe", headers={"Accept-Language": "zh-TW,zh;q=0.9,en;q=0.5"})
    assert form.headers["content-language"] == "zh-Hant" and "訂閱《每週評論》" in form.text
    assert '<input type="checkbox" name="topics" value="economy"> 經濟' in form.text
    done = _subscribe(client, email="mei@Example.TW", name="美玲", lang="zh-Hant", topics=["economy", "invented"])
    assert done.status_code == 200 and _h1(done.text) == "請查收郵件"
    mei = _get("mei@example.tw", app["url"])
    assert (mei.status, mei.source, mei.topics, mei.confirmed_at) == (SubscriberStatus.PENDING, "form", ["economy"], None)
    assert count_audience_of(app["url"]) == 0  # pending is never mailed

    [confirm] = outbox(tmp)
    assert header(confirm, "To") == "美玲 <mei@example.tw>" and header(confirm, "Subject") == "請確認訂閱《每週評論》"
    assert "List-Unsubscribe" not in confirm  # not list mail: the address is not on the list yet
    body = text_of(confirm)
    assert "美玲，您好：" in body and "訂閱《每週評論》" in body and "1 Main St, Springfield" in body
    link = re.search(r"https://news\.example\.org(/confirm/\S+)", body).group(1)  # type: ignore[union-attr]

    page = client.get(link)  # a GET (a link scanner) changes nothing
    assert page.status_code == 200 and "確認訂閱" in page.text
    assert _get("mei@example.tw", app["url"]).status == SubscriberStatus.PENDING
    confirmed = client.post(link, data={"csrf_token": _csrf(page.text)})
    assert confirmed.status_code == 200 and _h1(confirmed.text) == "已訂閱"
    mei = _get("mei@example.tw", app["url"])
    assert mei.status == SubscriberStatus.ACTIVE and mei.confirmed_at is not None
    assert count_audience_of(app["url"]) == 1
    welcome = outbox(tmp)[-1]
    assert header(welcome, "Subject") == "歡迎訂閱《每週評論》"
    assert "List-Unsubscribe" in welcome and "您對《每週評論》的訂閱已確認" in text_of(welcome)
    # Confirming twice is harmless and sends no second welcome.
    assert client.post(link, data={"csrf_token": _csrf(page.text)}).status_code == 200
    assert len(outbox(tmp)) == 2


def count_audience_of(db_url: str) -> int:
    with session_factory(db_url)() as session:
        return count_audience(session, None)


def test_the_answer_does_not_tell_whether_an_address_is_known(app: dict[str, Any]) -> None:
    client, settings = app["client"], app["settings"]
    with session_factory(app["url"])() as session:
        session.add(Subscriber(email="known@example.com", name="K", lang="en", topics=[], attributes={}, status=SubscriberStatus.ACTIVE))
        session.add(Subscriber(email="gone@example.com", name="G", lang="en", topics=[], attributes={}, status=SubscriberStatus.BOUNCED))
        session.commit()
    pages = [_subscribe(client, email=e, lang="en") for e in ("known@example.com", "new@example.com", "gone@example.com")]
    assert {p.status_code for p in pages} == {200}
    assert len({p.text for p in pages}) == 1
    answers = [client.post("/subscriptions", json={"email": e}) for e in ("known@example.com", "new2@example.com", "gone@example.com")]
    assert {a.status_code for a in answers} == {202} and len({a.text for a in answers}) == 1
    # Behind the same answer: the known address got a reminder, the new ones a confirmation, the bounced one nothing.
    subjects = sorted(str(m["To"]).split()[-1].strip("<>") + ":" + text_of(m).split("\n")[2][:20] for m in outbox(app["tmp"]))
    assert [s.split(":")[0] for s in subjects] == ["known@example.com", "known@example.com", "new2@example.com", "new@example.com"]
    assert _get("known@example.com", app["url"]).status == SubscriberStatus.ACTIVE  # nothing changed for the known one
    assert _get("new2@example.com", app["url"]).source == "api"
    assert settings.confirm_hours == 72


def test_json_signup_validates_and_refuses_other_media_types(app: dict[str, Any]) -> None:
    client = app["client"]
    bad = client.post("/subscriptions", json={"email": "not an address", "lang": "fr"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert {e["field"] for e in bad.json()["errors"]} == {"email", "lang"}
    # Regression (trial): "lang is invalid" did not say which languages there are.
    assert {e["field"]: e["detail"] for e in bad.json()["errors"]} == {
        "email": "email is not a valid address",
        "lang": "lang must be one of en, zh-Hans, zh-Hant",
    }
    form = client.post("/subscriptions", content=b'{"email": "x@example.com"}', headers={"content-type": "text/plain"})
    assert form.status_code == 415 and form.headers["content-type"].startswith("application/problem+json")
    assert form.json()["status"] == 415 and "application/json" in form.json()["detail"]
    encoded = client.post("/subscriptions", data={"email": "x@example.com"})
    assert encoded.status_code == 415 and encoded.json()["status"] == 415
    # Regression: an unknown topic slug was dropped silently, so the client signed up for less than it asked.
    unknown = client.post("/subscriptions", json={"email": "x@example.com", "topics": ["economy", "sport"]})
    assert unknown.status_code == 422
    assert [(e["field"], e["detail"]) for e in unknown.json()["errors"]] == [("topics", "unknown topics: sport (known: economy, policy)")]
    with session_factory(app["url"])() as session:
        assert session.scalar(select(Subscriber.id)) is None
    assert client.post("/subscriptions", json={"email": "x@example.com", "topics": ["economy"]}).status_code == 202
    assert _get("x@example.com", app["url"]).topics == ["economy"]


def test_csrf_is_required_on_every_reader_form(app: dict[str, Any]) -> None:
    client, settings = app["client"], app["settings"]
    with session_factory(app["url"])() as session:
        session.add(Subscriber(email="ann@example.com", name="Ann", lang="en", topics=["policy"], attributes={}))
        session.commit()
        sid = session.scalar(select(Subscriber.id))
    assert client.post("/subscribe", data={"email": "eve@example.com"}).status_code == 403
    # A browser is told in its reader's language, with no hint of the admin pages.
    page = client.post("/subscribe", data={"email": "eve@example.com"}, headers={"Accept": "text/html", "Accept-Language": "zh-TW"})
    assert page.status_code == 403 and _h1(page.text) == "此表單已過期" and "/admin" not in page.text
    assert _h1(client.get("/no-such-page", headers={"Accept": "text/html", "Accept-Language": "zh-CN"}).text) == "找不到页面"
    assert client.post("/subscribe", data={"email": "eve@example.com", "csrf_token": "forged"}).status_code == 403
    prefs = f"/preferences/{sign(settings.secret_key, 'preferences', sid)}"
    assert client.post(prefs, data={"lang": "zh-Hans", "paused": "1"}).status_code == 403
    assert client.post(f"/resubscribe/{sign(settings.secret_key, 'unsubscribe', sid)}").status_code == 403
    assert client.post(confirm_url(settings, sid).removeprefix(settings.base_url)).status_code == 403
    # Another site's page cannot post with a token taken from a different visitor's cookie.
    other = TestClient(client.app, base_url="https://testserver")
    token = _csrf(other.get("/subscribe").text)
    assert client.post("/subscribe", data={"email": "eve@example.com", "csrf_token": token}).status_code == 403
    ann = _get("ann@example.com", app["url"])
    assert (ann.lang, ann.paused) == ("en", False)
    assert outbox(app["tmp"]) == []


def test_rate_limits_per_address_and_per_client(app: dict[str, Any]) -> None:
    from newsletter.web.deps import SIGNUP_ADDRESS_LIMIT, SIGNUP_CLIENT_LIMIT

    client = app["client"]
    answers = [_subscribe(client, email="target@example.com").text for _ in range(SIGNUP_ADDRESS_LIMIT + 2)]
    assert len(set(answers)) == 1  # the same answer: a limit must not reveal anything either
    assert len(outbox(app["tmp"])) == SIGNUP_ADDRESS_LIMIT  # nobody's mailbox is flooded with confirmations
    for i in range(SIGNUP_CLIENT_LIMIT - SIGNUP_ADDRESS_LIMIT - 2):
        assert client.post("/subscriptions", json={"email": f"r{i}@example.com"}).status_code == 202
    limited = client.post("/subscriptions", json={"email": "one-more@example.com"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    page = _subscribe(client, email="two-more@example.com", lang="zh-Hans")
    assert page.status_code == 429 and _h1(page.text) == "请求过多"
    with session_factory(app["url"])() as session:
        assert session.scalar(select(Subscriber.id).where(Subscriber.email == "one-more@example.com")) is None


def _issue(db_url: str, number: int, segment: dict[str, Any] | None) -> int:
    with session_factory(db_url)() as session:
        issue = Issue(number=number, status=IssueStatus.SENT, segment=segment)
        session.add(issue)
        session.commit()
        return issue.id


def test_topic_segments_are_left_like_separate_newsletters(app: dict[str, Any]) -> None:
    client, settings, url = app["client"], app["settings"], app["url"]
    with session_factory(url)() as session:
        session.add(Subscriber(email="bo@example.com", name="Bo", lang="zh-Hant", topics=["economy", "policy"], attributes={}))
        session.commit()
        sid = session.scalar(select(Subscriber.id))
    economy = _issue(url, 1, {"topics": {"any": ["economy"]}})
    policy = _issue(url, 2, {"topics": {"any": ["policy"]}, "languages": ["zh-Hant"]})
    token = sign(settings.secret_key, "unsubscribe", sid, economy)
    page = client.get(f"/unsubscribe/{token}")
    assert "只退出此主題" in page.text and "全部取消訂閱" in page.text and "經濟" in page.text
    # The one-click POST of the economy issue leaves economy only, and sends no acknowledgement.
    done = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and _h1(done.text) == "已退出主題"
    bo = _get("bo@example.com", url)
    assert (bo.status, bo.topics) == (SubscriberStatus.ACTIVE, ["policy"])
    # A second click changes nothing (it never widens into leaving the whole list).
    client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert _get("bo@example.com", url).status == SubscriberStatus.ACTIVE
    # Leaving the last topic leaves the list; the reader asked for an acknowledgement.
    last_url = f"/unsubscribe/{sign(settings.secret_key, 'unsubscribe', sid, policy)}"
    last = client.post(last_url, data={"csrf_token": _csrf(client.get(last_url).text), "scope": "topic", "acknowledge": "1"})
    assert _h1(last.text) == "已取消訂閱" and "重新訂閱" in last.text
    bo = _get("bo@example.com", url)
    assert bo.status == SubscriberStatus.UNSUBSCRIBED
    [goodbye] = outbox(app["tmp"])
    assert "bo@example.com 將不會再收到《每週評論》" in text_of(goodbye)
    with session_factory(url)() as session:
        assert session.scalar(select(Suppression.reason).where(Suppression.email == "bo@example.com")) == "unsubscribe"


def test_unsubscribe_from_everything_and_subscribe_again(app: dict[str, Any]) -> None:
    client, settings, url = app["client"], app["settings"], app["url"]
    with session_factory(url)() as session:
        session.add(Subscriber(email="cy@example.com", name="Cy", lang="en", topics=["economy", "policy"], attributes={}))
        session.commit()
        sid = session.scalar(select(Subscriber.id))
    token = sign(settings.secret_key, "unsubscribe", sid, _issue(url, 1, {"topics": {"any": ["economy"]}}))
    gone = client.post(f"/unsubscribe/{token}", data={"csrf_token": _csrf(client.get(f"/unsubscribe/{token}").text), "scope": "all"})
    assert "You will not receive further issues." in gone.text
    assert _get("cy@example.com", url).status == SubscriberStatus.UNSUBSCRIBED
    assert outbox(app["tmp"]) == []  # no acknowledgement unless asked
    for path in (f"/unsubscribe/{token}", f"/preferences/{sign(settings.secret_key, 'preferences', sid)}"):
        later = client.get(path)  # the links of old messages now offer to subscribe again
        assert later.status_code == 200 and "Subscribe again" in later.text and 'action="/resubscribe/' in later.text
    # The re-subscribe path asks for a confirmation again; nothing changes until then.
    again = client.post(f"/resubscribe/{token}", data={"csrf_token": _csrf(gone.text)})
    assert _h1(again.text) == "Check your inbox"
    assert _get("cy@example.com", url).status == SubscriberStatus.UNSUBSCRIBED
    [confirm] = outbox(app["tmp"])
    link = re.search(r"https://news\.example\.org(/confirm/\S+)", text_of(confirm)).group(1)  # type: ignore[union-attr]
    form = client.get(link)
    client.post(link, data={"csrf_token": _csrf(form.text)})
    cy = _get("cy@example.com", url)
    assert cy.status == SubscriberStatus.ACTIVE and cy.unsubscribed_at is None
    with session_factory(url)() as session:
        assert session.scalar(select(Suppression.id).where(Suppression.email == "cy@example.com")) is None
        assert count_audience(session, None) == 1


def test_expired_and_forged_confirmation_links(app: dict[str, Any]) -> None:
    client, settings = app["client"], app["settings"]
    with session_factory(app["url"])() as session:
        session.add(Subscriber(email="dee@example.com", lang="zh-Hans", topics=[], attributes={}, status=SubscriberStatus.PENDING))
        session.commit()
        sid = session.scalar(select(Subscriber.id))
    old = confirm_url(settings, sid, now=0).removeprefix(settings.base_url)
    expired = client.get(old, headers={"Accept-Language": "zh-CN"})
    assert expired.status_code == 410 and _h1(expired.text) == "链接已过期"
    assert client.get(old[:-3] + "abc").status_code == 400
    assert client.get(f"/confirm/{sign(settings.secret_key, 'preferences', sid)}").status_code == 400  # wrong purpose
    assert _get("dee@example.com", app["url"]).status == SubscriberStatus.PENDING


def test_paused_subscribers_are_not_in_the_audience(app: dict[str, Any]) -> None:
    with session_factory(app["url"])() as session:
        session.add(Subscriber(email="ed@example.com", lang="en", topics=[], attributes={}, paused=True))
        session.add(Subscriber(email="fi@example.com", lang="en", topics=[], attributes={}))
        session.commit()
        assert count_audience(session, None) == 1


def test_import_with_confirm_asks_new_subscribers_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    env = {"NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_SECRET_KEY": "cli-secret", "NEWSLETTER_BASE_URL": "https://news.example.org",
           "NEWSLETTER_OUTBOX": str(tmp_path / "outbox")}  # fmt: skip
    for key in ("DATABASE_URL", "REDIS_URL", "SMTP_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    csv_path = tmp_path / "people.csv"
    csv_path.write_text("email,name,lang,topics\nold@example.com,Old,en,\n", encoding="utf-8")
    assert CliRunner().invoke(main, ["subscribers", "import", str(csv_path)]).exit_code == 0  # consent assumed: active
    csv_path.write_text("email,name,lang,topics\nold@example.com,Old,en,\nlin@example.tw,林,zh-TW,economy\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["subscribers", "import", "--confirm", str(csv_path)], catch_exceptions=False)
    assert result.exit_code == 0 and "1 confirmation request sent (" in result.output
    [request] = outbox(tmp_path)
    assert header(request, "To") == "林 <lin@example.tw>" and "請確認訂閱" in header(request, "Subject")
    url = f"sqlite:///{tmp_path / 'home' / 'newsletter.db'}"
    assert _get("lin@example.tw", url).status == SubscriberStatus.PENDING and _get("lin@example.tw", url).source == "import"
    assert _get("old@example.com", url).status == SubscriberStatus.ACTIVE  # an existing subscriber is never downgraded
