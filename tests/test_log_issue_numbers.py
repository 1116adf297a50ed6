"""Logs name an issue by the number editors see ("issue 1"), not by its internal id, which differs from
the number once a draft was deleted; the id stays in the record's ``issue_id`` field."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from newsletter import logs
from tests.cli_helpers import cli_env  # noqa: F401  (fixture)
from tests.smtp_server import SMTPServer
from tests.test_cli_messages import invoke, run, setup_archive


def issue_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(("issue", "scheduled issue"))]


def test_worker_and_sweeper_logs_use_the_issue_number(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the planner logged "issue 5: planned 13 deliveries" and the auto-pause "issue id 10
    auto-paused" for issues numbered 4 and 8 (ids are never reused, numbers are)."""
    setup_archive(tmp_path, "".join(f"en{i}@example.com,E,en,\n" for i in range(6)))
    # Issue number 7, id 1 (as after deleted drafts on PostgreSQL, whose ids are never reused)
    assert "issue 7 created" in run("issue", "create", "--articles", "a1", "--number", "7")
    caplog.set_level(logging.INFO)
    with SMTPServer(rcpt_fault=lambda _rcpt, _n: "554 5.7.1 relay access denied") as smtp:
        monkeypatch.setenv("SMTP_URL", smtp.url)
        monkeypatch.setenv("NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES", "2")
        invoke("-v", "issue", "publish", "7", "--yes")
    messages = [r.getMessage() for r in issue_lines(caplog)]
    assert any(m.startswith("issue 7: planned 6 deliveries in ") for m in messages), messages
    assert any(m.startswith("issue 7 auto-paused: ") for m in messages), messages
    assert not any(m.startswith(("issue 1", "issue id 1")) for m in messages), messages
    paused = next(r for r in caplog.records if r.getMessage().startswith("issue 7 auto-paused"))
    assert paused.issue_id == 1  # type: ignore[attr-defined]  # the id stays a structured field
    assert " issue_id=1 " in logs.TextFormatter().format(paused) + " "


def test_issue_name_falls_back_to_the_id(tmp_path: Path) -> None:
    """A row that is gone (or a database that cannot answer) still gives a name, never an error."""
    from newsletter.db import session_factory, upgrade

    url = f"sqlite:///{tmp_path / 'n.db'}"
    upgrade(url)
    with session_factory(url)() as session:
        assert logs.issue_name(session, 42) == "issue id 42"
