"""Benchmark: `articles import` and `subscribers import` speed, with same-run baselines.

Articles: the White House corpus (NEWSLETTER_DATA_DIR or ../shared/data) into a fresh database: first with
every field converted at import (the baseline: Markdown, sanitising, html2text and pysbd summaries per record,
as every import did before they were left for first use), then as imports do now in one process (what the web
upload and library calls do) and in worker processes (what the CLI does, one per CPU), then the same file again
(lines skipped by their source hash). CPU ms per article counts this process and its worker processes, and
separately the PostgreSQL backend's (read in /proc when the server runs on this machine). Each first import
starts with empty word tables (`newsletter.related.text.forget_words`), as a new CLI process does.
Subscribers: a generated CSV (100,000 rows by default, in a temporary folder, never kept) with names,
languages, topics, signup dates and attributes; the baseline is a plain executemany of the same rows
already validated (the floor the database sets), then the same CSV imported again (every row unchanged).

    python bench/imports.py                  # SQLite and PostgreSQL at 127.0.0.1 (a temporary database)
    python bench/imports.py --sqlite         # SQLite only
    python bench/imports.py --subscribers 20000
    python bench/imports.py --sqlite --articles-only

Prints rows/s, wall and CPU seconds (this process and its worker processes) and the load average: the
machine is usually shared, so read the same-run ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _scratch_db import pg_database  # bench/ is on sys.path when a bench runs
from sqlalchemy import delete, insert, text
from sqlalchemy.orm import Session

from newsletter.articles import import_articles
from newsletter.db import get_engine, session_factory, upgrade
from newsletter.models import Article, RelatedIndexEntry, Subscriber, SubscriberStatus, utcnow
from newsletter.related.text import forget_words
from newsletter.subscribers import import_subscribers, normalise_address

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NEWSLETTER_DATA_DIR") or ROOT.parent / "shared" / "data")
CORPUS = DATA / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl"


def cpu() -> float:
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of ``fn()``."""
    wall, used = time.perf_counter(), cpu()
    result = fn()
    return result, time.perf_counter() - wall, cpu() - used


def line(what: str, n: int, wall: float, used: float, baseline: float | None = None) -> None:
    ratio = f"{baseline / wall:>8.1f}x" if baseline else f"{'':>9}"
    print(f"  {what:<52} {n:>8,} {wall:>8.2f} {n / wall:>10,.0f} {used:>7.1f} {ratio}  load {os.getloadavg()[0]:.1f}")


def header() -> None:
    print(f"  {'':<52} {'rows':>8} {'wall s':>8} {'rows/s':>10} {'CPU s':>7} {'vs base':>9}")


def server_cpu(session: Session) -> Callable[[], float]:
    """A function giving the CPU seconds so far of the PostgreSQL backend serving ``session`` (its process is
    read in /proc: a server on this machine only), or always 0.0 for SQLite or a server elsewhere."""
    if session.get_bind().dialect.name != "postgresql":
        return lambda: 0.0
    stat = Path(f"/proc/{session.execute(text('SELECT pg_backend_pid()')).scalar()}/stat")
    if not stat.exists():
        return lambda: 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def used() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime (proc(5))

    return used


def empty_archive(url: str) -> None:
    """No articles, and their storage given back (TRUNCATE; SQLite: VACUUM), so each first import writes
    into an empty archive as a new deployment's does, not over the pages the previous run left."""
    with get_engine(url).connect() as conn:
        if url.startswith("sqlite"):
            conn.execute(delete(RelatedIndexEntry))
            conn.execute(delete(Article))
            conn.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM")
        else:
            conn.exec_driver_sql("TRUNCATE related_index, articles RESTART IDENTITY CASCADE")
            conn.commit()


def bench_articles(url: str) -> None:
    if not CORPUS.is_file():
        print(f"  (no corpus at {CORPUS}: articles skipped)")
        return
    factory = session_factory(url)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs = (
        ("everything converted at import (baseline)", workers, False),
        ("one process", 1, None),
        (f"{workers} worker processes (the CLI)", workers, None),
    )
    base = None
    for name, count, defer in runs:
        empty_archive(url)
        forget_words()  # each import starts with the word tables of a new process, as the CLI's does
        with factory() as session:
            server = server_cpu(session)
            before = server()
            report, wall, used = timed(lambda s=session, c=count, d=defer: import_articles(s, CORPUS, workers=c, defer=d))
            served = server() - before
        assert report.created == 1257 and not report.errors, report
        line(f"articles, first import, {name}", report.created, wall, used, base)
        per = used * 1000 / report.created
        print(f"  {'':<52} CPU {per:.2f} ms/article" + (f" + PostgreSQL {served * 1000 / report.created:.2f}" if served else ""))
        base = base or wall
    with factory() as session:
        report, wall, used = timed(lambda s=session: import_articles(s, CORPUS, workers=workers))
    assert report.unchanged == 1257, report
    line("articles, the same file again (unchanged)", report.unchanged, wall, used, base)


def write_csv(path: Path, n: int) -> None:
    rnd = random.Random(1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "name", "lang", "topics", "signed_up", "plan", "country"])
        for i in range(n):
            out.writerow([
                f"user{i}@Example{i % 50}.org", f"User {i} Zoë", rnd.choice(["en", "zh-CN", "zh-TW", "zh-Hans"]),
                rnd.choice(["security;economy", "sport", "", "安全|economy"]), rnd.choice(["", f"2026-01-0{rnd.randint(1, 9)}"]),
                rnd.choice(["pro", "free", ""]), rnd.choice(["US", "CA", "CN"]),
            ])  # fmt: skip


def bench_subscribers(url: str, csv_path: Path, n: int) -> None:
    factory = session_factory(url)
    # Baseline: the same rows, already validated, inserted with a plain executemany in chunks of 1,000.
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = [
            {"email": normalise_address(r["email"]), "name": r["name"], "lang": "en", "topics": [], "attributes": {"plan": r["plan"]},
             "status": SubscriberStatus.ACTIVE, "created_at": utcnow()}
            for r in csv.DictReader(handle)
        ]  # fmt: skip

    def plain() -> int:
        with factory() as session:
            for start in range(0, len(rows), 1000):
                session.execute(insert(Subscriber), rows[start : start + 1000])
                session.commit()
        return len(rows)

    _, base, used = timed(plain)
    line("subscribers, plain executemany (baseline)", n, base, used)
    with factory() as session:
        session.execute(delete(Subscriber))
        session.commit()
    for what in ("subscribers import, new", "subscribers import, again (unchanged)"):
        with factory() as session:
            report, wall, used = timed(lambda s=session: import_subscribers(s, csv_path))
        assert not report.errors and report.created + report.unchanged == n, report
        line(what, n, wall, used, base)


def run(url: str, n: int, csv_path: Path, articles_only: bool = False) -> None:
    upgrade(url)
    print(f"{url.split(':', 1)[0]}: load average at start {os.getloadavg()[0]:.2f}")
    header()
    bench_articles(url)
    if not articles_only:
        bench_subscribers(url, csv_path, n)
    get_engine(url).dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100000)
    parser.add_argument("--sqlite", action="store_true", help="SQLite only")
    parser.add_argument("--articles-only", action="store_true", help="the article import only (no subscribers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "subscribers.csv"
        if not args.articles_only:
            write_csv(csv_path, args.subscribers)
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.subscribers, csv_path, args.articles_only)
        if args.sqlite:
            return
        with pg_database() as url:
            run(url, args.subscribers, csv_path, args.articles_only)


if __name__ == "__main__":
    main()
