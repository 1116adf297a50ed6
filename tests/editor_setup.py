"""Shared setup for the editor-side tests: the sample archive, a few subscribers, a user and a token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from newsletter.articles import import_articles
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.editors import create_token, create_user
from newsletter.models import Subscriber
from newsletter.web import create_app

SAMPLE = Path(__file__).resolve().parent.parent / "newsletter" / "sample"
PASSWORD = "correct horse battery"
EDITOR = "editor@example.org"


@dataclass
class Site:
    """An app over a database with the sample archive, three subscribers (en, zh-Hans, zh-Hant), an editor and a token."""

    settings: Settings
    client: TestClient
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def seed(settings: Settings) -> str:
    """Fill the database; returns a fresh API token."""
    with session_factory(settings.database_url)() as session:
        for name in ("articles-en.jsonl", "articles-zh-Hans.jsonl"):
            import_articles(session, SAMPLE / name)
        session.add_all(
            [
                Subscriber(email="ann@example.com", name="Ann", lang="en", topics=["security"], attributes={"plan": "pro"}),
                Subscriber(email="bo@example.com", name="Bo", lang="zh-Hans", topics=[], attributes={}),
                Subscriber(email="cy@example.com", name="", lang="zh-Hant", topics=[], attributes={}),
            ]
        )
        session.commit()
        create_user(session, EDITOR, PASSWORD)
        return create_token(session, "tests").secret


def make_site(settings: Settings) -> Site:
    token = seed(settings)
    # https: the session and CSRF cookies are Secure when the public URL is https.
    return Site(settings, TestClient(create_app(settings), base_url="https://testserver"), token)


def sign_in(client: TestClient, email: str = EDITOR, password: str = PASSWORD) -> None:
    """Sign in through the form, as a browser would (the page first, for the CSRF cookie and token)."""
    page = client.get("/admin/sign-in")
    token = csrf_of(page.text)
    response = client.post(
        "/admin/sign-in", data={"email": email, "password": password, "csrf_token": token, "next": "/admin/issues"}, follow_redirects=False
    )
    assert response.status_code == 303, response.text


def csrf_of(html: str) -> str:
    """The CSRF token a page embeds in its forms."""
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]
