"""Issue assembly: choosing articles, creating the issue with its editions, and editing a draft.

The rules of what a draft may contain and when an issue may still be changed live here, for the
CLI, the editor API and the admin pages alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from newsletter.content import link_problems, markdown_link_problems, to_traditional
from newsletter.models import LANGUAGES, Article, Delivery, Edition, Issue, IssueArticle, IssueStatus, RelatedArticle

if TYPE_CHECKING:
    from newsletter.config import Settings

DEFAULT_TITLES = {"en": "This week's review", "zh-Hans": "本周要闻", "zh-Hant": "本週要聞"}
MAX_ARTICLES = 100  # per issue: more is a mistake (a weekly digest, not an archive dump)
MAX_TITLE = 300  # characters; the title is the start of the subject line
MAX_NOTE = 20000  # characters of Markdown


class IssueError(ValueError):
    """An issue cannot be created or changed as asked; the message names the record.

    ``field`` names the input at fault when there is one (``titles.en``, ``articles``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class IssueNotFound(IssueError):
    """No issue (or article) with the number (or id) given."""


class IssueStateError(IssueError):
    """The issue's status does not allow the change (e.g. editing an issue that is sending)."""


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


def search_articles(
    session: Session, text: str | None = None, sel: Selection | None = None, *, offset: int = 0
) -> tuple[list[Article], int]:
    """Articles whose title, summary or text contains ``text`` (case-insensitive, any script), filtered like
    a `Selection` (``sel.latest`` is the page size), newest first. Returns ``(page, total matches)``.

    The plain text (``body_text``, kept at import) is searched as well as the summary, so an article whose
    summary an import left to be made on first use (`newsletter.article_text`) is found without making
    it: a search never pays for a large import's pending summaries."""
    sel = sel or Selection(latest=20)
    query = select(Article)
    if text and text.strip():
        pattern = "%" + text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        columns = (Article.title, Article.summary, Article.body_text)
        query = query.where(or_(*(func.lower(column).like(pattern, escape="\\") for column in columns)))
    if sel.lang:
        query = query.where(Article.lang == sel.lang)
    if sel.category:
        query = query.where(func.lower(Article.category) == sel.category.lower())
    if sel.since:
        query = query.where(Article.published_at >= sel.since)
    if sel.until:
        query = query.where(Article.published_at < sel.until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.order_by(Article.published_at.desc().nulls_last(), Article.external_id).offset(offset).limit(sel.latest)
    return list(session.scalars(page)), total


def articles_by_external_id(session: Session, external_ids: Sequence[str]) -> list[Article]:
    """Articles in the order given.

    Raises:
        IssueNotFound: an id is unknown (all unknown ids are named).
    """
    found = {a.external_id: a for a in session.scalars(select(Article).where(Article.external_id.in_(list(external_ids))))}
    missing = [i for i in external_ids if i not in found]
    if missing:
        raise IssueNotFound(f"unknown article id(s): {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else ""), "articles")
    return [found[i] for i in external_ids]


def check_draft_articles(articles: Sequence[Article]) -> None:
    """What a draft may contain: each article once, in a language we publish, at most `MAX_ARTICLES`.

    An empty draft is allowed (an editor builds it up); `newsletter.publishing.check_publishable`
    requires every edition to have articles before anything is sent.

    Raises:
        IssueError: naming the first article at fault (field ``articles``).
    """
    if len(articles) > MAX_ARTICLES:
        raise IssueError(f"an issue holds at most {MAX_ARTICLES} articles, got {len(articles)}", "articles")
    seen: set[int] = set()
    for article in articles:
        if article.id in seen:
            raise IssueError(f"article {article.external_id} appears twice in the issue", "articles")
        seen.add(article.id)
        if article.lang not in LANGUAGES:
            raise IssueError(f"article {article.external_id} is in {article.lang!r}, not one of {', '.join(LANGUAGES)}", "articles")


def check_texts(titles: Mapping[str, str], notes: Mapping[str, str]) -> None:
    """Titles are one non-empty line of at most `MAX_TITLE` characters; notes at most `MAX_NOTE`.

    Raises:
        IssueError: naming the field (``titles.en``).
    """
    for lang, title in titles.items():
        if not title.strip():
            raise IssueError(f"the {lang} title is empty", f"titles.{lang}")
        if len(title) > MAX_TITLE or "\n" in title or "\r" in title:
            raise IssueError(f"the {lang} title must be one line of at most {MAX_TITLE} characters", f"titles.{lang}")
    for lang, note in notes.items():
        if len(note) > MAX_NOTE:
            raise IssueError(f"the {lang} editor's note is longer than {MAX_NOTE} characters", f"notes.{lang}")


def next_number(session: Session) -> int:
    """One more than the highest issue number so far (1 for the first)."""
    return (session.scalar(select(func.max(Issue.number))) or 0) + 1


def check_links(articles: Sequence[Article], notes: Mapping[str, str]) -> None:
    """Refuse links a reader could not follow: an empty href or a ``javascript:``/``vbscript:``/``data:`` URL,
    in an editor's note (Markdown), an article's URL or its body.

    Raises:
        IssueError: naming every note and article at fault; its ``field`` is the first one's (``notes.en``,
            or ``articles``).
    """
    found = [(f"notes.{lang}", f"editor's note ({lang}): {p}") for lang, text in notes.items() for p in markdown_link_problems(text)]
    for article in articles:
        url = article.url or ""
        problems = link_problems(f'<a href="{escape(url, quote=True)}">x</a>') if url else []
        problems = [f"its URL is {p.removeprefix('a ')}" for p in problems]
        problems += [f"its body has {p}" for p in link_problems(article.body_html or "")]
        found += [("articles", f"article {article.external_id}: {p}") for p in problems]
    if found:
        texts = [text for _, text in found]
        raise IssueError("bad links: " + "; ".join(texts[:10]) + (" …" if len(texts) > 10 else ""), found[0][0])


def zh_hant_options(settings: Settings) -> dict[str, Any]:
    """The deployment's zh-Hant conversion as keyword arguments (``conversion``, ``phrases``) for the
    functions here that may make or convert a zh-Hant edition (`create_issue`, `set_articles`, …)."""
    return {"conversion": settings.zh_hant_conversion, "phrases": settings.zh_hant_phrases}


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

    An empty draft (no articles, so no editions yet) is allowed; see `check_draft_articles`.

    Raises:
        IssueError: what `check_draft_articles` and `check_texts` refuse, the number is taken, or a note or
            article carries a link with an empty or ``javascript:`` URL (`check_links`).
    """
    check_draft_articles(articles)
    check_links(articles, notes or {})
    titles, notes = dict(titles or {}), dict(notes or {})
    check_texts(titles, notes)
    number = number if number is not None else next_number(session)
    if number < 1:
        raise IssueError(f"issue numbers start at 1, got {number}", "number")
    if session.scalar(select(Issue.id).where(Issue.number == number)) is not None:
        raise IssueStateError(f"issue number {number} already exists", "number")
    issue = Issue(number=number)
    for position, article in enumerate(articles):
        issue.items.append(IssueArticle(article_id=article.id, position=position))
    _sync_editions(issue, [a.lang for a in articles], titles, notes, convert_traditional, conversion, phrases)
    # A text for a language the articles give no edition would be dropped without a word; `set_texts`
    # refuses it, and so does creation (before anything is added to the session).
    _check_text_langs(issue, titles, notes, creating=True)
    session.add(issue)
    session.flush()
    return issue


def _check_text_langs(issue: Issue, titles: Mapping[str, str], notes: Mapping[str, str], *, creating: bool = False) -> None:
    """Raises `IssueError` naming the field (``titles.fr``) when a title or note is for a language the
    issue has no edition of (``creating``: the issue is not stored, so its number is not named)."""
    editions = [e.lang for e in issue.editions]
    for kind, values in (("titles", titles), ("notes", notes)):
        for lang in values:
            if lang not in editions:
                has = ", ".join(editions) or "none yet: add articles first"
                # "issue 6 has no fr edition" named an issue the refusal never made, and "fr" is no language here
                unknown = "" if lang in LANGUAGES else f"{lang!r} is not a language of this list ({', '.join(LANGUAGES)}); "
                which = "the new issue" if creating else f"issue {issue.number}"
                raise IssueError(f"{unknown}{which} has no {lang} edition (editions: {has})", f"{kind}.{lang}")


def _sync_editions(
    issue: Issue,
    article_langs: Sequence[str],
    titles: Mapping[str, str],
    notes: Mapping[str, str],
    convert_traditional: bool = True,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
) -> None:
    """One edition per language among the articles (keeping the title and note of those that exist),
    plus a zh-Hant edition converted from zh-Hans when there are zh-Hans articles and no zh-Hant ones."""
    langs = [lang for lang in LANGUAGES if lang in article_langs]
    existing = {e.lang: e for e in issue.editions}
    wanted: list[Edition] = []
    for lang in langs:
        edition = existing.get(lang) or Edition(lang=lang, title=titles.get(lang, DEFAULT_TITLES[lang]), editors_note=notes.get(lang, ""))
        edition.converted_from = None
        wanted.append(edition)
    if convert_traditional and "zh-Hans" in langs and "zh-Hant" not in langs:
        edition = existing.get("zh-Hant") or Edition(
            lang="zh-Hant",
            title=titles.get("zh-Hant") or to_traditional(titles.get("zh-Hans", DEFAULT_TITLES["zh-Hans"]), conversion, phrases),
            editors_note=notes.get("zh-Hant") or to_traditional(notes.get("zh-Hans", ""), conversion, phrases),
        )
        edition.converted_from = "zh-Hans"
        wanted.append(edition)
    for edition in list(issue.editions):
        if edition not in wanted:
            issue.editions.remove(edition)
    for edition in wanted:
        if edition not in issue.editions:
            issue.editions.append(edition)
    for edition in wanted:
        edition.subject = edition.html = edition.text = edition.web_html = None  # rendered again at publish
        edition.rendered_at = None


def get_issue(session: Session, number: int) -> Issue:
    """The issue with this number.

    Raises:
        IssueNotFound: no such issue.
    """
    issue = session.scalar(select(Issue).where(Issue.number == number))
    if issue is None:
        raise IssueNotFound(f"no issue number {number}")
    return issue


def _has_deliveries(session: Session, issue: Issue) -> bool:
    return session.scalar(select(Delivery.id).where(Delivery.issue_id == issue.id).limit(1)) is not None


def require_editable(session: Session, issue: Issue) -> None:
    """Only a draft can be changed; a publish that failed before any delivery was planned goes back to
    draft when edited (to fix what made it fail).

    Raises:
        IssueStateError: the issue is scheduled, under way, sent or cancelled.
    """
    if issue.status == IssueStatus.DRAFT:
        return
    if issue.status == IssueStatus.FAILED and not _has_deliveries(session, issue):
        issue.status, issue.error = IssueStatus.DRAFT, None
        return
    hint = "; unschedule it first" if issue.status == IssueStatus.SCHEDULED else ""
    raise IssueStateError(f"issue {issue.number} is {issue.status}; only a draft can be changed{hint}")


def issue_article_list(issue: Issue) -> list[Article]:
    """The issue's articles in order."""
    return [item.article for item in sorted(issue.items, key=lambda i: i.position)]


def draft_warnings(issue: Issue, articles: Sequence[Article] | None = None) -> list[str]:
    """What an editor should look at before publishing draft ``issue`` (``articles``: its articles in order,
    read again when None): one line per pair of articles that look like the same story filed twice
    (`newsletter.related.duplicates`). Empty for an issue no longer a draft, whose articles are fixed."""
    if issue.status != IssueStatus.DRAFT:
        return []
    from newsletter.related.duplicates import near_duplicates

    return [pair.message() for pair in near_duplicates(issue_article_list(issue) if articles is None else articles)]


def _locked_articles(session: Session, issue: Issue) -> list[Article]:
    """The issue's articles as stored now, with the issue row locked (PostgreSQL: SELECT … FOR UPDATE) until
    the caller commits, so two editors adding an article at once both keep theirs (no lost update)."""
    session.refresh(issue, with_for_update=True)
    session.expire(issue, ["items"])
    return issue_article_list(issue)


def set_articles(
    session: Session,
    issue: Issue,
    articles: Sequence[Article],
    *,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
    commit: bool = True,
) -> None:
    """Make ``articles`` (in this order) the draft's whole content: adding, removing and reordering all
    come through here. Editions follow the languages present (see `create_issue`; a zh-Hant edition made
    here is converted with the deployment's ``conversion`` and ``phrases``); the "You might also like"
    block is dropped, to be computed again for the new content. Commits, unless ``commit`` is False: then
    only flushes, so a caller making several changes (`issue edit`, the API's PATCH) commits them together
    or none (a refused later change must not leave the earlier ones stored).

    Raises:
        IssueStateError: see `require_editable`.
        IssueError: see `check_draft_articles`.
    """
    session.refresh(issue, with_for_update=True)
    require_editable(session, issue)
    check_draft_articles(articles)
    check_links(articles, {})
    by_article = {item.article_id: item for item in issue.items}
    keep = []
    for position, article in enumerate(articles):
        item = by_article.pop(article.id, None) or IssueArticle(article_id=article.id, article=article, position=position)
        item.position = position
        keep.append(item)
    for item in by_article.values():
        issue.items.remove(item)
    session.flush()  # removals first: (issue, article) is unique
    for item in keep:
        if item not in issue.items:
            issue.items.append(item)
    _sync_editions(issue, [a.lang for a in articles], {}, {}, True, conversion, phrases)
    session.execute(delete(RelatedArticle).where(RelatedArticle.issue_id == issue.id))
    _commit(session, commit)
    session.refresh(issue)


def _commit(session: Session, commit: bool) -> None:
    """Commit, or (``commit`` False: the caller commits several changes at once) flush."""
    if commit:
        session.commit()
    else:
        session.flush()


def add_articles(
    session: Session,
    issue: Issue,
    articles: Sequence[Article],
    position: int | None = None,
    *,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
    commit: bool = True,
) -> None:
    """Insert ``articles`` at ``position`` (default: the end); commits (see ``commit`` in `set_articles`)."""
    current = _locked_articles(session, issue)
    at = len(current) if position is None else max(0, min(position, len(current)))
    set_articles(session, issue, [*current[:at], *articles, *current[at:]], conversion=conversion, phrases=phrases, commit=commit)


def remove_article(
    session: Session,
    issue: Issue,
    article: Article,
    *,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
    commit: bool = True,
) -> None:
    """Take ``article`` out of the draft; commits (see ``commit`` in `set_articles`).

    Raises:
        IssueNotFound: the article is not in the issue.
    """
    current = _locked_articles(session, issue)
    if article not in current:
        raise IssueNotFound(f"article {article.external_id} is not in issue {issue.number}", "article")
    set_articles(session, issue, [a for a in current if a is not article], conversion=conversion, phrases=phrases, commit=commit)


def move_article(
    session: Session, issue: Issue, article: Article, position: int, *, conversion: str = "s2twp", phrases: tuple[str, ...] = ()
) -> None:
    """Move ``article`` to ``position`` (0-based, clamped); commits. See `set_articles`.

    Raises:
        IssueNotFound: the article is not in the issue.
    """
    current = _locked_articles(session, issue)
    if article not in current:
        raise IssueNotFound(f"article {article.external_id} is not in issue {issue.number}", "article")
    current.remove(article)
    current.insert(max(0, min(position, len(current))), article)
    set_articles(session, issue, current, conversion=conversion, phrases=phrases)


def update_texts(
    session: Session,
    issue: Issue,
    titles: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    *,
    conversion: str = "s2twp",
    phrases: tuple[str, ...] = (),
    commit: bool = True,
) -> None:
    """Set edition titles and editor's notes (Markdown) by language; commits (see ``commit`` in `set_articles`).

    A zh-Hant edition converted from zh-Hans (``converted_from="zh-Hans"``, see `create_issue`) follows a
    changed zh-Hans title or note: the new text is converted again (OpenCC ``conversion`` plus ``phrases``,
    as at creation). Only a zh-Hant text that is still the conversion of the old zh-Hans text is replaced:
    one an editor wrote (at creation, in an earlier edit or in this call) is kept.

    Raises:
        IssueStateError: see `require_editable`.
        IssueError: the issue has no edition in a language given, or `check_texts` refuses a text.
    """
    require_editable(session, issue)
    titles, notes = dict(titles or {}), dict(notes or {})
    check_texts(titles, notes)
    check_links([], notes)
    _check_text_langs(issue, titles, notes)
    editions = {e.lang: e for e in issue.editions}
    titles = {lang: " ".join(title.split()) for lang, title in titles.items()}
    _follow_zh_hans(editions, titles, notes, conversion, phrases)
    for lang, title in titles.items():
        editions[lang].title = title
    for lang, note in notes.items():
        editions[lang].editors_note = note
    _commit(session, commit)


def _follow_zh_hans(
    editions: Mapping[str, Edition], titles: dict[str, str], notes: dict[str, str], conversion: str, phrases: tuple[str, ...]
) -> None:
    """Add to ``titles``/``notes`` the zh-Hant text converted from a changed zh-Hans one, where the zh-Hant
    edition is a converted one and its text is still derived (equal to the conversion of the old zh-Hans
    text); an explicit zh-Hant text, stored or given in the same call, wins."""
    hans, hant = editions.get("zh-Hans"), editions.get("zh-Hant")
    if hans is None or hant is None or hant.converted_from != "zh-Hans":
        return
    for values, old_hans, old_hant in ((titles, hans.title, hant.title), (notes, hans.editors_note, hant.editors_note)):
        new_hans = values.get("zh-Hans")
        if new_hans is None or new_hans == old_hans or "zh-Hant" in values:
            continue
        if old_hant == to_traditional(old_hans, conversion, phrases):
            values["zh-Hant"] = to_traditional(new_hans, conversion, phrases)


def set_segment(session: Session, issue: Issue, rule: Any, *, commit: bool = True) -> None:
    """Set (or with None clear) the draft's audience rule; commits (see ``commit`` in `set_articles`).

    Raises:
        IssueStateError: see `require_editable`.
        IssueError: the rule is malformed (field ``segment.<path>``).
    """
    from newsletter.segments import SegmentError, parse_segment

    require_editable(session, issue)
    try:
        parse_segment(rule)
    except SegmentError as exc:
        raise IssueError(str(exc), exc.path) from exc
    issue.segment = rule
    _commit(session, commit)


def check_deletable(session: Session, issue: Issue) -> None:
    """Raise unless `delete_issue` would delete ``issue`` (so a caller can check before asking to confirm).

    Raises:
        IssueStateError: the issue was scheduled, sent or has deliveries (they are the record of what was sent).
    """
    deletable = issue.status == IssueStatus.DRAFT or (
        issue.status in (IssueStatus.FAILED, IssueStatus.CANCELLED) and not _has_deliveries(session, issue)
    )
    if not deletable:
        hint = "; unschedule it first" if issue.status == IssueStatus.SCHEDULED else ""
        raise IssueStateError(f"issue {issue.number} is {issue.status}; only a draft can be deleted{hint}")


def delete_issue(session: Session, issue: Issue) -> None:
    """Delete a draft (or a failed or cancelled issue that never planned a delivery); commits.

    Raises:
        IssueStateError: see `check_deletable`.
    """
    check_deletable(session, issue)
    session.delete(issue)
    session.commit()
