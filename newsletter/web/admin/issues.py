"""Admin pages: the issue list (with each issue's title), the New draft form, and the issue editor
(articles searched and picked, reordered by drag or buttons, titles and notes per language, audience rule)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from newsletter import issues
from newsletter.articles import parse_datetime
from newsletter.issues import IssueError, Selection, articles_by_external_id, get_issue, search_articles
from newsletter.models import LANGUAGES, Issue, IssueStatus
from newsletter.web.admin.common import back, flash, is_htmx, render
from newsletter.web.deps import DB, State

router = APIRouter()
Number = Annotated[int, Path(ge=1, le=2**31 - 1)]
PAGE = 20


@router.get("/issues")
def issue_list(request: Request, session: DB) -> Response:
    """Every issue, newest first."""
    return render(request, "issues.html", issues=list(session.scalars(select(Issue).order_by(Issue.number.desc()))))


def _empty_drafts(session: DB) -> list[Issue]:
    """Drafts without an article yet, lowest number first (what "New draft" offers to continue)."""
    query = select(Issue).where(Issue.status == IssueStatus.DRAFT, ~Issue.items.any()).order_by(Issue.number)
    return list(session.scalars(query))


@router.get("/issues/new")
def new_issue_form(request: Request, session: DB) -> Response:
    """Ask before starting a draft: the number it will get, or the empty draft(s) to continue instead."""
    return render(request, "new_issue.html", number=issues.next_number(session), empty=_empty_drafts(session))


@router.post("/issues")
def new_issue(request: Request, session: DB, confirm: Annotated[str, Form()] = "") -> Response:
    """Start an empty draft (confirmed on `new_issue_form`) and open it in the editor.

    Without ``confirm=yes`` (an old one-click form, a stray post) nothing is created: back to the form.
    """
    if confirm != "yes":
        return back("/admin/issues/new")
    issue = issues.create_issue(session, [])
    session.commit()
    flash(request, f"Issue {issue.number} created: search for articles and add them.")
    return back(f"/admin/issues/{issue.number}")


def _search(session: DB, q: str, lang: str, category: str, since: str, until: str, offset: int) -> tuple[list, int, str | None]:  # type: ignore[type-arg]
    try:
        sel = Selection(PAGE, lang or None, category or None, parse_datetime(since or None), parse_datetime(until or None))
    except (ValueError, OverflowError):
        return [], 0, "Dates must look like 2025-03-03."
    found, total = search_articles(session, q, sel, offset=offset)
    return found, total, None


def _editor(request: Request, session: DB, number: int, status_code: int = 200, **extra: object) -> Response:
    issue = get_issue(session, number)
    params = request.query_params
    form = {k: params.get(k, "") for k in ("q", "lang", "category", "since", "until")}
    # At most the bound of `search` (the fragment): a larger OFFSET overflowed the database (a 500).
    offset = min(int(params.get("offset", "0") or 0), 10**6) if params.get("offset", "0").isdigit() else 0
    results, total, search_error = _search(session, offset=offset, **form) if any(form.values()) else ([], 0, None)
    articles = issues.issue_article_list(issue)
    return render(request, "issue.html", status_code, issue=issue, articles=articles, languages=LANGUAGES,
                  warnings=issues.draft_warnings(issue, articles), form=form, results=results, total=total, offset=offset,
                  search_error=search_error,
                  segment_text=extra.pop("segment_text", None) if "segment_text" in extra else
                  (json.dumps(issue.segment, ensure_ascii=False, indent=1) if issue.segment else ""), **extra)  # fmt: skip


def _refused(request: Request, session: DB, number: int, message: str, **typed: object) -> Response:
    """The editor again (422) with ``message`` and what the editor typed (``typed``: ``typed_texts``
    ``{lang: (title, note)}`` or ``segment_text``) in place of the stored values: a redirect to the editor
    showed the stored ones, and the text an editor had just written was gone with the refusal."""
    session.rollback()
    flash(request, message, "error")
    return _editor(request, session, number, 422, **typed)


@router.get("/issues/{number}")
def editor(request: Request, number: Number, session: DB) -> Response:
    """The issue editor; with ``q``/``lang``/``category``/``since``/``until`` it also lists matching articles."""
    return _editor(request, session, number)


@router.get("/issues/{number}/search")
def search(
    request: Request,
    number: Number,
    session: DB,
    q: Annotated[str, Query(max_length=200)] = "",
    lang: Annotated[str, Query(max_length=16)] = "",
    category: Annotated[str, Query(max_length=128)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    offset: Annotated[int, Query(ge=0, le=10**6)] = 0,
) -> Response:
    """Search results as a fragment (htmx) or the editor with them."""
    issue = get_issue(session, number)
    if not is_htmx(request):
        return back(f"{request.url.path.removesuffix('/search')}?{request.url.query}")
    results, total, error = _search(session, q, lang, category, since, until, offset)
    return render(request, "_results.html", issue=issue, results=results, total=total, offset=offset, search_error=error,
                  form={"q": q, "lang": lang, "category": category, "since": since, "until": until},
                  in_issue={i.article_id for i in issue.items})  # fmt: skip


def _articles_changed(request: Request, session: DB, number: int, error: str | None = None, added: tuple[int, ...] = ()) -> Response:
    """After a change of articles: the article list fragment for htmx (with out-of-band updates of the search
    result rows of the ``added`` article ids), else back to the editor."""
    if is_htmx(request):
        session.expire_all()
        issue = get_issue(session, number)
        articles = issues.issue_article_list(issue)
        return render(request, "_articles.html", 422 if error else 200, issue=issue, articles=articles,
                      warnings=issues.draft_warnings(issue, articles), error=error, added=added, editions_oob=True)  # fmt: skip
    if error:
        flash(request, error, "error")
    return back(f"/admin/issues/{number}")


@router.post("/issues/{number}/articles")
def add_article(
    request: Request,
    number: Number,
    web: State,
    session: DB,
    article: Annotated[str, Form(max_length=512)],
    position: Annotated[int | None, Form()] = None,
) -> Response:
    """Add an article (at the end, or at ``position``)."""
    try:
        found = articles_by_external_id(session, [article])
        issues.add_articles(session, get_issue(session, number), found, position, **issues.zh_hant_options(web.settings))
    except IssueError as exc:
        return _articles_changed(request, session, number, str(exc))
    return _articles_changed(request, session, number, added=tuple(a.id for a in found))


@router.post("/issues/{number}/articles/remove")
def remove_article(request: Request, number: Number, web: State, session: DB, article: Annotated[str, Form(max_length=512)]) -> Response:
    """Take an article out."""
    try:
        issues.remove_article(
            session, get_issue(session, number), articles_by_external_id(session, [article])[0], **issues.zh_hant_options(web.settings)
        )
    except IssueError as exc:
        return _articles_changed(request, session, number, str(exc))
    return _articles_changed(request, session, number)


@router.post("/issues/{number}/articles/move")
def move_article(
    request: Request,
    number: Number,
    web: State,
    session: DB,
    article: Annotated[str, Form(max_length=512)],
    position: Annotated[int, Form(ge=0, le=1000)],
) -> Response:
    """Move an article to ``position`` (the up and down buttons)."""
    try:
        issues.move_article(
            session,
            get_issue(session, number),
            articles_by_external_id(session, [article])[0],
            position,
            **issues.zh_hant_options(web.settings),
        )
    except IssueError as exc:
        return _articles_changed(request, session, number, str(exc))
    return _articles_changed(request, session, number)


@router.post("/issues/{number}/articles/order")
def order_articles(request: Request, number: Number, web: State, session: DB, order: Annotated[str, Form(max_length=100_000)]) -> Response:
    """Set the whole order (drag and drop sends every id, one per line)."""
    ids = [line.strip() for line in order.splitlines() if line.strip()]
    try:
        issue = get_issue(session, number)
        if sorted(ids) != sorted(a.external_id for a in issues.issue_article_list(issue)):
            raise IssueError("the issue changed meanwhile: reload the page")
        issues.set_articles(session, issue, articles_by_external_id(session, ids), **issues.zh_hant_options(web.settings))
    except IssueError as exc:
        return _articles_changed(request, session, number, str(exc))
    return _articles_changed(request, session, number)


@router.post("/issues/{number}/editions/{lang}")
def save_edition(
    request: Request,
    number: Number,
    lang: Annotated[str, Path(max_length=16)],
    session: DB,
    web: State,
    title: Annotated[str, Form(max_length=1000)],
    note: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    """Save one edition's title and editor's note."""
    try:
        issues.update_texts(
            session,
            get_issue(session, number),
            {lang: title},
            {lang: note.replace("\r\n", "\n")},
            conversion=web.settings.zh_hant_conversion,
            phrases=web.settings.zh_hant_phrases,
        )
        flash(request, f"The {lang} edition is saved.")
    except IssueError as exc:
        return _refused(request, session, number, str(exc), typed_texts={lang: (title, note)})
    return back(f"/admin/issues/{number}#edition-{lang}")


@router.post("/issues/{number}/segment")
def save_segment(request: Request, number: Number, session: DB, rule: Annotated[str, Form(max_length=100_000)] = "") -> Response:
    """Save the audience rule (JSON; empty for everyone)."""
    try:
        parsed = json.loads(rule) if rule.strip() else None
        issues.set_segment(session, get_issue(session, number), parsed)
        flash(request, "Audience saved.")
    except json.JSONDecodeError as exc:
        return _refused(request, session, number, f"The audience rule is not JSON: {exc}", segment_text=rule)
    except IssueError as exc:
        return _refused(request, session, number, f"Audience not saved: {exc}", segment_text=rule)
    return back(f"/admin/issues/{number}#audience")


@router.post("/issues/{number}/delete")
def delete(request: Request, number: Number, session: DB, confirm: Annotated[str, Form()] = "") -> Response:
    """Delete a draft (the form asks to tick a box first)."""
    if confirm != "yes":
        flash(request, "Tick the box to delete the draft.", "error")
        return back(f"/admin/issues/{number}")
    try:
        issues.delete_issue(session, get_issue(session, number))
    except IssueError as exc:
        flash(request, str(exc), "error")
        return back(f"/admin/issues/{number}")
    flash(request, f"Issue {number} deleted.")
    return back("/admin/issues")
