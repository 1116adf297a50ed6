"""Unit tests for newsletter.articles.import_articles on SQLite and PostgreSQL (the `session` fixture)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from newsletter.articles import import_articles, parse_datetime
from newsletter.models import Article


def _write(path: Path, lines: list[Any]) -> Path:
    """Write JSONL: dicts are dumped, strings written verbatim (for malformed lines)."""
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8"
    )
    return path


def _records() -> list[dict[str, Any]]:
    return [
        {
            "id": "en-1",
            "title": "Bank  raises\nrates",
            "lang": "en",
            "body": "First paragraph here.\n\nSecond.",
            "published_at": "2026-01-05T10:00:00Z",
            "category": "Economy",
            "url": "https://example.org/en-1",
        },
        {"id": "zh-1", "title": "央行加息", "lang": "zh-Hans", "body": "中央银行宣布加息。", "published_at": "2026-01-06"},
        {
            "id": 3,
            "title": "Injected",
            "lang": "en",
            "body_html": '<p>Safe<script>document.location="https://evil.example"</script> text</p><a href="javascript:alert(1)" onclick="x()">l</a>',
            "published_at": "2026-01-07T12:00:00+02:00",
        },
    ]


def _count(session) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).select_from(Article))


def test_import_creates_then_is_idempotent(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "a.jsonl", _records())
    first = import_articles(session, path)
    assert (first.created, first.updated, first.unchanged, first.errors) == (3, 0, 0, [])
    assert _count(session) == 3

    second = import_articles(session, path)
    assert (second.created, second.updated, second.unchanged, second.errors) == (0, 0, 3, [])
    assert _count(session) == 3


def test_import_fields_are_normalised(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import_articles(session, _write(tmp_path / "a.jsonl", _records()))
    en = session.scalar(select(Article).where(Article.external_id == "en-1"))
    assert en.title == "Bank raises rates"
    assert en.summary == "First paragraph here."
    assert en.category == "Economy"
    assert en.url == "https://example.org/en-1"
    assert en.published_at == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    zh = session.scalar(select(Article).where(Article.external_id == "zh-1"))
    assert zh.lang == "zh-Hans"
    assert zh.published_at == datetime(2026, 1, 6, 0, 0, tzinfo=UTC)
    assert zh.category is None
    numeric = session.scalar(select(Article).where(Article.external_id == "3"))
    assert numeric.published_at == datetime(2026, 1, 7, 10, 0, tzinfo=UTC)


def test_import_sanitises_body_html(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import_articles(session, _write(tmp_path / "a.jsonl", _records()))
    art = session.scalar(select(Article).where(Article.external_id == "3"))
    assert art.body_html == '<p>Safe text</p><a rel="noopener noreferrer">l</a>'
    assert "script" not in art.body_html and "evil" not in art.body_text
    assert "onclick" not in art.body_html and "javascript" not in art.body_html


def test_import_changed_record_counts_as_updated(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = _records()
    import_articles(session, _write(tmp_path / "a.jsonl", records))
    records[1]["title"] = "央行再次加息"
    report = import_articles(session, _write(tmp_path / "b.jsonl", records))
    assert (report.created, report.updated, report.unchanged, report.errors) == (0, 1, 2, [])
    session.expire_all()
    assert session.scalar(select(Article.title).where(Article.external_id == "zh-1")) == "央行再次加息"
    assert _count(session) == 3


def test_import_reports_bad_lines_and_imports_the_rest(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = _records()
    lines: list[Any] = [
        good[0],                                                 # line 1
        '{"id": "broken", "title": "x", "lang": "en"',           # line 2: malformed JSON
        "",                                                      # line 3: blank, skipped
        {"id": "fr-1", "title": "Bonjour", "lang": "fr"},        # line 4: unsupported lang
        good[1],                                                 # line 5
        {"id": "no-title", "lang": "en"},                        # line 6: missing title
        {"id": "bad-date", "title": "T", "lang": "en", "published_at": "yesterday"},  # line 7
        good[2],                                                 # line 8
        {"id": "no-lang", "title": "T"},                         # line 9: missing lang
    ]  # fmt: skip
    report = import_articles(session, _write(tmp_path / "mixed.jsonl", lines))
    assert report.created == 3
    assert [e.line for e in report.errors] == [2, 4, 6, 7, 9]
    assert [e.record_id for e in report.errors] == [None, "fr-1", "no-title", "bad-date", "no-lang"]
    assert report.errors[4].reason == "missing 'lang' (one of en, zh-Hans, zh-Hant)"  # was "..., got None"
    assert report.errors[0].reason == "invalid JSON: Expecting ',' delimiter (column 44)"  # no second "line" in it
    assert "'lang' must be one of en, zh-Hans, zh-Hant, got 'fr'" in report.errors[1].reason
    assert str(report.errors[1]).startswith("line 4 (id 'fr-1'): ")
    assert report.errors[2].reason == "missing 'title'"
    assert "'published_at' is not ISO 8601" in report.errors[3].reason
    assert sorted(session.scalars(select(Article.external_id))) == ["3", "en-1", "zh-1"]


def test_import_non_object_line_is_an_error(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = import_articles(session, _write(tmp_path / "a.jsonl", ["[1, 2]", _records()[0]]))
    assert report.created == 1
    assert [(e.line, e.reason) for e in report.errors] == [(1, "not a JSON object")]


def test_import_small_batches_commit_and_stay_idempotent(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path / "a.jsonl", _records())
    report = import_articles(session, path, batch=1)
    assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
    again = import_articles(session, path, batch=2)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)


def test_parse_datetime() -> None:
    assert parse_datetime(None) is None
    assert parse_datetime("") is None
    assert parse_datetime("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_datetime("2026-03-01T08:30:00-05:00") == datetime(2026, 3, 1, 13, 30, tzinfo=UTC)
    assert parse_datetime("2026-03-01T08:30:00Z").tzinfo is not None


def test_import_refuses_fields_of_the_wrong_json_type_by_line(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): a numeric category stopped the whole import with a TypeError (nothing stored, a
    traceback), and other non-string values were stored as their Python text: a summary ``{'a': 1}``, a body
    ``['a', 'b']``, a translation key as the PostgreSQL array literal ``{a}``, an id ``true`` as "True"."""
    base = {"title": "T", "lang": "en", "body": "x", "published_at": "2026-11-18T10:00:00Z"}
    lines: list[Any] = [
        {**base, "id": "cat-int", "category": 5},
        {**base, "id": "summary-dict", "summary": {"a": 1}},
        {**base, "id": "url-int", "url": 7},
        {**base, "id": "body-list", "body": ["a", "b"]},
        {**base, "id": "html-num", "body_html": 42},
        {**base, "id": "key-list", "translation_key": ["a"]},
        {**base, "id": True},
        {**base, "id": 1.5},
        {**base, "id": "fine", "category": None, "summary": None},
    ]
    report = import_articles(session, _write(tmp_path / "types.jsonl", lines))
    assert [(e.line, e.reason) for e in report.errors] == [
        (1, "'category' must be a string, got a number"),
        (2, "'summary' must be a string, got an object"),
        (3, "'url' must be a string, got a number"),
        (4, "'body' must be a string, got an array"),
        (5, "'body_html' must be a string, got a number"),
        (6, "'translation_key' must be a string, got an array"),
        (7, "'id' must be a string or an integer, got true/false"),
        (8, "'id' must be a string or an integer, got a number"),
    ]
    assert report.created == 1 and list(session.scalars(select(Article.external_id))) == ["fine"]
