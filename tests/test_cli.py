"""The `newsletter` command line on the embedded default (SQLite, in-process worker, outbox)."""

from __future__ import annotations

import email
import json
import os
from collections import Counter
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "NEWSLETTER_HOME": str(tmp_path / "home"),
        "NEWSLETTER_SECRET_KEY": "cli-secret",
        "NEWSLETTER_BASE_URL": "https://news.example.org",
    }
    for key in ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "NEWSLETTER_OUTBOX"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return env


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def read_outbox(path: Path) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted((path / "new").glob("*.eml"))]  # type: ignore[misc]


ARTICLES = [
    {"id": "a0", "title": "Control systems patch deadline debated", "body": "Utilities asked for more time to patch control systems.",
     "category": "Security", "lang": "en", "published_at": "2026-10-01T10:00:00Z"},
    {"id": "z0", "title": "控制系统漏洞修补期限引发讨论", "body_html": "<p>电力企业要求延长控制系统漏洞修补期限。</p>",
     "category": "安全", "lang": "zh-Hans", "published_at": "2026-10-01T10:00:00+08:00"},
    {"id": "a1", "title": "Grid security rules tightened", "body": "Utilities must patch **control systems** within 30 days.\n\nA second paragraph.",
     "category": "Security", "lang": "en", "published_at": "2026-11-16T10:00:00Z"},
    {"id": "a2", "title": "Ransomware hits regional hospitals", "body": "Hospitals restored systems after a ransomware attack on control systems.",
     "category": "Security", "lang": "en", "published_at": "2026-11-10T10:00:00Z"},
    {"id": "a3", "title": "Budget talks resume", "body": "Negotiators met again on the budget <script>alert(1)</script>.",
     "category": "Economy", "lang": "en", "published_at": "2026-11-17T10:00:00Z"},
    {"id": "z1", "title": "电网安全新规出台", "body_html": "<p>电力企业须在30天内修补控制系统漏洞。</p>",
     "category": "安全", "lang": "zh-Hans", "published_at": "2026-11-16T10:00:00+08:00"},
    {"id": "z2", "title": "勒索软件袭击地区医院", "body_html": "<p>医院在勒索软件攻击控制系统后恢复了系统。</p>",
     "category": "安全", "lang": "zh-Hans", "published_at": "2026-11-11T10:00:00+08:00"},
]  # fmt: skip


def test_main_job_from_the_command_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    run("db", "upgrade")
    corpus = tmp_path / "articles.jsonl"
    lines = [json.dumps(a, ensure_ascii=False) for a in ARTICLES]
    lines.insert(2, "{not json")
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["articles", "import", str(corpus)])
    assert result.exit_code == 1  # a record was rejected: the exit status says so
    assert "7 created" in result.output
    assert "line 3" in result.output and "1 rejected" in result.output  # the malformed line is named; the rest imported

    csv_path = tmp_path / "subs.csv"
    csv_path.write_text(
        "email,name,lang,topics\n"
        "ann@example.com,Ann,en,security\n"
        "Ann@EXAMPLE.com,Ann B,en,security;economy\n"  # a different local-part case: a different mailbox
        "ann@Example.COM,Ann,en,security\n"  # same mailbox, domain case differs: merged
        "li@example.cn,李雷,zh-CN,安全\n"
        "chen@example.tw,陳,zh-TW,\n"
        "broken-address,X,en,\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["subscribers", "import", str(csv_path)])
    assert result.exit_code == 1  # the broken address was rejected; the others imported
    assert "4 created, 0 updated, 0 unchanged, 1 merged, 1 rejected" in result.output

    out = run("issue", "create", "--latest", "5", "--since", "2026-11-09", "--until", "2026-11-18", "--title", "en=Week 47")
    assert "issue 1 created with 5 articles; editions: en, zh-Hans, zh-Hant (converted)" in out
    out = run("issue", "preview", "1", "--lang", "zh-Hant")
    assert "wrote issue-1-zh-Hant.html" in out
    preview = (tmp_path / "issue-1-zh-Hant.html").read_text(encoding="utf-8")
    assert "電網安全新規出臺" in preview or "電網安全新規出台" in preview
    assert "<script>" not in preview

    out = run("issue", "publish", "1")
    assert "issue 1: sent" in out
    messages = read_outbox(tmp_path / "home" / "outbox")
    assert Counter(str(m["To"].addresses[0].addr_spec) for m in messages) == Counter(
        {"ann@example.com": 1, "Ann@example.com": 1, "li@example.cn": 1, "chen@example.tw": 1}
    )
    langs = {str(m["To"].addresses[0].addr_spec): m["Content-Language"] for m in messages}
    assert langs == {"ann@example.com": "en", "Ann@example.com": "en", "li@example.cn": "zh-Hans", "chen@example.tw": "zh-Hant"}
    english = next(m for m in messages if m["Content-Language"] == "en")
    assert str(english["Return-Path"]).startswith("<bounces+")  # the VERP envelope sender, as delivered
    assert english["Subject"] == "Week 47 · Issue 1"
    html = english.get_body(("html",)).get_content()
    assert "You might also like" in html and "Control systems patch deadline debated" in html

    out = run("issue", "status", "1")
    assert "issue 1: sent" in out
    assert "sent" in out and "zh-Hant" in out

    # Publishing again is refused with a clear message, and nothing more is sent.
    again = CliRunner().invoke(main, ["issue", "publish", "1"])
    assert again.exit_code != 0 and "already sent" in again.output
    assert len(read_outbox(tmp_path / "home" / "outbox")) == 4


def test_every_command_has_help(cli_env: dict[str, str]) -> None:
    commands = [[], ["db"], ["db", "upgrade"], ["articles", "import"], ["subscribers", "import"], ["issue"], ["issue", "create"],
                ["issue", "preview"], ["issue", "publish"], ["issue", "status"], ["issue", "list"], ["issue", "requeue"], ["issue", "schedule"], ["issue", "pause"], ["issue", "resume"], ["issue", "cancel"], ["segment", "preview"], ["bounces", "process"], ["worker"], ["demo"], ["web"], ["sweep"]]  # fmt: skip
    for command in commands:
        out = run(*command, "--help")
        assert "Usage:" in out, command


def test_demo_on_real_corpora(cli_env: dict[str, str], shared_data: Path, tmp_path: Path) -> None:
    os.environ["NEWSLETTER_DATA_DIR"] = str(shared_data)
    out = run("demo", "--subscribers", "4")
    assert "issue 1: sent" in out
    messages = read_outbox(tmp_path / "home" / "demo" / "outbox")
    recipients = Counter(str(m["To"].addresses[0].addr_spec) for m in messages)
    assert len(recipients) == 12 and set(recipients.values()) == {1}
    by_lang = Counter(m["Content-Language"] for m in messages)
    assert by_lang == Counter({"en": 4, "zh-Hans": 4, "zh-Hant": 4})
    zh = next(m for m in messages if m["Content-Language"] == "zh-Hans")
    assert "新闻联播一周要闻" in str(zh["Subject"])
    assert "您可能还喜欢" in zh.get_body(("html",)).get_content()


def test_issue_with_a_segment_reaches_only_that_audience(cli_env: dict[str, str], tmp_path: Path) -> None:
    run("db", "upgrade")
    corpus = tmp_path / "a.jsonl"
    corpus.write_text("\n".join(json.dumps(a, ensure_ascii=False) for a in ARTICLES[:3]) + "\n", encoding="utf-8")
    run("articles", "import", str(corpus))
    (tmp_path / "s.csv").write_text(
        "email,name,lang,topics\nsec@example.com,S,en,security\neco@example.com,E,en,economy\nboth@example.com,B,en,security;economy\n",
        encoding="utf-8",
    )
    run("subscribers", "import", str(tmp_path / "s.csv"))
    bad = CliRunner().invoke(main, ["issue", "create", "--articles", "a1", "--segment", '{"topics": {"some": ["x"]}}'])
    assert bad.exit_code == 2 and "--segment" in bad.output
    run("issue", "create", "--articles", "a0,a1", "--segment", '{"topics": {"any": ["security"]}}')
    run("issue", "publish", "1")
    recipients = sorted(str(m["To"].addresses[0].addr_spec) for m in read_outbox(tmp_path / "home" / "outbox"))
    assert recipients == ["both@example.com", "sec@example.com"]


def test_subscribers_show(cli_env: dict[str, str], tmp_path: Path) -> None:
    run("db", "upgrade")
    (tmp_path / "s.csv").write_text("email,name,lang,topics,plan\nann@example.com,Ann,en,security,pro\n", encoding="utf-8")
    run("subscribers", "import", str(tmp_path / "s.csv"))
    out = run("subscribers", "show", "ann@EXAMPLE.com")
    assert out.startswith("ann@example.com (Ann): active, en\n")
    assert "topics: security" in out and "attributes: plan=pro" in out
    missing = CliRunner().invoke(main, ["subscribers", "show", "bob@example.com"])
    assert missing.exit_code == 1 and "no subscriber bob@example.com" in missing.output


def test_ctrl_c_in_process_pauses_and_resume_finishes_once(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from sqlalchemy import select

    from newsletter.db import session_factory
    from newsletter.models import Issue, IssueStatus
    from tests.conftest import ROOT, sqlite_draft
    from tests.smtp_server import SMTPServer

    url = sqlite_draft(tmp_path / "ctrlc.db", 200)
    with SMTPServer() as smtp:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NEWSLETTER_OUTBOX")}
        env.update(DATABASE_URL=url, SMTP_URL=smtp.url + "?rate=60", NEWSLETTER_HOME=str(tmp_path), NEWSLETTER_LEASE_SECONDS="300",
                   NEWSLETTER_SECRET_KEY="ctrl-c-secret-key", NEWSLETTER_BASE_URL="https://news.example.org")  # fmt: skip
        cmd = [sys.executable, "-m", "newsletter.cli", "issue", "publish", "1"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(smtp.recorder.messages) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (out, err)
        assert "issue 1 paused; continue with: newsletter issue resume 1" in err
        with session_factory(url)() as session:
            assert session.scalar(select(Issue.status)) == IssueStatus.PAUSED, err
        sent_before = len(smtp.recorder.messages)
        assert 40 <= sent_before < 200
        resumed = subprocess.run([sys.executable, "-m", "newsletter.cli", "issue", "resume", "1"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "issue 1: sent" in resumed.stdout
        assert smtp.recorder.recipients() == {f"r{i}@example.org": 1 for i in range(200)}  # each exactly once


def test_an_old_or_empty_schema_asks_for_db_upgrade(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["issue", "list"])
    assert result.exit_code == 1
    assert "the database has an empty database" not in result.output
    assert "Error: the database has" in result.output and "run 'newsletter db upgrade'" in result.output
    run("db", "upgrade")
    assert CliRunner().invoke(main, ["issue", "list"]).exit_code == 0


def test_the_demo_refuses_configured_services_and_never_mails_anyone_else(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a configured DATABASE_URL the demo refuses without --use-configured-services (and says
    why); with it, its issue reaches only the subscribers it generated, not the people already there."""
    from newsletter.db import session_factory, upgrade
    from newsletter.models import Subscriber

    url = f"sqlite:///{tmp_path / 'production.db'}"
    upgrade(url)
    with session_factory(url)() as session:
        session.add(Subscriber(email="real.person@gmail.com", name="A real person", lang="en"))
        session.commit()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("NEWSLETTER_DATA_DIR", str(tmp_path / "no-corpora"))  # the bundled sample: quick
    refused = CliRunner().invoke(main, ["demo", "--subscribers", "2"])
    assert refused.exit_code == 1
    assert "DATABASE_URL is set: the demo would add generated subscribers to that database" in refused.output
    assert "--use-configured-services" in refused.output
    with session_factory(url)() as session:
        assert session.query(Subscriber).count() == 1  # nothing was done
    out = run("demo", "--subscribers", "2", "--use-configured-services")
    assert "issue 1: sent" in out
    recipients = {str(m["To"].addresses[0].addr_spec) for m in read_outbox(tmp_path / "home" / "outbox")}
    assert "real.person@gmail.com" not in recipients
    assert recipients and all(r.rsplit("@", 1)[1] in ("example.com", "example.net", "example.org") for r in recipients)


def test_a_foreground_publish_says_why_deliveries_wait_when_the_relay_refuses(tmp_path: Path) -> None:
    """Against a closed port the follower does not only print "delivering": it says, once, how many
    deliveries are deferred and why, and where to look."""
    import subprocess
    import sys
    import threading
    import time

    from tests.conftest import ROOT, sqlite_draft
    from tests.smtp_server import free_port

    url = sqlite_draft(tmp_path / "refused.db", 12)
    port = free_port()  # nobody listens there: every delivery is refused at connect
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NEWSLETTER_OUTBOX")}
    env.update(DATABASE_URL=url, SMTP_URL=f"smtp://127.0.0.1:{port}", NEWSLETTER_HOME=str(tmp_path),
               NEWSLETTER_SECRET_KEY="refused-secret-key", NEWSLETTER_BASE_URL="https://news.example.org")  # fmt: skip
    cmd = [sys.executable, "-m", "newsletter.cli", "issue", "publish", "1", "--yes"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 60
    while not any("will retry" in line for line in err) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # a few more polls: the line is not repeated while nothing changes
    proc.kill()  # Ctrl-C (pause) is tested above; here only the follower's output matters
    proc.wait(timeout=20)
    reader.join(timeout=10)
    said = [line for line in err if "will retry" in line]
    # Once per change worth saying: on a loaded machine a first poll may see a part (2 of 12), then the whole.
    assert said and len(said) == len(set(said)), "".join(err)
    assert "12 deferred, will retry: relay refuses connections (" in said[-1] and "see 'newsletter issue status 1'" in said[-1]
    hints = [line for line in err if "Ctrl-C" in line]  # what Ctrl-C does here (this process is the worker), said once
    assert len(hints) == 1 and "Ctrl-C pauses issue 1; 'newsletter issue resume 1' continues it" in hints[0], "".join(err)
