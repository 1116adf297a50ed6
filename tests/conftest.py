"""Shared fixtures: real SQLite and PostgreSQL databases, real Redis, settings, the shared corpora.

A service is used when reachable, started when its binary is installed, else the test skips with a
message naming what to install. Under ``CI=true`` such a skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from newsletter.config import Settings, load_settings
from newsletter.db import session_factory, upgrade

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> None:
    """Skip (or fail under CI=true) because a service or data set is missing."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service or data set is a failure)")
    pytest.skip(what)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def postgres_available() -> None:
    if _port_open("127.0.0.1", 5432):
        return
    if shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir():
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        if _wait_port("127.0.0.1", 5432):
            return
    unavailable("PostgreSQL is not reachable at 127.0.0.1:5432 (install postgresql, or set TEST_PG_ADMIN_URL)")


@pytest.fixture(scope="session")
def redis_available() -> str:
    if not _port_open("127.0.0.1", 6379) and shutil.which("redis-server"):
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"],
            check=False,
        )
        _wait_port("127.0.0.1", 6379)
    if not _port_open("127.0.0.1", 6379):
        unavailable("Redis is not reachable at 127.0.0.1:6379 (install redis-server)")
    return REDIS_TEST_URL


def make_pg_database(admin_url: str = PG_ADMIN_URL) -> tuple[str, Callable[[], None]]:
    """Create a throw-away PostgreSQL database; returns its URL and a function that drops it."""
    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        from newsletter.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture
def pg_url(postgres_available: None) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database."""
    url, drop = make_pg_database()
    upgrade(url)
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on both SQLite and PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
    else:
        yield request.getfixturevalue("pg_url")


def sqlite_draft(path: Path, subscribers: int) -> str:
    """A migrated SQLite database at ``path`` with ``subscribers`` active English subscribers
    (``r0@example.org``, …) and draft issue 1 holding one English article. Returns its URL."""
    from sqlalchemy import insert

    from newsletter.issues import create_issue
    from newsletter.models import Article, Subscriber, utcnow

    url = f"sqlite:///{path}"
    upgrade(url)
    with session_factory(url)() as session:
        now = utcnow()
        session.execute(insert(Subscriber), [{"email": f"r{i}@example.org", "name": "", "lang": "en", "topics": [], "attributes": {},
                                              "status": "active", "created_at": now} for i in range(subscribers)])  # fmt: skip
        article = Article(external_id="c1", title="Story", summary="S.", lang="en", published_at=now)
        session.add(article)
        session.flush()
        create_issue(session, [article])
        session.commit()
    return url


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: the given database URL, an outbox under tmp_path, extra env values."""

    def make(database_url: str, **env: str) -> Settings:
        base = {
            "NEWSLETTER_HOME": str(tmp_path / "home"),
            "DATABASE_URL": database_url,
            "NEWSLETTER_OUTBOX": str(tmp_path / "outbox"),
            "NEWSLETTER_SECRET_KEY": "test-secret",
            "NEWSLETTER_BASE_URL": "https://news.example.org",
        }
        base.update(env)
        return load_settings(base)

    return make


@pytest.fixture
def session(db_url: str):  # type: ignore[no-untyped-def]
    """A session on a fresh database (both backends)."""
    with session_factory(db_url)() as s:
        yield s


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared corpora folder (NEWSLETTER_DATA_DIR, default ../shared/data)."""
    path = Path(os.environ.get("NEWSLETTER_DATA_DIR") or ROOT.parent / "shared" / "data")
    if not (path / "corpus-whitehouse").is_dir():
        unavailable(f"shared data not found at {path} (set NEWSLETTER_DATA_DIR)")
    return path
