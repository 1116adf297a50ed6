"""Forged links and bad files (issue 6, points 6, 7 and 10), on PostgreSQL with a real SMTP server.

Unsubscribe links as they reach a mailbox: https, signed, changed by POST only (a link scanner's
HEAD, OPTIONS or GET changes nothing), still valid after a key rotation, as are VERP return paths and
Message-IDs. Imports of files as people hand them over: another encoding, a BOM, extra cells, NUL and
control characters, CR LF in a name: a clear error or a per-record rejection, never a lost good record,
and never a delivery that fails later because of what the import let in.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from newsletter import publishing
from newsletter.bounces import parse_verp, verp_address
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.db import session_factory
from newsletter.delivery.mailers import SmtpMailer
from newsletter.delivery.send import send_batch
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.tokens import BadToken, message_id
from newsletter.web import create_app
from tests.smtp_server import SMTPServer

pytestmark = pytest.mark.integration

OLD_KEY, NEW_KEY = "old-key-used-for-months", "new-key-after-rotation"


def env_for(url: str, tmp_path: Path, smtp_url: str, keys: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "SMTP_URL": smtp_url, "NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_SECRET_KEY": keys,
            "NEWSLETTER_BASE_URL": "https://news.example.org"}  # fmt: skip


def test_unsubscribe_links_survive_scanners_and_key_rotation(pg_url: str, tmp_path: Path) -> None:
    with SMTPServer() as smtp:
        before = load_settings(env_for(pg_url, tmp_path, smtp.url, OLD_KEY))
        after = load_settings(env_for(pg_url, tmp_path, smtp.url, f"{NEW_KEY},{OLD_KEY}"))
        with session_factory(pg_url)() as session:
            session.add_all([Subscriber(email="ann@example.org", name="Ann", lang="en"), Subscriber(email="bob@example.org", name="Bob")])
            article = Article(external_id="u1", title="Grid rules", summary="S.", body_html="<p>x</p>", body_text="Grid rules.",
                              lang="en", published_at=utcnow())  # fmt: skip
            session.add(article)
            session.flush()
            issue = create_issue(session, [article])
            session.commit()
            issue_id = issue.id
            # Planned under the old key; the key is rotated before the messages go out.
            publishing.request_publish(session, before, issue)
            publishing.attach_related(session, before, issue_id)
            publishing.render_editions(session, before, issue_id)
            ids: list[int] = []
            publishing.plan_deliveries(session, before, issue_id, lambda _i, batch: ids.extend(batch))
            planned = {d.email: d for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue_id))}
            sent = send_batch(session, after, issue_id, ids, lambda: SmtpMailer(smtp.url))
            assert sent.outcomes["sent"] == 2
        messages = {str(m["To"].addresses[0].addr_spec): m for m in smtp.recorder.messages}
        assert len(smtp.recorder.messages) == 2

    ann = messages["ann@example.org"]
    # The Message-ID is the one fixed at planning (old key), not one derived from the new key.
    assert ann["Message-ID"] == planned["ann@example.org"].message_id
    assert ann["Message-ID"] != message_id(NEW_KEY, issue_id, planned["ann@example.org"].subscriber_id, after.mail_domain)
    # List-Unsubscribe: an https URL and the one-click POST header (RFC 8058 §3.1).
    url = str(ann["List-Unsubscribe"]).strip("<> ")
    assert url.startswith("https://news.example.org/unsubscribe/") and ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # VERP return paths made before the rotation still match; made with neither key, they do not.
    old_return_path = verp_address(before, planned["bob@example.org"].id)
    assert parse_verp(after, old_return_path) == planned["bob@example.org"].id
    with pytest.raises(BadToken):
        parse_verp(load_settings(env_for(pg_url, tmp_path, "", NEW_KEY)), old_return_path)

    # A link signed with the old key (already in a mailbox) still works after the rotation.
    from newsletter.tokens import sign

    bob_old_link = f"/unsubscribe/{sign(OLD_KEY, 'unsubscribe', planned['bob@example.org'].subscriber_id, issue_id)}"
    client = TestClient(create_app(after))
    path = url.removeprefix("https://news.example.org")
    for method in ("HEAD", "OPTIONS", "GET"):  # what link scanners and previewers send
        response = client.request(method, path)
        assert response.status_code in (200, 405), (method, response.status_code)
    assert client.get(path).status_code == 200 and "Stop receiving" in client.get(path).text
    with session_factory(pg_url)() as session:
        assert session.scalar(select(Subscriber.status).where(Subscriber.email == "ann@example.org")) == SubscriberStatus.ACTIVE
        assert session.scalar(select(func.count()).select_from(Suppression)) == 0
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # RFC 8058 §3.2
    one_click = {"List-Unsubscribe": "One-Click"}  # a bare POST is refused (RFC 8058 §3.2; tests/test_web.py)
    assert client.post(bob_old_link, data=one_click).status_code == 200
    forged = path.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
    assert client.post(forged, data=one_click).status_code == 400
    with session_factory(pg_url)() as session:
        statuses = {email: status for email, status in session.execute(select(Subscriber.email, Subscriber.status))}
    assert statuses == {"ann@example.org": SubscriberStatus.UNSUBSCRIBED, "bob@example.org": SubscriberStatus.UNSUBSCRIBED}


@pytest.fixture
def cli_pg(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for key in ("REDIS_URL", "SMTP_URL", "NEWSLETTER_OUTBOX"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env_for(pg_url, tmp_path, "", "import-test-secret").items():
        if value:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return pg_url


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def article(i: int, **fields: object) -> dict[str, object]:
    return {"id": f"imp-{i}", "title": f"Story {i}", "body": "Text.", "lang": "en", "published_at": "2026-11-16T10:00:00Z", **fields}


def test_article_imports_never_crash_and_never_drop_a_good_record(cli_pg: str, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(
        (json.dumps(article(1)) + "\n" + json.dumps(article(2, title="Café crème"), ensure_ascii=False) + "\n").encode("latin-1")
    )
    code, out = invoke("articles", "import", str(latin1))
    assert code == 1
    assert f"{latin1}: line 2 is not valid utf-8 (byte 0xe9)" in out and "--encoding" in out and "Traceback" not in out
    with session_factory(cli_pg)() as session:
        assert session.scalar(select(func.count()).select_from(Article)) == 0  # refused before anything was stored
    code, out = invoke("articles", "import", str(latin1), "--encoding", "latin-1")
    assert code == 0 and "2 created" in out

    # 1,200 records with a BOM: one NUL title and one bell character in a chunk of 500 cost only themselves.
    records = [article(100 + i) for i in range(1200)]
    records[300]["title"] = "Bad\x00title"
    records[700]["category"] = "Rings\x07"
    big = tmp_path / "big.jsonl"
    big.write_text("\ufeff" + "\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    code, out = invoke("articles", "import", str(big))
    assert code == 1 and "1198 created, 0 updated, 0 unchanged, 2 rejected" in out
    assert "line 301 (id 'imp-400'): 'title' contains a control character (U+0000 at position 4)" in out
    assert "line 701 (id 'imp-800'): 'category' contains a control character (U+0007 at position 6)" in out

    # A record the database itself refuses (here a CHECK this test adds) costs only itself, too.
    engine = create_engine(cli_pg.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE articles ADD CONSTRAINT no_retracted CHECK (title <> 'Retracted')"))
    engine.dispose()
    refused = tmp_path / "refused.jsonl"
    refused.write_text("\n".join(json.dumps(article(5000 + i, title="Retracted" if i == 3 else f"Fine {i}")) for i in range(6)) + "\n")
    code, out = invoke("articles", "import", str(refused))
    assert code == 1 and "5 created, 0 updated, 0 unchanged, 1 rejected" in out
    assert "line 4 (id 'imp-5003'): refused by the database" in out


def test_subscriber_imports_reject_per_row_and_clean_names_so_no_delivery_fails(
    cli_pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = tmp_path / "subs.csv"
    csv_path.write_bytes(
        "\ufeffemail,name,lang,topics\r\n"
        "ann@example.org,Ann,en,security\r\n"
        'crlf@example.org,"Eve\r\nBcc: victim@example.net",en,\r\n'  # a header injection attempt, cleaned
        "extra@example.org,Extra,en,security,surplus,cells\r\n"
        "nul@example.org,Nu\x00ll,en,\r\n"
        "attr@example.org,Attr,en,sec\x1burity\r\n"
        "zoe@example.org,Zoë,en,\r\n".encode()
    )
    code, out = invoke("subscribers", "import", str(csv_path))
    assert code == 1 and "3 created, 0 updated, 0 unchanged, 0 merged, 3 rejected" in out
    assert "line 5: 6 cells, but the header names 4 columns" in out  # line numbers count the two lines of the quoted name
    assert "line 6: the name contains a control character (U+0000 at position 3)" in out
    assert "line 7: column 'topics' contains a control character (U+001B at position 4)" in out
    with session_factory(cli_pg)() as session:
        names = {email: name for email, name in session.execute(select(Subscriber.email, Subscriber.name))}
    assert names == {"ann@example.org": "Ann", "crlf@example.org": "Eve Bcc: victim@example.net", "zoe@example.org": "Zoë"}

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nrene@example.org,René\n".encode("latin-1"))
    code, out = invoke("subscribers", "import", str(latin1))
    assert code == 1 and f"{latin1}: line 2 is not valid utf-8 (byte 0xe9)" in out and "--encoding latin-1" in out
    code, out = invoke("subscribers", "import", str(latin1), "--encoding", "latin-1")
    assert code == 0 and "1 created" in out

    # Every imported subscriber can be mailed: the cleaned name becomes a proper display name.
    corpus = tmp_path / "a.jsonl"
    corpus.write_text(json.dumps(article(1)) + "\n", encoding="utf-8")
    assert invoke("articles", "import", str(corpus))[0] == 0
    assert invoke("issue", "create", "--articles", "imp-1")[0] == 0
    with SMTPServer() as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        code, out = invoke("issue", "publish", "1")
    assert code == 0, out
    assert "issue 1 sent: sent 4" in out
    recipients = Counter(str(m["To"].addresses[0].addr_spec) for m in smtp.recorder.messages)
    assert recipients == Counter({"ann@example.org": 1, "crlf@example.org": 1, "zoe@example.org": 1, "rene@example.org": 1})
    eve = next(m for m in smtp.recorder.messages if "crlf@" in str(m["To"]))
    assert eve["To"].addresses[0].display_name == "Eve Bcc: victim@example.net" and eve["Bcc"] is None
    with session_factory(cli_pg)() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.FAILED)) == 0
