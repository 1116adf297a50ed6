"""The persisted related-articles index and the per-article blocks of a published issue, on a real database.

Small hand-made archives; the full evaluation lives in bench/related_eval.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter import publishing
from newsletter.articles import import_articles
from newsletter.db import session_factory
from newsletter.issues import create_issue
from newsletter.models import Article, RelatedArticle, RelatedIndexEntry
from newsletter.related.store import load_index, reindex
from newsletter.rendering import render_edition

ARCHIVE = [
    # The issue (published 2026-03-02): two tariff pieces, a football piece, a Chinese rates piece.
    {"id": "tariff-1", "title": "New tariffs on steel and aluminum imports", "body": "The administration imposed tariffs on steel and aluminum imports to protect domestic producers from unfair trade.", "lang": "en", "published_at": "2026-03-02T09:00:00Z"},
    {"id": "sport-1", "title": "Local team wins the football cup final", "body": "The football team celebrated a dramatic win in the cup final on Saturday evening.", "lang": "en", "published_at": "2026-03-01T09:00:00Z"},
    {"id": "tariff-2", "title": "Trade partners weigh retaliation for tariffs", "body": "Trade partners weigh retaliation against the new steel and aluminum import tariffs.", "lang": "en", "published_at": "2026-03-02T08:00:00Z"},
    {"id": "zh-1", "title": "央行宣布加息", "body_html": "<p>中央银行宣布提高利率，以应对通货膨胀压力。经济学家表示加息将抑制借贷。</p>", "lang": "zh-Hans", "published_at": "2026-03-02T19:00:00+08:00"},
    # The archive.
    {"id": "old-tariff-a", "title": "Steel producers welcome import tariffs", "body": "Domestic steel producers said the tariffs on aluminum and steel imports will protect jobs.", "lang": "en", "published_at": "2026-02-20T09:00:00Z"},
    {"id": "old-tariff-b", "title": "Aluminum smelters and the tariff on imports", "body": "Aluminum smelters expect the import tariffs on steel and aluminum to lift prices.", "lang": "en", "published_at": "2026-02-10T09:00:00Z"},
    # The same story as old-tariff-a, filed again a day later under another title: never both.
    {"id": "old-tariff-a-again", "title": "Producers of steel welcome tariffs", "body": "Domestic steel producers said the tariffs on aluminum and steel imports will protect jobs.", "lang": "en", "published_at": "2026-02-21T09:00:00Z"},
    {"id": "old-sport", "title": "Cup final tickets sold out", "body": "Tickets for the football cup final sold out within hours as the team prepared.", "lang": "en", "published_at": "2026-02-25T09:00:00Z"},
    {"id": "frog", "title": "New species of frog found", "body": "Biologists discovered a tiny frog species in the rainforest canopy.", "lang": "en", "published_at": "2026-02-15T09:00:00Z"},
    {"id": "zh-old", "title": "通货膨胀放缓", "body_html": "<p>利率上升后，通货膨胀开始放缓，银行借贷减少，央行表示将继续观察。</p>", "lang": "zh-Hans", "published_at": "2026-02-20T19:00:00+08:00"},
    {"id": "zh-sport", "title": "足球队赢得冠军", "body_html": "<p>球队在周六晚上的决赛中赢得冠军，球迷庆祝。</p>", "lang": "zh-Hans", "published_at": "2026-02-22T19:00:00+08:00"},
    # Published after the issue's newest article: never recommended in it.
    {"id": "future-tariff", "title": "Steel tariffs doubled", "body": "The tariffs on steel and aluminum imports were doubled to protect domestic producers from unfair trade.", "lang": "en", "published_at": "2026-03-05T09:00:00Z"},
]  # fmt: skip


def _write(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _by_external(session: Session) -> dict[str, Article]:
    return {a.external_id: a for a in session.scalars(select(Article))}


def test_import_indexes_only_new_or_changed_articles(sqlite_url: str, tmp_path: Path) -> None:
    with session_factory(sqlite_url)() as session:
        import_articles(session, _write(tmp_path / "a.jsonl", ARCHIVE[:5]))
        entries = {e.article_id: (e.indexed_at, e.text_hash) for e in session.scalars(select(RelatedIndexEntry))}
        assert len(entries) == 5
        assert {e.group for e in session.scalars(select(RelatedIndexEntry))} == {"en", "zh"}
        changed = dict(ARCHIVE[0], body=ARCHIVE[0]["body"] + " Ports reported delays.")
        import_articles(session, _write(tmp_path / "b.jsonl", [changed, *ARCHIVE[1:6]]))
        session.expire_all()
        after = {e.article_id: (e.indexed_at, e.text_hash) for e in session.scalars(select(RelatedIndexEntry))}
        ids = _by_external(session)
        assert len(after) == 6
        assert after[ids["tariff-1"].id][1] != entries[ids["tariff-1"].id][1]  # changed text: indexed again
        for key in ("sport-1", "tariff-2", "zh-1", "old-tariff-a"):  # unchanged: left alone
            assert after[ids[key].id] == entries[ids[key].id]
        # The in-memory index follows the table: one more article, one more row.
        before = len(load_index(session, "en"))
        import_articles(session, _write(tmp_path / "c.jsonl", [ARCHIVE[6]]))
        assert len(load_index(session, "en")) == before + 1


def test_each_article_gets_its_own_block_spread_across_the_issue(db_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url)
    with session_factory(db_url)() as session:
        import_articles(session, _write(tmp_path / "archive.jsonl", ARCHIVE))
        ids = _by_external(session)
        issue = create_issue(session, [ids["tariff-1"], ids["sport-1"], ids["tariff-2"], ids["zh-1"]])
        session.commit()
        counts = publishing.attach_related(session, settings, issue.id)
        rows = list(session.scalars(select(RelatedArticle).where(RelatedArticle.issue_id == issue.id)))
        name = {a.id: a.external_id for a in ids.values()}
        blocks: dict[str, list[str]] = {}
        for row in sorted(rows, key=lambda r: (r.source_article_id or 0, r.rank)):
            blocks.setdefault(name[row.source_article_id or 0], []).append(name[row.article_id])
        picks = [p for block in blocks.values() for p in block]
        assert len(picks) == len(set(picks))  # diversified: a pick appears under one article only
        assert all(len(block) <= 3 for block in blocks.values())
        assert "future-tariff" not in picks and "frog" not in picks
        assert not {"tariff-1", "sport-1", "tariff-2", "zh-1"} & set(picks)
        assert not {"old-tariff-a", "old-tariff-a-again"} <= set(picks)  # one story, shown once
        assert blocks["tariff-1"][0] in {"old-tariff-a", "old-tariff-a-again"}
        assert blocks["sport-1"] == ["old-sport"]  # a tariff piece is never offered under the football final
        assert set(blocks["tariff-2"]) <= {"old-tariff-b", "old-tariff-a", "old-tariff-a-again"} and blocks["tariff-2"]
        assert blocks["zh-1"] == ["zh-old"]
        # zh-Hant is converted from zh-Hans: it shares the zh-Hans rows and shows them in Traditional script.
        assert counts == {"en": 3, "zh-Hans": 1, "zh-Hant": 1}
        assert {r.lang for r in rows} == {"en", "zh-Hans"}
        hant = next(e for e in issue.editions if e.lang == "zh-Hant")
        content = publishing.edition_content(session, settings, issue, hant)
        assert [r.title for r in content.articles[0].related] == ["通貨膨脹放緩"]
        en = next(e for e in issue.editions if e.lang == "en")
        rendered = render_edition(publishing.edition_content(session, settings, issue, en))
        tariff_at, sport_at = rendered.text.index("New tariffs on steel"), rendered.text.index("Local team wins")
        assert tariff_at < rendered.text.index("You might also like") < sport_at
        assert rendered.html.count("You might also like") == 3
        # Running the step again replaces the blocks, nothing doubles.
        publishing.attach_related(session, settings, issue.id)
        assert len(list(session.scalars(select(RelatedArticle).where(RelatedArticle.issue_id == issue.id)))) == len(rows)


def test_articles_added_outside_import_are_indexed_when_an_issue_needs_them(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    settings = make_settings(sqlite_url)
    with session_factory(sqlite_url)() as session:
        when = datetime(2026, 3, 2, tzinfo=UTC)
        a = Article(external_id="x1", title="Steel tariffs rise", body_text="New tariffs on steel imports.", lang="en", published_at=when)
        b = Article(
            external_id="x2", title="Steel imports fall", body_text="Steel imports fell after the tariffs.", lang="en", published_at=when
        )
        session.add_all([a, b])
        session.commit()
        issue = create_issue(session, [a])
        session.commit()
        assert publishing.attach_related(session, settings, issue.id) == {"en": 1}
        assert session.scalar(select(RelatedArticle.article_id).where(RelatedArticle.issue_id == issue.id)) == b.id


def test_reindex_command_rebuilds_the_index(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from newsletter.cli import main

    with session_factory(sqlite_url)() as session:
        import_articles(session, _write(tmp_path / "a.jsonl", ARCHIVE[:4]))
        session.query(RelatedIndexEntry).delete()
        session.commit()
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("NEWSLETTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "related-store-test-key")
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "https://news.example.org")
    result = CliRunner().invoke(main, ["related", "reindex"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("4 articles indexed, 0 unchanged")
    result = CliRunner().invoke(main, ["related", "reindex", "--missing"], catch_exceptions=False)
    assert result.output.startswith("0 articles indexed, 4 unchanged")
    with session_factory(sqlite_url)() as session:
        assert len(list(session.scalars(select(RelatedIndexEntry)))) == 4
        assert reindex(session).indexed == 4


def test_two_processes_indexing_the_same_article_at_once_both_succeed(pg_url: str) -> None:
    """Regression (CI, a restarted pipeline): two sessions index the same new article; the second waited
    on the first's uncommitted row and then failed on the primary key. Now it updates that row."""
    import threading
    from datetime import UTC, datetime

    from newsletter.related.store import index_articles

    factory = session_factory(pg_url)
    with factory() as setup:
        article = Article(external_id="race", title="Steel tariffs", body_text="New tariffs on steel.", lang="en",
                          published_at=datetime(2026, 3, 2, tzinfo=UTC))  # fmt: skip
        setup.add(article)
        setup.commit()
        article_id = article.id
    errors: list[BaseException] = []
    with factory() as first, factory() as second:
        index_articles(first, [first.get_one(Article, article_id)])  # inserted, not committed: the row is locked

        def other() -> None:
            try:
                index_articles(second, [second.get_one(Article, article_id)])
                second.commit()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the first session's row
        first.commit()
        thread.join(10)
    assert errors == []
    with factory() as check:
        assert check.scalar(select(func.count()).select_from(RelatedIndexEntry)) == 1


def test_the_related_step_run_twice_at_once_keeps_one_set_of_blocks(pg_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression (CI): the sweeper restarted a slow pipeline and two ``attach_related`` ran at once; the
    second's rows collided with the first's on (issue, lang, article) and the issue ended ``failed``."""
    import threading

    settings = make_settings(pg_url)
    factory = session_factory(pg_url)
    with factory() as session:
        import_articles(session, _write(tmp_path / "archive.jsonl", ARCHIVE))
        ids = _by_external(session)
        issue = create_issue(session, [ids["tariff-1"], ids["sport-1"], ids["tariff-2"], ids["zh-1"]])
        session.commit()
        issue_id = issue.id
        expected = publishing.attach_related(session, settings, issue_id)
        session.execute(delete(RelatedArticle))
        session.commit()
    for _ in range(5):
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            with factory() as own:
                barrier.wait()
                try:
                    assert publishing.attach_related(own, settings, issue_id) == expected
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        with factory() as check:
            assert check.scalar(select(func.count()).select_from(RelatedArticle)) == sum({"en": 3, "zh-Hans": 1}.values())
