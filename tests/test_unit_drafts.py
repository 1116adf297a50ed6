"""What a draft may contain and when an issue may change (newsletter.issues), on both databases."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from newsletter import issues
from newsletter.articles import import_articles
from newsletter.db import session_factory
from newsletter.issues import IssueError, IssueStateError, articles_by_external_id, create_issue
from newsletter.models import Delivery, Issue, IssueStatus, Subscriber
from tests.editor_setup import SAMPLE


def _archive(url: str) -> None:
    with session_factory(url)() as session:
        for name in ("articles-en.jsonl", "articles-zh-Hans.jsonl"):
            import_articles(session, SAMPLE / name)


def test_draft_rules_and_editions(db_url: str) -> None:
    _archive(db_url)
    with session_factory(db_url)() as session:
        a = articles_by_external_id(session, ["sample-en-01", "sample-en-02", "sample-zh-Hans-01"])
        # A title for an edition there is not (yet) is refused, as by update_texts: it used to be dropped silently
        with pytest.raises(IssueError, match=r"^the new issue has no en edition \(editions: none yet: add articles first\)"):
            create_issue(session, [], titles={"en": "dropped: there is no en edition"})
        draft = create_issue(session, [])
        session.commit()
        assert draft.editions == [] and draft.status == IssueStatus.DRAFT
        with pytest.raises(IssueError, match="appears twice"):
            issues.set_articles(session, draft, [a[0], a[0]])
        issues.set_articles(session, draft, [a[2], a[0]])
        assert [(e.lang, e.converted_from) for e in draft.editions] == [("en", None), ("zh-Hans", None), ("zh-Hant", "zh-Hans")]
        issues.update_texts(session, draft, {"zh-Hant": "本週"}, {"en": "note"})
        issues.add_articles(session, draft, [a[1]], position=1)
        assert [x.external_id for x in issues.issue_article_list(draft)] == ["sample-zh-Hans-01", "sample-en-02", "sample-en-01"]
        assert {e.lang: e.title for e in draft.editions}["zh-Hant"] == "本週"  # kept across changes of articles
        issues.move_article(session, draft, a[2], 99)
        assert issues.issue_article_list(draft)[-1].external_id == "sample-zh-Hans-01"
        issues.remove_article(session, draft, a[2])
        assert [e.lang for e in draft.editions] == ["en"]
        with pytest.raises(IssueError, match="at most 300"):
            issues.update_texts(session, draft, {"en": "x" * 301})

        # A publish that failed before planning goes back to draft when edited; one that planned is the record.
        draft.status, draft.error = IssueStatus.FAILED, "render: boom"
        session.commit()
        issues.update_texts(session, draft, {"en": "Fixed"})
        assert (draft.status, draft.error) == (IssueStatus.DRAFT, None)
        session.add(Subscriber(email="ann@example.com", name="", lang="en", topics=[], attributes={}))
        session.flush()
        sid = session.scalar(select(Subscriber.id))
        session.add(Delivery(issue_id=draft.id, subscriber_id=sid, lang="en", email="ann@example.com", message_id="<x@y>"))
        draft.status = IssueStatus.FAILED
        session.commit()
        with pytest.raises(IssueStateError, match="only a draft can be changed"):
            issues.update_texts(session, draft, {"en": "again"})
        with pytest.raises(IssueStateError, match="only a draft can be deleted"):
            issues.delete_issue(session, draft)
        draft.status = IssueStatus.SCHEDULED
        session.commit()
        with pytest.raises(IssueStateError, match="unschedule it first"):
            issues.set_articles(session, draft, [])


def test_two_editors_adding_at_once_both_keep_their_article(pg_url: str) -> None:
    _archive(pg_url)
    with session_factory(pg_url)() as session:
        create_issue(session, articles_by_external_id(session, ["sample-en-01"]))
        session.commit()
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def add(article_id: str) -> None:
        try:
            with session_factory(pg_url)() as session:
                issue = session.scalar(select(Issue))
                issues.issue_article_list(issue)  # both read the same list first
                barrier.wait()
                issues.add_articles(session, issue, articles_by_external_id(session, [article_id]))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in ("sample-en-02", "sample-en-03")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures
    with session_factory(pg_url)() as session:
        issue = session.scalar(select(Issue))
        ids = {a.external_id for a in issues.issue_article_list(issue)}
        positions = sorted(item.position for item in issue.items)
    assert ids == {"sample-en-01", "sample-en-02", "sample-en-03"}
    assert positions == [0, 1, 2]  # without the lock both would land at position 1, in no defined order


def test_a_converted_zh_hant_edition_follows_zh_hans_edits_unless_written(db_url: str) -> None:
    _archive(db_url)
    with session_factory(db_url)() as session:
        zh = articles_by_external_id(session, ["sample-zh-Hans-01"])
        draft = create_issue(session, zh, titles={"zh-Hans": "软件周报"}, notes={"zh-Hans": "软件与网络的编者按"})
        session.commit()

        def hant() -> tuple[str, str]:
            edition = {e.lang: e for e in draft.editions}["zh-Hant"]
            return edition.title, edition.editors_note

        assert hant() == ("軟體週報", "軟體與網路的編者按")
        # The trial report's case: a new zh-Hans title and note are converted again (stale before).
        issues.update_texts(session, draft, {"zh-Hans": "信息周报"}, {"zh-Hans": "新的编者按：信息"})
        assert hant() == ("資訊週報", "新的編者按：資訊")
        # An explicitly written zh-Hant title stays; the note, still derived, follows.
        issues.update_texts(session, draft, {"zh-Hant": "我們的週報"})
        issues.update_texts(session, draft, {"zh-Hans": "网络周报"}, {"zh-Hans": "软件"})
        assert hant() == ("我們的週報", "軟體")
        # Both given in one call: the zh-Hant text given wins.
        issues.update_texts(session, draft, notes={"zh-Hans": "信息", "zh-Hant": "自己寫的"})
        assert hant() == ("我們的週報", "自己寫的")
        issues.update_texts(session, draft, notes={"zh-Hans": "软件"})
        assert hant() == ("我們的週報", "自己寫的")

        # A zh-Hant title written at creation is not a derived one either.
        written = create_issue(session, zh, titles={"zh-Hans": "软件周报", "zh-Hant": "手寫標題"})
        session.commit()
        issues.update_texts(session, written, {"zh-Hans": "信息周报"})
        assert {e.lang: e.title for e in written.editions}["zh-Hant"] == "手寫標題"
