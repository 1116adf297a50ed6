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
