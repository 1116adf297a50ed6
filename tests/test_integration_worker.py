"""The real mode end to end: PostgreSQL, Redis, `celery worker` processes and an SMTP server."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from newsletter import scheduling
from newsletter.articles import import_articles
from newsletter.db import session_factory
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Subscriber
from newsletter.runner import follow, start_publish
from newsletter.subscribers import import_subscribers
from tests.conftest import ROOT
from tests.smtp_server import SMTPServer, free_port

pytestmark = pytest.mark.integration

LANGS = ("en", "zh-Hans", "zh-Hant")
RELATED_HEADING = {"en": "You might also like", "zh-Hans": "您可能还喜欢", "zh-Hant": "您可能也會喜歡"}


def address(i: int) -> str:
    return f"reader{i:03d}@example.org"


def is_permanent(addr: str) -> bool:
    return addr in {address(5), address(105), address(205)}


def rcpt_fault(addr: str, attempt: int) -> str | None:
    """550 for three fixed addresses on every attempt; 421 on the first attempt of every 10th."""
    if is_permanent(addr):
        return "550 5.1.1 mailbox unavailable"
    if int(addr[6:9]) % 10 == 3 and attempt == 1:
        return "421 4.7.0 too many connections, try later"
    return None


def data_fault(addr: str, attempt: int) -> str | None:
    """451 after DATA on the first attempt of another 10%."""
    if int(addr[6:9]) % 10 == 7 and attempt == 1:
        return "451 4.3.0 local error in processing"
    return None


def write_corpus_subset(shared: Path, out: Path, per_corpus: int) -> None:
    """The first ``per_corpus`` records of the White House and 新闻联播 corpora, as one JSONL file."""
    sources = [shared / "corpus-whitehouse/whitehouse_briefing_room.jsonl", shared / "corpus-xinwenlianbo/xwlb_2024H2_items.jsonl"]
    with out.open("w", encoding="utf-8") as handle:
        for source in sources:
            with source.open(encoding="utf-8") as lines:
                for line in itertools.islice(lines, per_corpus):
                    handle.write(line)


@pytest.fixture
def worker_env(pg_url: str, redis_available: str, tmp_path: Path) -> dict[str, str]:
    redis.Redis.from_url(redis_available).flushdb()
    return {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_available,
        "NEWSLETTER_HOME": str(tmp_path / "home"),
        "NEWSLETTER_SECRET_KEY": "integration-secret",
        "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_BACKOFF_BASE": "0.2",
        "NEWSLETTER_BACKOFF_CAP": "1",
        "NEWSLETTER_SWEEP_INTERVAL": "0.5",
        "NEWSLETTER_LEASE_SECONDS": "20",
        "NEWSLETTER_BATCH_SIZE": "25",
        "NEWSLETTER_METRICS_PORT": str(free_port()),
    }


def start_worker(env: dict[str, str], log: Path, beat_schedule: Path) -> subprocess.Popen[bytes]:
    """``celery -A tasks worker -B`` as its own process group, logging to ``log``."""
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-B", "-s", str(beat_schedule),
           "-Q", "render,plan,send,notices", "-c", "2", "--loglevel=INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path, smtp: SMTPServer) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "worker.log"
    proc = start_worker({**worker_env, "SMTP_URL": smtp.url}, log, tmp_path / "beat-schedule")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text(errors="replace")
    print(text[-4000:])
    # Structured logs: each deferral names its issue, delivery and task.
    deferred = [line for line in text.splitlines() if " deferred until " in line]
    assert all("issue_id=" in line and "delivery_id=" in line and "task_id=" in line for line in deferred), deferred[:3]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer(rcpt_fault=rcpt_fault, data_fault=data_fault) as server:
        yield server


def test_publish_with_real_worker_redis_postgres_and_smtp(
    worker_env: dict[str, str], smtp: SMTPServer, worker: subprocess.Popen[bytes], shared_data: Path, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(worker_env["DATABASE_URL"], **{**worker_env, "SMTP_URL": smtp.url})
    corpus = tmp_path / "corpus.jsonl"
    write_corpus_subset(shared_data, corpus, per_corpus=400)
    with (tmp_path / "subscribers.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "lang", "topics"])
        for i in range(300):
            writer.writerow([address(i), f"Reader {i}", LANGS[i % 3], "policy"])

    factory = session_factory(settings.database_url)
    with factory() as session:
        assert not import_articles(session, corpus).errors
        report = import_subscribers(session, tmp_path / "subscribers.csv")
        assert (report.created, report.errors) == (300, [])
        newest = {lang: list(session.scalars(select(Article).where(Article.lang == lang).order_by(Article.published_at.desc()).limit(4)))
                  for lang in ("en", "zh-Hans")}  # fmt: skip
        issue = create_issue(session, newest["en"] + newest["zh-Hans"], titles={"en": "Integration week", "zh-Hans": "集成测试周"})
        session.commit()
        number = issue.number
        titles = {"en": [a.title for a in newest["en"]], "zh-Hans": [a.title for a in newest["zh-Hans"]]}

    issue_id, _ = start_publish(settings, number)
    outcome = follow(settings, issue_id, timeout=240)
    assert outcome.status == "sent", outcome

    # Exactly one message per eligible subscriber, counted at the server by Message-ID.
    by_id = smtp.recorder.by_message_id()
    duplicates = {k: n for k, n in by_id.items() if n > 1}
    print(f"messages at server: {sum(by_id.values())}, duplicates: {len(duplicates)}")
    assert duplicates == {}
    expected = {address(i) for i in range(300) if not is_permanent(address(i))}
    assert set(smtp.recorder.recipients()) == expected
    assert len(by_id) == 297

    with factory() as session:
        subscribers = {s.email: s for s in session.scalars(select(Subscriber))}
        deliveries = {subscribers_email: d for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue_id))
                      for subscribers_email in [d.email]}  # fmt: skip
    # Each message is in the subscriber's language and carries the issue's articles and related block.
    for msg in smtp.recorder.messages:
        to = msg["To"].addresses[0].addr_spec
        lang = subscribers[to].lang
        assert msg["Content-Language"] == lang
        assert msg["Message-ID"] == deliveries[to].message_id
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        source = "en" if lang == "en" else "zh-Hans"
        first_title = titles[source][0]
        if lang == "zh-Hant":
            from newsletter.content import to_traditional

            first_title = to_traditional(first_title)
        assert first_title in text
        assert RELATED_HEADING[lang] in html
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Transient failures were retried and delivered; permanent ones failed once and were not retried.
    for i in range(300):
        d = deliveries[address(i)]
        if is_permanent(address(i)):
            assert (d.status, d.attempts, d.last_smtp_code) == (DeliveryStatus.FAILED, 1, 550)
            assert smtp.recorder.attempts[address(i)] == 1
        elif i % 10 in (3, 7):
            assert (d.status, d.attempts) == (DeliveryStatus.SENT, 2), (address(i), d.last_error)
        else:
            assert (d.status, d.attempts) == (DeliveryStatus.SENT, 1)
    assert smtp.recorder.rejected["421"] == 30 and smtp.recorder.rejected["451"] == 30

    # The worker's Prometheus metrics, summed over its pool processes, agree with the server.
    import urllib.request

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{worker_env['NEWSLETTER_METRICS_PORT']}/metrics", timeout=5).read().decode()
    assert 'newsletter_delivery_outcomes_total{outcome="sent"} 297.0' in scraped
    assert 'newsletter_delivery_outcomes_total{outcome="deferred"} 60.0' in scraped
    assert 'newsletter_delivery_outcomes_total{outcome="failed"} 3.0' in scraped
    assert "newsletter_retries_total 60.0" in scraped
    assert "newsletter_send_seconds_count 360.0" in scraped  # every attempt timed: 297 + 60 + 3
    # The web app's ledger metrics, read from the database and the broker.
    from fastapi.testclient import TestClient

    from newsletter.web import create_app

    ledger = TestClient(create_app(settings)).get("/metrics").text
    assert 'newsletter_deliveries{lang="en",state="sent"} 99.0' in ledger
    assert 'newsletter_issues{status="sent"} 1.0' in ledger
    assert 'newsletter_queue_depth{queue="send"} 0.0' in ledger
    print(json.dumps({"rejected": dict(smtp.recorder.rejected)}))


def test_scheduled_issue_is_published_once_by_beat_even_with_two_beats(
    worker_env: dict[str, str], smtp: SMTPServer, worker: subprocess.Popen[bytes], make_settings, tmp_path: Path
) -> None:
    from datetime import timedelta

    from newsletter.models import Issue, IssueStatus, utcnow

    settings = make_settings(worker_env["DATABASE_URL"], **{**worker_env, "SMTP_URL": smtp.url})
    # A second beat process, as if started by mistake next to the worker's own (-B).
    second_beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(tmp_path / "beat2"), "--loglevel=INFO"],
        cwd=ROOT, env={**os.environ, **worker_env, "SMTP_URL": smtp.url},
        stdout=(tmp_path / "beat2.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        factory = session_factory(settings.database_url)
        with factory() as session:
            now = utcnow()
            article = Article(external_id="sched-1", title="Scheduled story", summary="It fires by itself.", lang="en", published_at=now)
            session.add(article)
            session.add_all(Subscriber(email=address(i), name="", lang="en", topics=[], attributes={}) for i in range(400, 430))
            session.flush()
            issue = create_issue(session, [article])
            session.commit()
            scheduling.schedule_issue(session, settings, issue, utcnow() + timedelta(seconds=2))
            issue_id = issue.id
        deadline = time.monotonic() + 60
        while True:
            with factory() as session:
                status = session.scalar(select(Issue.status).where(Issue.id == issue_id))
            if status == IssueStatus.SENT or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == IssueStatus.SENT
        # Fired once, sent once each (the 421/451 answers the server gives to 20% are retried).
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(400, 430)}
    finally:
        os.killpg(second_beat.pid, signal.SIGTERM)
        second_beat.wait(timeout=20)
