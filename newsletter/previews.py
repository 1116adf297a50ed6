"""Previews of an edition as a subscriber would see it: for the CLI, the editor API and the admin pages."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import publishing
from newsletter.config import Settings
from newsletter.issues import IssueError
from newsletter.models import Article, Edition, Issue, IssueStatus, RelatedArticle
from newsletter.rendering import greeting, personalise, render_edition

PREVIEW_ADDRESS = "preview@example.org"


@dataclass(frozen=True)
class Preview:
    """One edition personalised for one reader: the subject, the HTML part (CSS inlined) and the text part."""

    lang: str
    subject: str
    html: str
    text: str


def find_edition(issue: Issue, lang: str) -> Edition:
    """The issue's edition in ``lang``.

    Raises:
        IssueError: no such edition (field ``lang``), naming those the issue has.
    """
    edition = next((e for e in issue.editions if e.lang == lang), None)
    if edition is None:
        has = ", ".join(e.lang for e in issue.editions) or "none: it has no articles yet"
        raise IssueError(f"issue {issue.number} has no {lang} edition (has: {has})", "lang")
    return edition


def preview_edition(
    session: Session,
    settings: Settings,
    issue: Issue,
    lang: str,
    *,
    email: str = PREVIEW_ADDRESS,
    name: str = "",
    links: str = "#",
) -> Preview:
    """Render edition ``lang`` of ``issue`` personalised for ``email``/``name``; ``links`` stands in for the
    unsubscribe and preference links.

    A draft is rendered from its current content; its "You might also like" block is computed once after
    each change of articles (publishing computes it again). An issue already rendered for sending shows
    exactly what was sent.

    Raises:
        IssueError: no such edition.
        RenderError: the edition does not render (template error, missing translation).
    """
    edition = find_edition(issue, lang)
    if issue.status in (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.FAILED) or edition.html is None:
        has_related = session.scalar(select(RelatedArticle.id).where(RelatedArticle.issue_id == issue.id).limit(1)) is not None
        if not has_related and issue.items and issue.status != IssueStatus.SENT:
            publishing.attach_related(session, settings, issue.id)
        rendered = render_edition(publishing.edition_content(session, settings, issue, edition))
        subject, html_doc, text = rendered.subject, rendered.html, rendered.text
        if any(isinstance(o, Article) for o in session.dirty):  # summaries and HTML made for this preview: kept
            session.commit()
    else:
        subject, html_doc, text = edition.subject or "", edition.html, edition.text or ""
    values = {"GREETING": greeting(lang, name), "EMAIL": email, "UNSUBSCRIBE_URL": links, "PREFERENCES_URL": links}
    return Preview(lang, subject, personalise(html_doc, values, escape=True), personalise(text, values, escape=False))
