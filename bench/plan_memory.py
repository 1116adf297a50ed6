"""Benchmark: peak Python memory of planning deliveries at 10k and 100k subscribers.

Planning streams the audience in id order (keyset pages of NEWSLETTER_PLAN_CHUNK) and inserts delivery
rows in chunks, so its peak memory should stay flat as the list grows. The baseline, measured in the
same run, is the naive plan that loads the whole audience into memory at once.

    python bench/plan_memory.py                       # PostgreSQL at 127.0.0.1 (a temporary database)
    python bench/plan_memory.py --sqlite              # a temporary SQLite file
    python bench/plan_memory.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from sqlalchemy import create_engine, delete, insert, text

from newsletter import publishing
from newsletter.config import load_settings
from newsletter.db import session_factory, upgrade
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, Issue, IssueStatus, Subscriber, utcnow
from newsletter.segments import audience

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


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


def run(url: str, sizes: list[int]) -> None:
    upgrade(url)
    settings = load_settings(
        {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "bench-secret-key", "NEWSLETTER_BASE_URL": "https://news.example.org"}
    )
    factory = session_factory(url)
    print(f"{'subscribers':>12} {'streamed MiB':>13} {'naive MiB':>10} {'naive/streamed':>15} {'plan s*':>8} {'rows/s*':>9}")
    for n in sizes:
        issue_id = fill(url, n)
        batches: list[int] = []
        with factory() as session:
            naive_mib, _ = measure(lambda s=session, n=n: s.scalars(audience(None, max_subscriber_id=n * 10)).all())
        with factory() as session:

            def plan(s=session, issue_id=issue_id, batches=batches) -> None:  # type: ignore[no-untyped-def]
                publishing.plan_deliveries(s, settings, issue_id, lambda _i, ids: batches.append(len(ids)))

            streamed_mib, seconds = measure(plan)
        assert sum(batches) == n, (sum(batches), n)
        print(f"{n:>12,} {streamed_mib:>13.1f} {naive_mib:>10.1f} {naive_mib / streamed_mib:>15.1f} {seconds:>8.1f} {n / seconds:>9,.0f}")
        with factory() as session:
            session.execute(delete(Delivery))
            session.execute(delete(Issue))
            session.commit()
    print("* timed under tracemalloc, which slows allocation-heavy code several times; memory is the figure here")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--sqlite", action="store_true", help="benchmark SQLite instead of PostgreSQL")
    args = parser.parse_args()
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.sizes)
        return
    name = f"nl_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        run(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", args.sizes)
    finally:
        from newsletter.db import get_engine

        get_engine(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}").dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
