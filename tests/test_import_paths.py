"""The fast paths of the imports keep every rule of the slow ones: erased addresses refused, every bad
address named (the memoised domain check does not hide repeats), defaults of new rows, updates merged;
articles converted in worker processes as in one, unchanged lines skipped on re-import, changed ones updated."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from newsletter.articles import ArticleError, import_lines, parse_line, read_jsonl, screened
from newsletter.erasure import erase_subscriber
from newsletter.models import Article, Subscriber, SubscriberStatus
from newsletter.subscribers import import_subscribers, unsubscribe
from newsletter.summaries import SourceRules


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subs.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_erased_suppressed_address_is_refused_on_every_row(session: Session, tmp_path: Path) -> None:
    first = import_subscribers(session, write(tmp_path, "email,name\ngone@example.org,Gone\nstay@example.org,Stay\n"))
    assert first.created == 2
    gone = session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.org"))
    assert gone is not None
    unsubscribe(session, gone.id)
    assert erase_subscriber(session, gone.id)
    again = "email,name,lang\ngone@example.org,A\nnew@example.org,New,zh-TW\ngone@EXAMPLE.org,B\n"
    report = import_subscribers(session, write(tmp_path, again))
    assert report.created == 1 and report.merged == 0
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 4"]
    assert all("erased on its owner's request" in e for e in report.errors)
    assert session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.org")) is None
    new = session.scalar(select(Subscriber).where(Subscriber.email == "new@example.org"))
    assert new is not None and (new.lang, new.status, new.topics, new.attributes) == ("zh-Hant", SubscriberStatus.ACTIVE, [], {})
    assert new.confirmed_at is not None and new.soft_bounces == 0


def test_every_row_with_a_bad_domain_is_named_and_good_domains_normalised(session: Session, tmp_path: Path) -> None:
    rows = ["email", "a@bad_domain.example", "b@bad_domain.example", "c@Good.Example", "d@GOOD.example", "e@bad_domain.example"]
    report = import_subscribers(session, write(tmp_path, "\n".join(rows) + "\n"))
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 3", "line 6"]
    assert sorted(session.scalars(select(Subscriber.email))) == ["c@good.example", "d@good.example"]


def test_new_and_existing_rows_in_one_chunk(session: Session, tmp_path: Path) -> None:
    first = "email,name,lang,topics,plan,signed_up\nold@example.org,Old,zh-TW,安全|economy,免费,2026-01-02T08:30:00+08:00\n"
    import_subscribers(session, write(tmp_path, first))
    old = session.scalar(select(Subscriber).where(Subscriber.email == "old@example.org"))
    assert old is not None and (old.lang, old.topics, old.attributes) == ("zh-Hant", ["economy", "安全"], {"plan": "免费"})
    assert old.created_at == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)
    text = "email,name,plan,country\nold@example.org,Old,pro,US\nfresh@example.org,Fresh,,CA\nfresh@EXAMPLE.ORG,Fresher,pro,\n"
    report = import_subscribers(session, write(tmp_path, text))
    assert (report.created, report.updated, report.merged, report.errors) == (1, 1, 1, [])
    session.expire_all()
    old = session.scalar(select(Subscriber).where(Subscriber.email == "old@example.org"))
    assert old is not None and old.attributes == {"plan": "pro", "country": "US"}
    assert old.created_at == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)
    fresh = session.scalar(select(Subscriber).where(Subscriber.email == "fresh@example.org"))
    assert fresh is not None and fresh.name == "Fresher" and fresh.attributes == {"country": "CA", "plan": "pro"}


# -- articles --------------------------------------------------------------------------------------------
def corpus_lines(n: int) -> list[str]:
    lines = []
    for i in range(n):
        record = {"id": f"a-{i}", "title": f"Story {i}", "lang": "en", "published_at": "2026-11-16T10:00:00Z",
                  "body": f"**Bold** paragraph number {i}. It has two sentences.\n\nAnd a [link](https://example.org/{i})."}  # fmt: skip
        lines.append(json.dumps(record))
    lines[7] = "{not json"
    lines[n - 100] = json.dumps({"id": "nul", "title": "Bad\x00title", "lang": "en"})
    lines[n - 99] = ""
    return lines


def test_conversion_in_worker_processes_yields_what_one_process_does() -> None:
    lines = corpus_lines(400)
    serial = list(read_jsonl(lines, workers=1))
    parallel = list(read_jsonl(lines, workers=2))
    assert [n for n, _ in parallel] == [n for n, _ in serial] == [n for n in range(1, 401) if n != 302]
    assert [r if isinstance(r, dict) else str(r) for _, r in parallel] == [r if isinstance(r, dict) else str(r) for _, r in serial]
    bad = [r for _, r in parallel if isinstance(r, ArticleError)]
    assert [(e.line, e.record_id) for e in bad] == [(8, None), (301, "nul")]


def test_reimporting_unchanged_lines_skips_them_and_changed_ones_update(session: Session) -> None:
    lines = corpus_lines(140)
    first = import_lines(session, lines)
    assert (first.created, first.unchanged, len(first.errors)) == (137, 0, 2)
    assert session.scalar(select(func.count()).where(Article.source_hash.is_not(None))) == 137
    lines[3] = lines[3].replace("Story 3", "Story three")
    again = import_lines(session, lines)
    assert (again.created, again.updated, again.unchanged, len(again.errors)) == (0, 1, 136, 2)  # bad lines reported again
    assert session.scalar(select(Article.title).where(Article.external_id == "a-3")) == "Story three"
    # Other summary rules convert differently: every line is converted again (and found unchanged here).
    rules = (SourceRules("other", drop_lines=(re.compile("Nothing"),)),)
    other = import_lines(session, lines, rules=rules)
    assert (other.created, other.updated, other.unchanged) == (0, 0, 137)
    # An article imported before hashes were kept (NULL) is compared field by field once, then skipped.
    session.execute(update(Article).values(source_hash=None))
    session.commit()
    assert import_lines(session, lines).unchanged == 137
    assert session.scalar(select(func.count()).where(Article.source_hash.is_(None))) == 0


def test_rows_postgresql_refuses_in_a_copy_cost_only_themselves(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    from newsletter.db import session_factory

    with session_factory(pg_url)() as session:
        session.execute(text("ALTER TABLE subscribers ADD CONSTRAINT no_refused CHECK (name <> 'Refused')"))
        session.commit()
        rows = "email,name\n" + "".join(f"p{i}@example.org,{'Refused' if i == 3 else f'P {i}'}\n" for i in range(6))
        report = import_subscribers(session, write(tmp_path, rows))
        assert (report.created, len(report.errors)) == (5, 1)
        assert report.errors[0].startswith("line 5: refused by the database") and "no_refused" in report.errors[0]
        assert sorted(session.scalars(select(Subscriber.name))) == ["P 0", "P 1", "P 2", "P 4", "P 5"]


def test_one_search_screens_records_and_a_refused_one_keeps_its_own_error() -> None:
    """`screened` passes a record only if neither character check (control characters, then NUL, unpaired
    surrogates or nested values) would refuse it; a refused record gets each check's own message and line."""
    good = {"id": "a", "title": "T’s title", "lang": "en", "body": "Tabs\tand\nnew lines, é, 東京", "n": 3, "x": None}
    assert screened(good)
    bad = {
        "title": ({"title": "T\x07"}, "'title' contains a control character (U+0007 at position 2)"),
        "body": ({"body": "b\x85"}, "'body' contains a control character (U+0085 at position 2)"),
        "surrogate": ({"site": "lone \ud800"}, "contains a NUL or an unpaired surrogate character"),
        "nested": ({"tags": ["x\x00"]}, "contains a NUL or an unpaired surrogate character"),
        "key": ({"k\x00": "v"}, "contains a NUL or an unpaired surrogate character"),
    }
    for name, (change, message) in bad.items():
        record = {**good, **change}
        assert not screened(record), name
        line = json.dumps(record, ensure_ascii=name == "surrogate")
        error = parse_line(7, line)
        assert isinstance(error, ArticleError) and (error.line, error.reason) == (7, message), name
    assert not screened({**good, "meta": {"a": "b"}})  # nested: checked by `unstorable`, which passes it
    assert isinstance(parse_line(1, json.dumps({**good, "meta": {"a": "b"}})), dict)
