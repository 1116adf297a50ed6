"""The editor verbs of the command line: users, tokens, articles list/search, issue edit/delete/test-send,
the publish confirmation, subscribers erase."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.db import session_factory
from newsletter.editors import authenticate, token_owner
from newsletter.models import ApiToken, Delivery, Subscriber, SubscriberStatus
from tests.cli_helpers import cli_env  # noqa: F401  (fixture)
from tests.smtp_server import SMTPServer

SAMPLE = Path(__file__).resolve().parent.parent / "newsletter" / "sample"


def invoke(*args: str, input: str | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def _db() -> str:
    return load_settings().database_url


def test_users_and_tokens(cli_env: dict[str, str]) -> None:  # noqa: F811
    invoke("db", "upgrade")
    assert "created" in invoke("users", "create", "Ed@Example.org", input="a long password\na long password\n")
    assert "already exists" in invoke("users", "create", "ed@example.org", "--password-stdin", input="another password\n", code=1)
    assert "at least 10" in invoke("users", "create", "x@example.org", "--password-stdin", input="short\n", code=1)
    assert "ed@example.org  active" in invoke("users", "list")
    with session_factory(_db())() as session:
        assert authenticate(session, "Ed@example.org", "a long password") is not None
    invoke("users", "disable", "Ed@example.org")
    with session_factory(_db())() as session:
        assert authenticate(session, "Ed@example.org", "a long password") is None

    out = CliRunner().invoke(main, ["tokens", "create", "ci"], catch_exceptions=False)
    secret = out.stdout.strip()
    assert secret.startswith("nl_") and len(secret) > 40 and "shown only this once" in out.stderr
    with session_factory(_db())() as session:
        stored = session.scalar(select(ApiToken))
        assert stored is not None and secret not in (stored.token_hash, stored.prefix) and token_owner(session, secret) is not None
    assert "already exists" in invoke("tokens", "create", "ci", code=1)
    listed = invoke("tokens", "list")
    assert "ci  nl_" in listed and "live" in listed and secret not in listed
    invoke("tokens", "revoke", "ci")
    assert "revoked" in invoke("tokens", "list")
    with session_factory(_db())() as session:
        assert token_owner(session, secret) is None
    assert invoke("tokens", "create", "ci").strip() != secret  # a revoked token frees its name


def test_articles_edit_delete_test_send_publish_and_erase(cli_env: dict[str, str], monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    invoke("db", "upgrade")
    for name in ("articles-en.jsonl", "articles-zh-Hans.jsonl"):
        invoke("articles", "import", str(SAMPLE / name))
    listed = CliRunner().invoke(main, ["articles", "list", "--lang", "en", "--limit", "2"], catch_exceptions=False)
    assert listed.stdout.splitlines()[0].startswith("sample-en-12  2026-11-22  en") and "1-2 of 12 articles" in listed.stderr
    found = CliRunner().invoke(main, ["articles", "search", "网络安全", "--since", "2026-11-18"], catch_exceptions=False)
    # Titles, summaries and texts are searched: -11 names 网络安全 in its text only.
    assert [line.split()[0] for line in found.stdout.splitlines()] == ["sample-zh-Hans-11", "sample-zh-Hans-09", "sample-zh-Hans-05"]

    invoke("issue", "create", "--articles", "sample-en-01,sample-en-02")
    edited = invoke("issue", "edit", "1", "--add", "sample-zh-Hans-01", "--at", "0", "--remove", "sample-en-02", "--title", "en=Week 47")
    assert "editions: en, zh-Hans, zh-Hant (converted)" in edited and "1. sample-zh-Hans-01" in edited and "sample-en-02" not in edited
    reordered = invoke("issue", "edit", "1", "--order", "sample-en-01,sample-zh-Hans-01")
    assert reordered.index("sample-en-01") < reordered.index("sample-zh-Hans-01")
    assert "no fr edition" in invoke("issue", "edit", "1", "--title", "fr=x", code=1)
    invoke("issue", "create", "--articles", "sample-en-03")
    # Not at a terminal (a script): refused with a line naming --yes, not a bare "Aborted!" after reading EOF.
    refused_delete = invoke("issue", "delete", "2", code=2)
    assert "not at a terminal to confirm; pass --yes" in refused_delete and "Aborted" not in refused_delete
    assert "draft" in invoke("issue", "status", "2")
    assert "issue 2 deleted" in invoke("issue", "delete", "2", "--yes")
    assert "no issue number 2" in invoke("issue", "status", "2", code=1)

    with SMTPServer() as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        out = invoke("issue", "test-send", "1", "--lang", "zh-Hant", "--to", "proof@example.org")
        assert "subject: [TEST] " in out and "sent to proof@example.org" in out
        assert smtp.recorder.messages[0]["X-Newsletter-Test"] == "yes"
        assert "not a valid address" in invoke("issue", "test-send", "1", "--to", "nope", code=1)
        # A list in one --to, as the admin form takes it (it was refused as one invalid address).
        out = invoke("issue", "test-send", "1", "--to", "me@example.org, you@example.org", "--to", "me@example.org")
        assert "sent to me@example.org" in out and "sent to you@example.org" in out
        assert len(smtp.recorder.messages) == 3
        monkeypatch.delenv("SMTP_URL")

    with session_factory(_db())() as session:
        session.add_all([Subscriber(email="ann@example.com", name="Ann", lang="en", topics=[], attributes={}),
                         Subscriber(email="bo@example.com", name="Bo", lang="zh-Hans", topics=[], attributes={})])  # fmt: skip
        session.commit()
    # At a terminal the count is shown and must be confirmed; answering no publishes nothing.
    monkeypatch.setattr("newsletter.cli.issues.interactive", lambda: True)
    refused = CliRunner().invoke(main, ["issue", "publish", "1"], input="n\n")
    assert refused.exit_code == 1 and "goes to 2 subscribers (en 1, zh-Hans 1)" in refused.stderr and "not published" in refused.stderr
    assert "draft" in invoke("issue", "list")
    published = CliRunner().invoke(main, ["issue", "publish", "1"], input="y\n", catch_exceptions=False)
    assert published.exit_code == 0, published.output
    assert "sent" in invoke("issue", "status", "1")
    assert "only a draft can be deleted" in invoke("issue", "delete", "1", "--yes", code=1)
    unasked = invoke("issue", "delete", "1", input="y\n", code=1)  # said before any question is asked
    assert "only a draft can be deleted" in unasked and "Delete issue 1?" not in unasked

    assert "pass --yes" in invoke("subscribers", "erase", "bo@example.com", code=2)
    assert "bo@example.com erased" in invoke("subscribers", "erase", "bo@example.com", "--yes")
    with session_factory(_db())() as session:
        assert session.scalar(select(Subscriber.status).where(Subscriber.name == "")) == SubscriberStatus.ERASED
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.email.like("erased-%"))) == 1
    assert "no subscriber" in invoke("subscribers", "erase", "bo@example.com", "--yes", code=1)


def test_issue_edit_converts_a_new_zh_hans_title_and_note_again(cli_env: dict[str, str]) -> None:  # noqa: F811
    invoke("db", "upgrade")
    invoke("articles", "import", str(SAMPLE / "articles-zh-Hans.jsonl"))
    invoke("issue", "create", "--articles", "sample-zh-Hans-01", "--title", "zh-Hans=软件周报", "--note", "zh-Hans=软件与网络的编者按")
    invoke("issue", "edit", "1", "--title", "zh-Hans=信息周报", "--note", "zh-Hans=新的编者按：信息")
    assert "subject: 資訊週報 · 第 1 期" in invoke("issue", "preview", "1", "--lang", "zh-Hant", "--text")  # was 軟體週報
    text = Path("issue-1-zh-Hant.txt").read_text(encoding="utf-8")  # written in the current folder (cli_env's tmp_path)
    assert "新的編者按：資訊" in text and "軟體與網路" not in text
