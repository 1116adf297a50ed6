"""Issue assembly: choosing articles and creating the issue with its editions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.content import link_problems, markdown_link_problems, to_traditional
from newsletter.models import LANGUAGES, Article, Edition, Issue, IssueArticle

DEFAULT_TITLES = {"en": "This week's review", "zh-Hans": "本周要闻", "zh-Hant": "本週要聞"}


class IssueError(ValueError):
    """An issue cannot be created or changed as asked; the message names the record."""


@dataclass(frozen=True)
class Selection:
    """ "The ``latest`` newest articles" filtered by language, category and a published date range
    (``since`` inclusive, ``until`` exclusive)."""

    latest: int
    lang: str | None = None
    category: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def select_articles(session: Session, sel: Selection) -> list[Article]:
    """The articles a `Selection` names, newest first (ties broken by source id, i.e. running order)."""
    query = select(Article).where(Article.published_at.is_not(None))
    if sel.lang:
        query = query.where(Article.lang == sel.lang)
    if sel.category:
        query = query.where(func.lower(Article.category) == sel.category.lower())
    if sel.since:
        query = query.where(Article.published_at >= sel.since)
    if sel.until:
        query = query.where(Article.published_at < sel.until)
    query = query.order_by(Article.published_at.desc(), Article.external_id).limit(sel.latest)
    return list(session.scalars(query))


def articles_by_external_id(session: Session, external_ids: Sequence[str]) -> list[Article]:
    """Articles in the order given.

    Raises:
        IssueError: an id is unknown (all unknown ids are named).
    """
    found = {a.external_id: a for a in session.scalars(select(Article).where(Article.external_id.in_(list(external_ids))))}
    missing = [i for i in external_ids if i not in found]
    if missing:
        raise IssueError(f"unknown article id(s): {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else ""))
    return [found[i] for i in external_ids]


def next_number(session: Session) -> int:
    """One more than the highest issue number so far (1 for the first)."""
    return (session.scalar(select(func.max(Issue.number))) or 0) + 1


def check_links(articles: Sequence[Article], notes: Mapping[str, str]) -> None:
    """Refuse links a reader could not follow: an empty href or a ``javascript:``/``vbscript:``/``data:`` URL,
    in an editor's note (Markdown), an article's URL or its body.

    Raises:
        IssueError: naming every note and article at fault.
    """
    found = [f"editor's note ({lang}): {p}" for lang, text in notes.items() for p in markdown_link_problems(text)]
    for article in articles:
        url = article.url or ""
        problems = link_problems(f'<a href="{escape(url, quote=True)}">x</a>') if url else []
        problems = [f"its URL is {p.removeprefix('a ')}" for p in problems]
        problems += [f"its body has {p}" for p in link_problems(article.body_html or "")]
        found += [f"article {article.external_id}: {p}" for p in problems]
    if found:
        raise IssueError("bad links: " + "; ".join(found[:10]) + (" …" if len(found) > 10 else ""))


def create_issue(
    session: Session,
    articles: Sequence[Article],
    *,
    number: int | None = None,
    titles: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    convert_traditional: bool = True,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
) -> Issue:
    """Create a draft issue with ``articles`` in the given order and one edition per language present.

    With ``convert_traditional``, an issue with zh-Hans articles and no zh-Hant ones gets a zh-Hant
    edition derived by OpenCC ``conversion`` (plus the ``phrases`` dictionaries), marked
    ``converted_from="zh-Hans"``.

    Raises:
        IssueError: no articles, a duplicate article, the number is taken, or a note or article carries a
            link with an empty or ``javascript:`` URL (`check_links`).
    """
    if not articles:
        raise IssueError("an issue needs at least one article")
    if len({a.id for a in articles}) != len(articles):
        raise IssueError("an article appears twice in the issue")
    check_links(articles, notes or {})
    number = number if number is not None else next_number(session)
    if session.scalar(select(Issue.id).where(Issue.number == number)) is not None:
        raise IssueError(f"issue number {number} already exists")
    titles, notes = dict(titles or {}), dict(notes or {})
    langs = [lang for lang in LANGUAGES if any(a.lang == lang for a in articles)]
    issue = Issue(number=number)
    for position, article in enumerate(articles):
        issue.items.append(IssueArticle(article_id=article.id, position=position))
    for lang in langs:
        issue.editions.append(Edition(lang=lang, title=titles.get(lang, DEFAULT_TITLES[lang]), editors_note=notes.get(lang, "")))
    if convert_traditional and "zh-Hans" in langs and "zh-Hant" not in langs:
        issue.editions.append(
            Edition(
                lang="zh-Hant",
                title=titles.get("zh-Hant") or to_traditional(titles.get("zh-Hans", DEFAULT_TITLES["zh-Hans"]), conversion, phrases),
                editors_note=notes.get("zh-Hant") or to_traditional(notes.get("zh-Hans", ""), conversion, phrases),
                converted_from="zh-Hans",
            )
        )
    session.add(issue)
    session.flush()
    return issue


def get_issue(session: Session, number: int) -> Issue:
    """The issue with this number.

    Raises:
        IssueError: no such issue.
    """
    issue = session.scalar(select(Issue).where(Issue.number == number))
    if issue is None:
        raise IssueError(f"no issue number {number}")
    return issue
