"""Benchmark: speed and peak Python memory of planning deliveries at 10k and 100k subscribers.

Planning runs one INSERT … SELECT per range of NEWSLETTER_PLAN_CHUNK subscriber ids (the database selects
the audience, assigns editions and computes Message-IDs), so its speed is the database's and its peak
memory stays flat as the list grows. Baselines measured in the same run: the previous planner (the
audience streamed through the ORM in keyset pages, rows built in Python and inserted with executemany,
then their ids selected and marked enqueued) for speed, and the naive plan that loads the whole audience
into memory at once for memory. Speed is timed without tracemalloc; memory in a second run under it.

    python bench/plan_memory.py                       # PostgreSQL at 127.0.0.1 (a temporary database)
    python bench/plan_memory.py --sqlite              # a temporary SQLite file
    python bench/plan_memory.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from _scratch_db import pg_database  # bench/ is on sys.path when a bench runs
from sqlalchemy import delete, insert, select, update

from newsletter import publishing
from newsletter.config import Settings, load_settings
from newsletter.db import session_factory, upgrade
from newsletter.delivery import ledger
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, utcnow
from newsletter.segments import audience, edition_for, stream_audience
from newsletter.tokens import message_id


def previous_plan(session, settings: Settings, issue_id: int, enqueue) -> int:  # type: ignore[no-untyped-def]
    """The planner this replaced (commit 6116cc9), kept as the same-run baseline: the audience through the
    ORM in keyset pages, one row dict per subscriber built in Python, executemany, then the ids selected."""
    issue = session.get_one(Issue, issue_id)
    langs = [e.lang for e in issue.editions]
    planned = 0
    frozen = issue.audience_max_subscriber_id
    for chunk in stream_audience(session, issue.segment, max_subscriber_id=frozen, chunk=settings.plan_chunk_size):
        now = utcnow()
        rows = []
        for sub in chunk:
            lang = edition_for(sub.lang, langs)
            rows.append({
                "issue_id": issue_id, "subscriber_id": sub.id, "email": sub.email, "lang": lang or sub.lang,
                "status": DeliveryStatus.PENDING if lang else DeliveryStatus.SKIPPED, "skip_reason": None if lang else "no-edition",
                "message_id": message_id(settings.secret_key, issue_id, sub.id, settings.mail_domain),
                "attempts": 0, "created_at": now, "updated_at": now,
            })  # fmt: skip
        planned += ledger.insert_ignore(session, rows)
        ids = list(
            session.scalars(
                select(Delivery.id)
                .where(Delivery.issue_id == issue_id, Delivery.subscriber_id.in_([s.id for s in chunk]),
                       Delivery.status == DeliveryStatus.PENDING, Delivery.enqueued_at.is_(None))
                .order_by(Delivery.id)
            )
        )  # fmt: skip
        ledger.mark_enqueued(session, ids, now)
        session.execute(update(Issue).where(Issue.id == issue_id).values(pipeline_heartbeat_at=now))
        session.commit()
        for start in range(0, len(ids), settings.batch_size):
            enqueue(issue_id, ids[start : start + settings.batch_size])
    return planned


def reset(url: str) -> int:
    """Delete the deliveries and put a fresh issue in ``publishing`` over the same subscribers; its id."""
    factory = session_factory(url)
    with factory() as session:
        session.execute(delete(Delivery))
        session.execute(delete(Issue))
        now = utcnow()
        article = Article(external_id=f"bench-{uuid.uuid4().hex}", title="Bench", lang="en", published_at=now)
        session.add(article)
        session.flush()
        issue = create_issue(session, [article])
        issue.status = IssueStatus.PUBLISHING
        issue.audience_max_subscriber_id = 10**9
        session.commit()
        return issue.id


def fill(url: str, n: int) -> int:
    """Insert ``n`` active subscribers and a one-article issue in ``publishing``; return the issue id."""
    factory = session_factory(url)
    with factory() as session:
        session.execute(delete(Delivery))
        session.execute(delete(Subscriber))
        now = utcnow()
        for start in range(0, n, 10000):
            session.execute(
                insert(Subscriber),
                [{"email": f"s{i}@bench.example", "name": f"S {i}", "lang": ("en", "zh-Hans", "zh-Hant")[i % 3], "topics": [],
                  "attributes": {}, "status": "active", "created_at": now} for i in range(start, min(n, start + 10000))],
            )  # fmt: skip
        article = Article(external_id=f"bench-{uuid.uuid4().hex}", title="Bench", lang="en", published_at=now)
        session.add(article)
        session.flush()
        issue = create_issue(session, [article])
        issue.status = IssueStatus.PUBLISHING
        issue.audience_max_subscriber_id = n * 10
        session.commit()
        return issue.id


def measure(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(peak MiB, seconds) of ``fn()`` under tracemalloc."""
    tracemalloc.start()
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20, elapsed


def run(url: str, sizes: list[int], chunk: int) -> None:
    upgrade(url)
    settings = load_settings({
        "DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org",
        "NEWSLETTER_PLAN_CHUNK": str(chunk),
    })  # fmt: skip
    factory = session_factory(url)
    print(f"database {url.split(':', 1)[0]}, NEWSLETTER_PLAN_CHUNK={chunk}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'subscribers':>12} {'plan s':>7} {'rows/s':>9} {'previous s':>11} {'rows/s':>8} {'speed-up':>9} "
          f"{'planned MiB':>12} {'naive MiB':>10} {'naive/planned':>14}")  # fmt: skip
    for n in sizes:
        fill(url, n)
        timings: dict[str, float] = {}
        for name, planner in (("previous", previous_plan), ("plan", publishing.plan_deliveries)):
            issue_id = reset(url)
            batches: list[int] = []
            with factory() as session:
                started = time.perf_counter()
                planner(session, settings, issue_id, lambda _i, ids, batches=batches: batches.append(len(ids)))
                timings[name] = time.perf_counter() - started
            assert sum(batches) == n, (name, sum(batches), n)
        with factory() as session:
            naive_mib, _ = measure(lambda s=session: s.scalars(audience(None, max_subscriber_id=10**9)).all())
        issue_id = reset(url)
        with factory() as session:
            planned_mib, _ = measure(lambda s=session, i=issue_id: publishing.plan_deliveries(s, settings, i, lambda _i, _ids: None))
        plan, previous = timings["plan"], timings["previous"]
        print(f"{n:>12,} {plan:>7.2f} {n / plan:>9,.0f} {previous:>11.2f} {n / previous:>8,.0f} {previous / plan:>8.1f}x "
              f"{planned_mib:>12.1f} {naive_mib:>10.1f} {naive_mib / planned_mib:>14.1f}")  # fmt: skip
    print(f"load average at end {os.getloadavg()[0]:.2f} (2 cores, shared: read the same-run ratio)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--chunk", type=int, default=None, help="NEWSLETTER_PLAN_CHUNK (default: the product's default)")
    parser.add_argument("--sqlite", action="store_true", help="benchmark SQLite instead of PostgreSQL")
    args = parser.parse_args()
    chunk = args.chunk or Settings.plan_chunk_size
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.sizes, chunk)
        return
    with pg_database() as url:
        run(url, args.sizes, chunk)


if __name__ == "__main__":
    main()
