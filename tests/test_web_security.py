"""Security of the editor side: every API route and admin page needs credentials; CSRF, headers, cookies,
sign-in rate limit, problem details."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from newsletter.db import session_factory
from newsletter.editors import revoke_token
from newsletter.web import create_app
from newsletter.web.admin import issues as admin_issues
from newsletter.web.admin import sending as admin_sending
from newsletter.web.admin import subscribers as admin_subscribers
from newsletter.web.deps import SIGN_IN_LIMIT
from tests.editor_setup import EDITOR, PASSWORD, csrf_of, make_site, sign_in


def _fill(path: str) -> str:
    values = {"number": "1", "lang": "en", "article_id": "sample-en-01", "subscriber_id": "1", "action": "pause"}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)


@pytest.fixture
def site(sqlite_url: str, make_settings):  # type: ignore[no-untyped-def]
    return make_site(make_settings(sqlite_url))


def test_every_api_route_in_the_spec_needs_a_token(site) -> None:  # type: ignore[no-untyped-def]
    c = site.client
    spec = c.get("/openapi.json").json()
    api = [(method, path) for path, ops in spec["paths"].items() if path.startswith("/api") for method in ops]
    assert len(api) >= 30
    with session_factory(site.settings.database_url)() as session:
        revoke_token(session, "tests")
    for credentials in ({}, {"Authorization": "Bearer nl_wrong"}, {"Authorization": "Basic eDp5"}, site.auth):  # site.auth: revoked
        for method, path in api:
            response = c.request(method.upper(), _fill(path), headers=credentials, json={})
            assert response.status_code == 401, (method, path, credentials, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith('Bearer realm="newsletter"')
    # Only the operations and reader pages are open, and none of them is an editor route.
    open_paths = {p for p in spec["paths"] if not p.startswith("/api")}
    assert open_paths == {"/healthz", "/metrics", "/issues/{number}/{lang}", "/unsubscribe/{token}", "/preferences/{token}", "/", "/subscribe",
                          "/subscriptions", "/confirm/{token}", "/resubscribe/{token}", "/feed/{lang}.atom"}  # fmt: skip


def _admin_routes() -> list[tuple[str, str]]:
    out = [("GET", "/admin/")]
    for module in (admin_issues, admin_sending, admin_subscribers):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            out += [(method, "/admin" + _fill(route.path)) for method in route.methods]
    return out


def test_every_admin_page_redirects_to_sign_in(site) -> None:  # type: ignore[no-untyped-def]
    c = site.client
    routes = _admin_routes()
    assert len(routes) >= 20
    for method, path in routes:
        response = c.request(method, path, follow_redirects=False)
        assert response.status_code == 303, (method, path, response.status_code)
        assert response.headers["location"].startswith("/admin/sign-in?next=")
        hx = c.request(method, path, headers={"HX-Request": "true"}, follow_redirects=False)
        assert hx.status_code == 401 and hx.headers["hx-redirect"].startswith("/admin/sign-in"), (method, path)
    assert c.get("/admin/issues/1/preview", follow_redirects=False).headers["location"] == "/admin/sign-in?next=/admin/issues/1/preview"


def test_sign_in_session_cookie_and_csrf(site) -> None:  # type: ignore[no-untyped-def]
    c = site.client
    page = c.get("/admin/sign-in")
    cookie = page.headers["set-cookie"]
    assert "nl_csrf=" in cookie and "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    # No token: refused before the password is even looked at.
    refused = c.post("/admin/sign-in", data={"email": EDITOR, "password": PASSWORD})
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = c.post("/admin/sign-in", data={"email": EDITOR, "password": PASSWORD, "csrf_token": "0" * 64})
    assert forged.status_code == 403
    signed = c.post("/admin/sign-in", data={"email": EDITOR, "password": PASSWORD, "csrf_token": csrf_of(page.text), "next": "//evil.example"},
                    follow_redirects=False)  # fmt: skip
    assert signed.status_code == 303 and signed.headers["location"] == "/admin"  # no open redirect
    session_cookie = next(v for k, v in signed.headers.multi_items() if k == "set-cookie" and v.startswith("nl_session="))
    assert "httponly" in session_cookie.lower() and "secure" in session_cookie.lower() and "samesite=lax" in session_cookie.lower()
    assert c.get("/admin/issues").status_code == 200
    # Signed in, a form without the token is still refused; with it, it works.
    assert c.post("/admin/issues").status_code == 403
    token = csrf_of(c.get("/admin/issues").text)
    created = c.post("/admin/issues", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=False)
    assert created.status_code == 303 and created.headers["location"] == "/admin/issues/1"
    assert c.post("/admin/issues", headers={"X-CSRF-Token": token}, follow_redirects=False).status_code == 303  # htmx sends the header
    # Another browser's cookie with this token does not pass.
    other = TestClient(c.app, base_url="https://testserver")
    other.cookies.update({"nl_session": c.cookies["nl_session"]})
    other.get("/admin/sign-in")
    assert other.post("/admin/issues", data={"csrf_token": token}).status_code == 403
    # Signing out ends the session.
    c.post("/admin/sign-out", data={"csrf_token": token})
    assert c.get("/admin/issues", follow_redirects=False).status_code == 303


def test_password_change_ends_sessions_and_http_base_url_drops_secure(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(sqlite_url, NEWSLETTER_BASE_URL="http://localhost:8000", NEWSLETTER_ALLOW_HTTP="1")
    make_site(settings)
    c = TestClient(create_app(settings))  # plain http, as on a laptop
    page = c.get("/admin/sign-in")
    assert "Secure" not in page.headers["set-cookie"]
    sign_in(c)
    assert c.get("/admin/issues").status_code == 200
    from newsletter.editors import set_password

    with session_factory(sqlite_url)() as session:
        set_password(session, EDITOR, "another long password")
    assert c.get("/admin/issues", follow_redirects=False).status_code == 303
    assert "strict-transport-security" not in c.get("/healthz").headers


def test_sign_in_rate_limit(site) -> None:  # type: ignore[no-untyped-def]
    c = site.client
    assert SIGN_IN_LIMIT == 10
    c.app.state.web.sign_in_limiter.limit = 3  # the same limiter, fewer (slow, argon2) attempts to reach it
    token = csrf_of(c.get("/admin/sign-in").text)
    for _ in range(3):
        wrong = c.post("/admin/sign-in", data={"email": EDITOR, "password": "wrong password!", "csrf_token": token})
        assert wrong.status_code == 401 and "Wrong address or password" in wrong.text
        assert "wrong password!" not in wrong.text
    blocked = c.post("/admin/sign-in", data={"email": EDITOR, "password": PASSWORD, "csrf_token": token})
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.text and int(blocked.headers["retry-after"]) > 0
    assert c.get("/admin/issues", follow_redirects=False).status_code == 303  # the right password did not get in


def test_security_headers_on_pages(site) -> None:  # type: ignore[no-untyped-def]
    c = site.client
    for path in ("/admin/sign-in", "/docs", "/healthz", "/unsubscribe/1.1.bad", "/api/issues"):
        headers = c.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert headers["strict-transport-security"] == "max-age=31536000"
    page = c.get("/admin/sign-in").text
    assert "<script>" not in page and '<script src="/static/htmx.min.js"></script>' in page
    htmx = c.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "0BSD" in htmx.text[:300] and len(htmx.content) > 40_000
    docs = c.get("/docs").text
    assert '<script src="/static/swagger/swagger-ui-bundle.js">' in docs and "cdn" not in docs
    assert c.get("/static/swagger/swagger-ui-bundle.js").status_code == 200


def test_errors_are_problem_details(site) -> None:  # type: ignore[no-untyped-def]
    c, h = site.client, site.auth
    missing = c.get("/api/issues/7", headers=h)
    assert missing.status_code == 404
    assert missing.json() == {"type": "urn:newsletter:problem:not-found", "title": "Not found", "status": 404,
                              "detail": "no issue number 7", "instance": "/api/issues/7"}  # fmt: skip
    bad = c.get("/api/articles", params={"limit": 0}, headers=h)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.limit"
    not_json = c.post("/api/issues", content=b"{", headers={**h, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.headers["content-type"] == "application/problem+json"
    nul = c.get("/api/articles", params={"q": "a\x00b"}, headers=h)
    assert nul.status_code == 400
