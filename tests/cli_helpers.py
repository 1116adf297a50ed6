"""The CLI test environment: embedded mode in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


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
