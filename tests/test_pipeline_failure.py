"""A failure anywhere in the publish canvas marks the issue failed with the reason; it never hangs in 'sending'."""

from __future__ import annotations

import contextlib

from newsletter import publishing
from newsletter.db import session_factory
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, Edition, Issue, IssueStatus, Subscriber, utcnow


def test_render_failure_marks_the_issue_failed_and_nothing_is_planned(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    from tasks.app import use_settings
    from tasks.publish import publish_pipeline

    settings = make_settings(sqlite_url)
    use_settings(settings)  # no broker: the canvas runs eagerly, as in the embedded default
    with session_factory(sqlite_url)() as session:
        article = Article(external_id="x1", title="A story", summary="S.", lang="en", published_at=utcnow())
        session.add_all([article, Subscriber(email="ann@example.com", name="Ann", lang="en", topics=[], attributes={})])
        session.flush()
        issue = create_issue(session, [article])
        session.commit()
        publishing.request_publish(session, settings, issue)
        # After validation, the edition's language is changed to one with no catalog (a concurrent edit).
        session.get_one(Edition, issue.editions[0].id).lang = "fr"
        session.commit()
        issue_id = issue.id

    with contextlib.suppress(Exception):
        publish_pipeline(issue_id).apply()

    with session_factory(sqlite_url)() as session:
        issue = session.get_one(Issue, issue_id)
        assert issue.status == IssueStatus.FAILED
        assert issue.error is not None
        assert issue.error.startswith("newsletter.render_editions: RenderError: issue 1 edition fr:")
        assert "missing fr translation" in issue.error
        assert session.query(Delivery).count() == 0  # the plan step never ran


def test_a_broker_outage_while_planning_leaves_the_issue_publishing_and_loses_nothing(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """The broker goes away after the first send batch was handed over: the plan step stops, the issue
    stays ``publishing`` (the sweeper restarts its pipeline, issue 6 point 3), not ``failed``, and the
    rows never handed over are marked so: planning again enqueues exactly those."""
    import pytest
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy import select

    from tasks.app import use_settings
    from tasks.publish import plan_deliveries as plan_task

    settings = make_settings(sqlite_url, NEWSLETTER_BATCH_SIZE="2")
    use_settings(settings)
    with session_factory(sqlite_url)() as session:
        issue_id = _publishing_issue(session, settings, 5)
        publishing.attach_related(session, settings, issue_id)
        publishing.render_editions(session, settings, issue_id)

    handed: list[int] = []

    def enqueue(_issue_id: int, ids: list[int]) -> None:
        if handed:
            raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        handed.extend(ids)

    with pytest.raises(BrokerError):
        plan_task.run_step(issue_id, publishing.plan_deliveries, enqueue)

    with session_factory(sqlite_url)() as session:
        issue = session.get_one(Issue, issue_id)
        assert (issue.status, issue.error) == (IssueStatus.PUBLISHING, None)
        rows = list(session.scalars(select(Delivery).where(Delivery.issue_id == issue_id).order_by(Delivery.id)))
        assert [d.enqueued_at is not None for d in rows] == [True, True, False, False, False]
        again: list[int] = []
        publishing.plan_deliveries(session, settings, issue_id, lambda _i, ids: again.extend(ids))
        assert again == [d.id for d in rows[2:]] and handed == [d.id for d in rows[:2]]
        assert session.get_one(Issue, issue_id).status == IssueStatus.SENDING


def test_a_rendering_failure_after_planning_deletes_what_was_never_handed_over(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Planning runs beside rendering: when rendering fails after planning finished, the rows planned meanwhile
    (never handed over, never attempted) go with the failure, so nothing of it can be sent and the issue can
    be changed again; publishing it again plans and hands over every row once."""
    import pytest
    from sqlalchemy import select, update

    from newsletter.issues import require_editable
    from newsletter.rendering import RenderError
    from tasks.app import use_settings
    from tasks.publish import render_editions as render_task

    settings = make_settings(db_url, NEWSLETTER_PLAN_CHUNK="10")
    use_settings(settings)
    with session_factory(db_url)() as session:
        issue_id = _publishing_issue(session, settings, 25)
        handed: list[int] = []
        assert publishing.plan_deliveries(session, settings, issue_id, lambda _i, ids: handed.extend(ids)) == 25
        assert handed == []  # not rendered yet: nothing handed over
        session.execute(update(Edition).values(lang="fr"))  # no catalog: rendering fails
        session.commit()
        with pytest.raises(RenderError):
            render_task.run_step(issue_id, publishing.render_editions, lambda _i, ids: handed.extend(ids))
        session.expire_all()
        issue = session.get_one(Issue, issue_id)
        assert issue.status == IssueStatus.FAILED and issue.error is not None
        assert issue.error.startswith("newsletter.render_editions: RenderError: issue 1 edition fr:")
        assert session.query(Delivery).count() == 0 and handed == []
        require_editable(session, issue)  # a failed issue without deliveries can be changed again
        session.rollback()
        session.execute(update(Edition).values(lang="en"))
        session.commit()
        issue = session.get_one(Issue, issue_id)
        publishing.request_publish(session, settings, issue)
        publishing.render_editions(session, settings, issue_id, lambda _i, ids: handed.extend(ids))
        publishing.plan_deliveries(session, settings, issue_id, lambda _i, ids: handed.extend(ids))
        assert sorted(handed) == sorted(session.scalars(select(Delivery.id))) and len(handed) == 25
        assert session.get_one(Issue, issue_id).status == IssueStatus.SENDING


def _publishing_issue(session, settings, subscribers: int) -> int:  # type: ignore[no-untyped-def]
    """``subscribers`` active en subscribers and a one-article issue moved to publishing; its id."""
    from sqlalchemy import insert

    session.execute(insert(Subscriber), [{"email": f"s{i}@example.org", "name": "", "lang": "en", "topics": [], "attributes": {},
                                          "status": "active", "created_at": utcnow()} for i in range(subscribers)])  # fmt: skip
    article = Article(external_id="a1", title="Grid security rules", summary="S.", body_text="Grid security.", lang="en",
                      published_at=utcnow())  # fmt: skip
    session.add(article)
    session.flush()
    issue = create_issue(session, [article])
    session.commit()
    publishing.request_publish(session, settings, issue)
    return issue.id
