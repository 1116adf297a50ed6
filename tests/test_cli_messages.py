"""What the `newsletter` commands say in the cases a first user tripped over (trial report of 2026-12-01):
each message names the real cause and what to do, on the embedded default with a real SQLite database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from newsletter.cli import main
from newsletter.db import session_factory
from tests.cli_helpers import cli_env  # noqa: F401  (fixture)
from tests.conftest import ROOT, sqlite_draft
from tests.smtp_server import free_port

ARTICLES = [
    {"id": "a1", "title": "Grid security rules tightened", "body": "Utilities must patch control systems.", "category": "Security",
     "lang": "en", "published_at": "2026-11-16T10:00:00Z"},
    {"id": "a2", "title": "Budget talks resume", "body": "Negotiators met again.", "category": "Economy", "lang": "en",
     "published_at": "2026-11-17T10:00:00Z"},
    {"id": "z1", "title": "电网安全新规出台", "body_html": "<p>电力企业须在30天内修补控制系统漏洞。</p>", "category": "安全",
     "lang": "zh-Hans", "published_at": "2026-11-16T10:00:00+08:00"},
]  # fmt: skip


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def run(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def setup_archive(tmp_path: Path, subscribers: str = "") -> None:
    """Schema, the articles above and (CSV rows after the header) subscribers."""
    run("db", "upgrade")
    corpus = tmp_path / "articles.jsonl"
    corpus.write_text("\n".join(json.dumps(a, ensure_ascii=False) for a in ARTICLES) + "\n", encoding="utf-8")
    run("articles", "import", str(corpus))
    if subscribers:
        (tmp_path / "s.csv").write_text("email,name,lang,topics\n" + subscribers, encoding="utf-8")
        run("subscribers", "import", str(tmp_path / "s.csv"))


def database_url(env: dict[str, str]) -> str:
    return f"sqlite:///{Path(env['NEWSLETTER_HOME']) / 'newsletter.db'}"


def test_publish_names_a_missing_issue_before_contacting_the_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with Redis unreachable, `issue publish 99` said "cannot reach the broker ...; issue 99 was
    not changed" after seconds of retrying, instead of "no issue number 99"."""
    from newsletter.db import upgrade

    url = f"sqlite:///{tmp_path / 'n.db'}"
    upgrade(url)
    for key, value in {"DATABASE_URL": url, "REDIS_URL": "redis://127.0.0.1:1/0", "NEWSLETTER_HOME": str(tmp_path),
                       "NEWSLETTER_SECRET_KEY": "missing-issue-key", "NEWSLETTER_BASE_URL": "https://news.example.org"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SMTP_URL", raising=False)
    started = time.monotonic()
    result = invoke("issue", "publish", "99", "--yes")
    assert result.exit_code == 1 and "Error: no issue number 99" in result.output, result.output
    assert "broker" not in result.output and time.monotonic() - started < 5


def test_publishing_to_nobody_is_refused_unless_asked_for(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: 0 recipients printed "goes to 0 subscribers ()" and went on (asked "Publish now?" at a
    terminal). Now it says so and stops with exit status 1; --allow-no-recipients publishes anyway."""
    setup_archive(tmp_path, "en@example.com,E,en,\n")
    run("issue", "create", "--articles", "z1")  # Chinese only: the one (English) reader has no edition
    refused = invoke("issue", "publish", "1", "--yes")
    assert refused.exit_code == 1, refused.output
    assert "issue 1 goes to 0 subscribers\n  1 more read a language without an edition" in refused.output
    assert "()" not in refused.output
    assert "not published: issue 1 would go to nobody" in refused.output and "--allow-no-recipients" in refused.output
    assert "Publish now?" not in refused.output
    assert "draft" in run("issue", "list")  # nothing changed
    out = run("issue", "publish", "1", "--allow-no-recipients")
    assert "issue 1: sent" in out


def test_issue_create_names_an_unsupported_language(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: `issue create --latest 5 --lang fr` said "no articles selected"."""
    setup_archive(tmp_path)
    result = invoke("issue", "create", "--latest", "5", "--lang", "fr")
    assert result.exit_code == 2
    assert "'fr' is not a supported language; supported: en, zh-Hans, zh-Hant" in result.output
    assert "issue 1 created" in run("issue", "create", "--latest", "5", "--lang", "ZH-hans")  # letter case does not matter


def test_issue_list_shows_each_title(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    setup_archive(tmp_path)
    run("issue", "create", "--articles", "a1,z1", "--title", "en=Week 47")
    run("issue", "create", "--articles", "a2", "--title", "en=" + "A very long title for an issue about budgets " * 3)
    lines = run("issue", "list").splitlines()
    assert lines[0] == "    1  draft       Week 47  [en, zh-Hans, zh-Hant; 2 articles]", lines
    assert "A very long title for an issue about bu…  [en; 1 article]" in lines[1], lines


def test_subscribers_show_gives_the_skip_reason(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: a skipped delivery read "issue 1: skipped after 0 attempt(s)", without the reason."""
    setup_archive(tmp_path, "en@example.com,E,en,\nzh@example.com,Z,zh-Hans,\n")
    run("issue", "create", "--articles", "z1")  # no English edition: the English reader is skipped
    run("issue", "publish", "1", "--yes")
    out = run("subscribers", "show", "en@example.com")
    assert "  issue 1: skipped: no-edition (the issue has no edition in this subscriber's language)" in out, out
    assert "issue 1: sent after 1 attempt\n" in run("subscribers", "show", "zh@example.com")


def test_requeue_says_why_nothing_was_requeued(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: "0 failed deliveries queued again", silent that the failure was a suppressed address."""
    from newsletter.models import Delivery, DeliveryStatus, Suppression

    setup_archive(tmp_path, "ann@example.com,A,en,\nbob@example.com,B,en,\n")
    run("issue", "create", "--articles", "a1")
    run("issue", "publish", "1", "--yes")
    assert "  issue 1 has no failed deliveries" in run("issue", "requeue", "1")
    with session_factory(database_url(cli_env))() as session:  # ann's address bounced hard after a failure
        session.execute(update(Delivery).where(Delivery.email == "ann@example.com").values(status=DeliveryStatus.FAILED))
        session.add(Suppression(email="ann@example.com", reason="hard-bounce"))
        session.commit()
    out = run("issue", "requeue", "1")
    assert out == (
        "issue 1: 0 failed deliveries queued again\n"
        "  1 failed delivery is for suppressed addresses (hard bounce, complaint or unsubscribe) and stays failed\n"
    )


def test_cancel_says_that_claims_in_flight_are_cancelled_later(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: "624 deliveries skipped", then status showed 663: claims held by batches under way are
    skipped when their batches notice. The command now counts them and says so."""
    from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus

    setup_archive(tmp_path, "".join(f"r{i}@example.com,R,en,\n" for i in range(4)))
    run("issue", "create", "--articles", "a1")
    run("issue", "publish", "1", "--yes")
    with session_factory(database_url(cli_env))() as session:  # the state of an issue mid-send: 1 claimed, 3 waiting
        session.execute(update(Issue).values(status=IssueStatus.SENDING, finished_at=None))
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
        session.execute(update(Delivery).where(Delivery.id == ids[0]).values(status=DeliveryStatus.SENDING))
        session.execute(update(Delivery).where(Delivery.id.in_(ids[1:])).values(status=DeliveryStatus.PENDING))
        session.commit()
    out = run("issue", "cancel", "1")
    assert out.startswith("issue 1 cancelled; 3 deliveries skipped\n"), out
    assert "  1 delivery claimed by batches under way is cancelled as their batches notice" in out
    assert "'issue status' may show more skipped" in out


def test_web_says_serving_only_once_it_accepts_connections(tmp_path: Path) -> None:
    """Regression: "serving on http://..." came ~20 s before the server accepted connections (the app is
    imported after the line). Now a connection made right after the line is answered."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "DATABASE_URL", "REDIS_URL", "SMTP_URL"))}
    env.update(NEWSLETTER_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    subprocess.run(
        [sys.executable, "-m", "newsletter.cli", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120
    )
    cmd = [sys.executable, "-m", "newsletter.cli", "web", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line == f"serving on http://127.0.0.1:{port}\n", line
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:  # refused before the fix
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_ctrl_c_hint_tells_the_truth_for_each_mode(tmp_path: Path) -> None:
    """With workers Ctrl-C stops only the watching; in-process it pauses the issue (see `_interrupted`)."""
    from newsletter.cli.issues import _ctrl_c_hint
    from newsletter.config import load_settings

    embedded = load_settings({"NEWSLETTER_HOME": str(tmp_path)})
    served = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/15", "NEWSLETTER_SECRET_KEY": "hint-secret-key",
                            "NEWSLETTER_BASE_URL": "https://news.example.org", "NEWSLETTER_HOME": str(tmp_path)})  # fmt: skip
    assert _ctrl_c_hint(served, 7) == "Ctrl-C stops only this watching: the workers go on with issue 7; --no-wait returns without watching"
    assert "Ctrl-C pauses issue 7; 'newsletter issue resume 7' continues it" in _ctrl_c_hint(embedded, 7)


def test_ctrl_c_while_resume_follows_in_process_pauses_the_issue(tmp_path: Path) -> None:
    """In-process (no REDIS_URL) `issue resume` is the worker that retries deferred deliveries, as publish
    is: Ctrl-C pauses the issue and says how to continue (it ended with a bare "Aborted!" and the issue left
    sending with nobody retrying), which is what the deferral line says Ctrl-C does."""
    import signal
    import threading

    from newsletter.models import Issue, IssueStatus

    url = sqlite_draft(tmp_path / "resume.db", 3)
    port = free_port()  # nobody listens there: every delivery is deferred
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NEWSLETTER_OUTBOX")}
    env.update(DATABASE_URL=url, SMTP_URL=f"smtp://127.0.0.1:{port}", NEWSLETTER_HOME=str(tmp_path),
               NEWSLETTER_SECRET_KEY="resume-secret-key", NEWSLETTER_BASE_URL="https://news.example.org")  # fmt: skip

    def interrupt_once_deferred(*args: str, stop: list[str] | None = None) -> tuple[int, str]:
        """Run ``issue ARGS``; once it says what Ctrl-C does, run ``stop`` (a command) or send SIGINT."""
        cmd = [sys.executable, "-m", "newsletter.cli", "issue", *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = time.monotonic() + 60
        while not any("Ctrl-C" in line for line in err) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if stop:
            subprocess.run([sys.executable, "-m", "newsletter.cli", *stop], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
        else:
            # One press is enough: `follow` turns SIGINT into a flag (one landing in a weakref callback was lost).
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        return proc.returncode, "".join(err)

    code, err = interrupt_once_deferred("publish", "1", "--yes", stop=["issue", "pause", "1"])
    assert code == 1 and "issue 1 ended paused" in err, err
    code, err = interrupt_once_deferred("resume", "1")
    assert "Ctrl-C pauses issue 1" in err, err
    assert code == 130 and "interrupted: issue 1 paused; continue with: newsletter issue resume 1" in err, err
    with session_factory(url)() as session:
        assert session.scalar(select(Issue.status)) == IssueStatus.PAUSED


def test_ctrl_c_landing_in_a_weakref_callback_still_stops_following(tmp_path: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    """A SIGINT handled while a weakref callback runs raised KeyboardInterrupt inside the callback, where
    Python prints "Exception ignored" and drops it: `follow` went on polling as if Ctrl-C had not been
    pressed (one press in about ten was lost). SIGINT now only sets a flag that `follow` checks."""
    import signal
    import weakref

    from newsletter.runner import follow

    url = sqlite_draft(tmp_path / "follow.db", 1)
    settings = make_settings(url)

    class Thing:
        pass

    fired: list[bool] = []

    def progress(done: int, total: int) -> None:
        if not fired:
            fired.append(True)
            thing = Thing()
            # The signal arrives while the finalizer's Python code runs (as when a pooled connection is
            # collected inside SQLAlchemy): the handler runs there, at the next bytecode.
            weakref.finalize(thing, os.kill, os.getpid(), signal.SIGINT)
            del thing

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        follow(settings, 1, progress, poll=0.05, timeout=5)
    assert fired and time.monotonic() - started < 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_a_failed_issue_says_how_to_try_again(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: a failed issue's status said only "issue 1: failed (...)"; publishing it again once the
    cause is fixed is the way on (and works, nothing sent twice)."""
    from newsletter.models import Issue, IssueStatus

    setup_archive(tmp_path, "en@example.com,E,en,\n")
    run("issue", "create", "--articles", "a1")
    with session_factory(database_url(cli_env))() as session:  # as a worker records a render failure
        session.execute(update(Issue).values(status=IssueStatus.FAILED, error="newsletter.render_editions: RenderError: boom"))
        session.commit()
    status = run("issue", "status", "1")
    assert "issue 1: failed (newsletter.render_editions: RenderError: boom)" in status
    assert "fix the cause, then run 'newsletter issue publish 1' again: messages already sent are not sent twice" in status
    assert "issue 1: sent" in run("issue", "publish", "1", "--yes")


def test_a_relay_refusing_every_address_as_unknown_suppresses_nobody_and_says_so(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a relay answering 550 5.1.1 to every recipient failed the issue and suppressed every
    address as a hard bounce (the status then said so). A relay that refuses everyone says nothing about
    the addresses: nothing is suppressed, the status says in one line which relay refused how many, and
    `issue requeue` sends them once the relay is fixed."""
    from tests.smtp_server import SMTPServer

    setup_archive(tmp_path, "en1@example.com,E,en,\nen2@example.com,F,en,\n")
    run("issue", "create", "--articles", "a1")
    broken = [True]
    with SMTPServer(rcpt_fault=lambda _rcpt, _n: "550 5.1.1 no such user" if broken[0] else None) as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        failed = invoke("issue", "publish", "1", "--yes")
        assert failed.exit_code == 1, failed.output
        assert (
            f"relay 127.0.0.1:{smtp.port} refused 2 of 2 recipients as unknown (550 5.1.1 no such user) and accepted 0: "
            "no address was suppressed (2 held)"
        ) in failed.output
        assert "then 'newsletter issue requeue 1' sends them again" in failed.output
        assert "now suppressed" not in failed.output and "publish 1' again" not in failed.output
        status = run("subscribers", "show", "en1@example.com")
        assert "active" in status and "hard-bounce" not in status
        broken[0] = False
        assert "issue 1: sent" in run("issue", "requeue", "1")
        assert smtp.recorder.recipients() == {"en1@example.com": 1, "en2@example.com": 1}


def test_rows_an_unclosed_quote_swallows_are_counted_as_rejected(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: a quote opened on line 3 and never closed swallowed the 3 rows below it, yet the summary said
    "1 rejected" — 4 rows were not imported."""
    run("db", "upgrade")
    path = tmp_path / "subs.csv"
    rows = ["email,name,lang", "ok@example.net,OK,en", '"lost1@example.net,A,en', "lost2@example.net,B,en",
            "lost3@example.net,C,en", "lost4@example.net,D,en"]  # fmt: skip
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = invoke("subscribers", "import", str(path))
    assert result.exit_code == 1
    assert "1 created, 0 updated, 0 unchanged, 0 merged, 4 rejected" in result.stdout
    assert "lines 3-6: a quoted cell runs over 4 lines; is a closing quote missing on line 3?" in result.stderr


def test_issue_create_refuses_a_title_for_a_language_without_an_edition(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: `issue create --latest 3 --lang en --title fr=Semaine` created the issue and dropped the
    French title without a word; `issue edit` refuses the same title. Now create refuses it too."""
    setup_archive(tmp_path)
    result = invoke("issue", "create", "--latest", "3", "--lang", "en", "--title", "fr=Semaine")
    assert result.exit_code == 1, result.output
    # It said "issue 1 has no fr edition" of an issue the refusal never made, and not that fr is no language here.
    assert "Error: 'fr' is not a language of this list (en, zh-Hans, zh-Hant); the new issue has no fr edition (editions: en)" in (
        result.output
    )
    note = invoke("issue", "create", "--articles", "a1", "--note", "zh-Hans=编者按")
    assert note.exit_code == 1 and "Error: the new issue has no zh-Hans edition (editions: en)" in note.output, note.output
    assert "draft" not in run("issue", "list")  # nothing created
    assert "issue 1 created" in run("issue", "create", "--articles", "a1", "--title", "en=Week 47")


@pytest.mark.parametrize("end", ["\n", ""])
def test_an_unclosed_quote_on_the_last_line_is_rejected(cli_env: dict[str, str], tmp_path: Path, end: str) -> None:  # noqa: F811
    """Regression: `cr2@example.org,"unterminated,en,` as the last line was imported with the rest of the line
    as the name and the default language (csv ends a quoted cell left open at the end of the file)."""
    run("db", "upgrade")
    path = tmp_path / "subs.csv"
    path.write_text('email,name,lang\nok@example.net,OK,en\ncr2@example.org,"unterminated,en,' + end, encoding="utf-8")
    result = invoke("subscribers", "import", str(path))
    assert result.exit_code == 1, result.output
    assert "1 created, 0 updated, 0 unchanged, 0 merged, 1 rejected" in result.stdout
    assert "line 3: a quoted cell runs to the end of the file; is a closing quote missing on line 3?" in result.stderr
    assert invoke("subscribers", "show", "cr2@example.org").exit_code != 0


def test_an_empty_audience_says_why(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: `segment preview '{"topics": {"any": ["securty"]}}'` said only "0 subscribers in the
    audience", and publishing an issue whose segment matched nobody said "the audience is empty (no active,
    unsuppressed subscribers)" with active subscribers on the list."""
    setup_archive(tmp_path, "a@example.com,A,en,security\nb@example.com,B,en,economy;security\nc@example.com,C,en,\n")
    typo = run("segment", "preview", '{"topics": {"any": ["securty"]}}')
    assert typo == "0 subscribers in the audience: no subscriber has topic 'securty' (known: economy, security)\n", typo
    nobody = run("segment", "preview", '{"topics": {"all": ["economy"]}, "languages": ["zh-Hans"]}')
    assert nobody == "0 subscribers in the audience: the segment matched none of the 3 active subscribers\n", nobody
    assert run("segment", "preview", '{"topics": {"any": ["economy"]}}').startswith("1 subscriber in the audience\n")
    run("issue", "create", "--articles", "a1", "--segment", '{"topics": {"any": ["securty", "sport"]}}')
    refused = invoke("issue", "publish", "1", "--yes")
    assert refused.exit_code == 1, refused.output
    assert (
        "Error: issue 1: the audience is empty: no subscriber has topics 'securty', 'sport' (known: economy, security)\n"
    ) in refused.output, refused.output


def test_pausing_a_paused_issue_says_why_it_is_paused(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """Regression: `issue pause 8` on an issue the sweeper had auto-paused said only "issue 8 is paused; only a
    publishing or sending issue can be paused": not why, nor how to go on."""
    from newsletter.models import Issue, IssueStatus

    setup_archive(tmp_path, "en@example.com,E,en,\n")
    run("issue", "create", "--articles", "a1")
    run("issue", "publish", "1", "--yes")
    with session_factory(database_url(cli_env))() as session:  # as the sweeper leaves it
        error = "auto-paused: 12 failed vs 3 sent; last error: 554 5.7.1 relay access denied"
        session.execute(update(Issue).values(status=IssueStatus.PAUSED, error=error))
        session.commit()
    result = invoke("issue", "pause", "1")
    assert result.exit_code == 1
    assert result.output == (
        "Error: issue 1 is already paused (auto-paused: 12 failed vs 3 sent; last error: 554 5.7.1 relay access denied); "
        "continue with: newsletter issue resume 1\n"
    ), result.output
    with session_factory(database_url(cli_env))() as session:  # an editor's pause: no reason recorded
        session.execute(update(Issue).values(error=None))
        session.commit()
    assert (
        "issue 1 is already paused (paused by an editor); continue with: newsletter issue resume 1" in invoke("issue", "pause", "1").output
    )


def test_following_a_resumed_issue_does_not_repeat_the_old_deferral(tmp_path: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression: `issue resume` printed "3 deferred, will retry: relay refuses connections" while the
    issue went on to finish: a resume makes every deferred delivery due at once, and their error was the
    one from before the resume. Only deliveries waiting for a later retry are said to be deferred."""
    from datetime import timedelta

    from newsletter import publishing
    from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
    from newsletter.runner import follow

    url = sqlite_draft(tmp_path / "follow.db", 3)
    settings = make_settings(url)
    with session_factory(url)() as session:  # planned, every delivery deferred by a relay that was down, resumed
        session.execute(update(Issue).values(status=IssueStatus.PUBLISHING, audience_max_subscriber_id=3))
        session.commit()
        issue_id = session.scalar(select(Issue.id))
        publishing.render_editions(session, settings, issue_id)
        assert publishing.plan_deliveries(session, settings, issue_id, lambda *_: None) == 3
        refused = "ConnectionRefusedError: [Errno 111] Connection refused"
        session.execute(update(Delivery).values(status=DeliveryStatus.DEFERRED, last_error=refused, next_attempt_at=utcnow()))
        session.commit()
    said: list[tuple[int, str]] = []
    outcome = follow(settings, issue_id, on_deferred=lambda n, error: said.append((n, error)), poll=0.05, timeout=30)
    assert outcome.status == "sent" and said == [], (outcome, said)  # the embedded follower sent them at once

    with session_factory(url)() as session:  # one waits for a later retry: that one is said, with its error
        session.execute(update(Issue).values(status=IssueStatus.SENDING, finished_at=None))
        later = utcnow() + timedelta(hours=1)
        first = session.scalar(select(Delivery.id).order_by(Delivery.id))
        session.execute(update(Delivery).where(Delivery.id == first).values(status=DeliveryStatus.DEFERRED, last_error=refused,
                                                                            next_attempt_at=later))  # fmt: skip
        session.commit()
    follow(settings, issue_id, on_deferred=lambda n, error: said.append((n, error)), poll=0.05, timeout=0.3)
    assert said == [(1, refused)]


def test_status_counts_claimed_deliveries_once(tmp_path: Path, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Regression: `issue status` showed "sending 116" in the table and "in flight: 17 claimed by workers"
    below it: two reads of the ledger, with a batch claimed (a whole batch goes ``sending`` at once) in
    between. A worker claiming here between the report's statements plays that batch."""
    import sqlite3
    from datetime import timedelta

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from newsletter import publishing, reports
    from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, utcnow

    path = tmp_path / "status.db"
    url = sqlite_draft(path, 5)
    settings = make_settings(url)
    lease = utcnow() + timedelta(minutes=5)
    with session_factory(url)() as session:
        session.execute(update(Issue).values(status=IssueStatus.PUBLISHING, audience_max_subscriber_id=5))
        session.commit()
        issue_id = session.scalar(select(Issue.id))
        publishing.plan_deliveries(session, settings, issue_id, lambda *_: None)
        first = session.scalar(select(Delivery.id).order_by(Delivery.id))
        session.execute(update(Delivery).where(Delivery.id == first).values(status=DeliveryStatus.SENDING, claimed_until=lease))
        session.commit()

    claimed: list[bool] = []

    def another_batch_claims(conn, cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "claimed_until" in statement and not claimed:
            claimed.append(True)
            with sqlite3.connect(path) as raw:  # a worker's claim, committed between two statements of the report
                raw.execute("UPDATE deliveries SET status = 'sending', claimed_until = ? WHERE status = 'pending'", (lease.isoformat(" "),))

    event.listen(Engine, "after_cursor_execute", another_batch_claims)
    try:
        with session_factory(url)() as session:
            rep = reports.report(session, session.get_one(Issue, issue_id))
    finally:
        event.remove(Engine, "after_cursor_execute", another_batch_claims)
    assert claimed and rep.claimed == rep.by_state()["sending"], (rep.claimed, rep.by_state())

    for key, value in {"DATABASE_URL": url, "NEWSLETTER_HOME": str(tmp_path), "NEWSLETTER_SECRET_KEY": "status-key",
                       "NEWSLETTER_BASE_URL": "https://news.example.org"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    for key in ("REDIS_URL", "SMTP_URL", "NEWSLETTER_OUTBOX"):
        monkeypatch.delenv(key, raising=False)
    out = run("issue", "status", "1")
    assert "  sending           5        5\n" in out, out
    assert "  sending: 5 claimed by batches under way (being sent or waiting their turn in their batch)" in out


def test_a_mistyped_command_group_gets_a_suggestion(cli_env: dict[str, str]) -> None:  # noqa: F811
    """Regression: `newsletter subscriber show x` said "No such command 'subscriber'." with no "Did you mean
    'subscribers'?" (the top-level commands load lazily, and click suggests only from those loaded)."""
    result = invoke("subscriber", "show", "x")
    assert result.exit_code == 2
    assert "Error: No such command 'subscriber'. Did you mean 'subscribers'?" in result.output, result.output
    assert "Did you mean 'create'?" in invoke("issue", "craete").output  # subcommands did already


def test_the_progress_bar_starts_at_the_planned_count(tmp_path: Path, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Regression: the publish progress bar started at "0/1" (its length before planning counted the deliveries)."""
    from newsletter.cli import issues as cli_issues
    from newsletter.models import Issue, IssueStatus

    url = sqlite_draft(tmp_path / "bar.db", 3)
    settings = make_settings(url)
    with session_factory(url)() as session:
        session.execute(update(Issue).values(status=IssueStatus.PUBLISHING, audience_max_subscriber_id=3))
        session.commit()
        issue_id = session.scalar(select(Issue.id))
    shown: list[tuple[int, int]] = []
    real_progressbar = cli_issues.click.progressbar

    def progressbar(*args, **kwargs):  # type: ignore[no-untyped-def]  # click's own bar; what it was opened with is noted
        shown.append((kwargs.get("length"), 0))
        return real_progressbar(*args, **kwargs)

    monkeypatch.setattr(cli_issues.click, "progressbar", progressbar)

    def plan_later() -> None:  # the pipeline plans a moment after the bar starts following
        from newsletter import publishing
        from tasks.publish import enqueue_send  # in-process (no REDIS_URL): the batches are sent right here

        time.sleep(0.3)
        with session_factory(url)() as session:
            publishing.render_editions(session, settings, issue_id)
            publishing.plan_deliveries(session, settings, issue_id, enqueue_send)

    import threading

    planner = threading.Thread(target=plan_later)
    planner.start()
    try:
        cli_issues.follow_with_bar(settings, issue_id)
    finally:
        planner.join()
    assert shown == [(3, 0)], shown  # opened once, with the planned count


def test_requeue_names_relay_refusals_it_leaves_suppressed_and_unsuppress_any_relay_releases_them(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (trial): `requeue` said only "N queued again" while deliveries suppressed on a relay's refusal
    stayed failed, and once the relay vouched (accepted more than it refused) `unsuppress` could release nothing."""
    from tests.smtp_server import SMTPServer

    setup_archive(tmp_path, "en1@example.com,E,en,\nen2@example.com,F,en,\nen3@example.com,G,en,\n")
    run("issue", "create", "--articles", "a1")
    refuse = {"en3@example.com"}
    with SMTPServer(rcpt_fault=lambda rcpt, _n: "550 5.1.1 no such user" if rcpt in refuse else None) as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        published = invoke("issue", "publish", "1", "--yes")  # en1, en2 accepted first: the relay vouches, en3 is suppressed
        # It said "'newsletter issue requeue 1' sends them again" of a delivery requeue leaves alone (trial).
        assert published.exit_code == 1 and (
            "1 delivery failed permanently (see 'newsletter issue status 1'; all to addresses now suppressed, which "
            "'newsletter issue requeue 1' does not send to)" in published.output
        ), published.output
        refuse.clear()
        requeued = invoke("issue", "requeue", "1")
        assert requeued.exit_code == 0, requeued.output
        assert "1 failed delivery is for suppressed addresses (hard bounce, complaint or unsubscribe) and stays failed" in requeued.output
        assert (
            '1 of them on a relay\'s "no such user" in this issue; if the relay was wrong: newsletter issue unsuppress 1 --any-relay'
            in requeued.output
        )
        assert "'--any-relay' releases" in run("issue", "unsuppress", "1")  # the relay vouches: nothing by default
        assert "1 address released (active again)" in run("issue", "unsuppress", "1", "--any-relay")
        run("issue", "requeue", "1")
        assert smtp.recorder.recipients() == {"en1@example.com": 1, "en2@example.com": 1, "en3@example.com": 1}


def test_resume_and_requeue_exit_non_zero_unless_the_issue_ends_sent_without_failures(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (trial 2026-12-01, second round): `issue resume` and `issue requeue` wait like `issue publish`
    but exited 0 whatever the end: a resume that ended paused again, or a requeue whose deliveries failed
    again, looked like success to a script, while `publish` exits 1 for the same end."""
    from tests.smtp_server import SMTPServer

    readers = "".join(f"en{i:02d}@example.com,R{i},en,\n" for i in range(20))
    setup_archive(tmp_path, readers)
    run("issue", "create", "--articles", "a1")
    refused = {"all"}
    policy = "550 5.7.1 refused by local policy"  # not an addressing code: nothing is suppressed

    def fault(rcpt: str, _n: int) -> str | None:
        return policy if "all" in refused or rcpt in refused else None

    with SMTPServer(rcpt_fault=fault) as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        published = invoke("issue", "publish", "1", "--yes")  # auto-paused after the relay's first refusals
        assert published.exit_code == 1 and "ended paused" in published.output, published.output
        # The reason is written at the pause, while messages in flight still fail: it named a count of failed
        # deliveries to requeue ("the other 5 failed") beside a status table counting more.
        assert "'newsletter issue requeue 1' the ones that failed ('newsletter issue status 1' counts them)" in published.output
        resumed = invoke("issue", "resume", "1")  # the relay still refuses everyone: paused again
        assert "ended paused" in resumed.output, resumed.output
        assert resumed.exit_code == 1, resumed.output
        refused.clear()
        resumed = invoke("issue", "resume", "1")  # the rest is sent; the refused ones stay failed
        assert resumed.exit_code == 1 and "failed permanently" in resumed.output, resumed.output
        refused.add("en00@example.com")
        requeued = invoke("issue", "requeue", "1")  # all but en00 go now
        assert "1 delivery failed permanently" in requeued.output, requeued.output
        assert requeued.exit_code == 1, requeued.output
        refused.clear()
        requeued = invoke("issue", "requeue", "1")
        assert requeued.exit_code == 0, requeued.output
    assert smtp.recorder.recipients() == {f"en{i:02d}@example.com": 1 for i in range(20)}


def test_issue_edit_takes_the_readmes_combined_form_and_stores_all_or_nothing(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Regression (trial): `issue edit N --add ID --remove ID --order ID,ID` (the README's example) applied --order
    first, so the complete list it names clashed with --add ("appears twice") or --remove ("is not in issue"),
    and the refused command had already stored its --order: each step committed on its own."""
    setup_archive(tmp_path)
    run("issue", "create", "--articles", "a1,a2")
    edited = run("issue", "edit", "1", "--add", "z1", "--remove", "a2", "--order", "z1,a1")
    assert edited.index("1. z1") < edited.index("2. a1") and "a2" not in edited, edited
    refused = invoke("issue", "edit", "1", "--order", "a1,z1", "--title", "en=Week 48", "--note", "en=[x](javascript:alert(1))")
    assert refused.exit_code == 1 and "javascript:" in refused.output, refused.output
    refused = invoke("issue", "edit", "1", "--add", "a2", "--segment", '{"languages": ["fr"]}')
    assert refused.exit_code != 0 and "unknown language 'fr'" in refused.output, refused.output
    unchanged = run("issue", "edit", "1")
    assert unchanged.index("1. z1") < unchanged.index("2. a1") and "a2" not in unchanged, unchanged
    assert "Week 48" not in run("issue", "list")
