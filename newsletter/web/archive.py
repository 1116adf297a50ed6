"""The public archive: ``/`` (issues that went out, newest first, per language, paginated, with a
subscribe box), each edition's web version, and an Atom feed (RFC 4287) per language.

Only issues that went out (``sending`` or ``sent``) appear; drafts, scheduled, failed and cancelled
issues never do, whatever the URL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from xml.etree import ElementTree as ET

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.content import category_label
from newsletter.models import LANGUAGES, Edition, Issue, IssueStatus
from newsletter.publishing import converter, edition_articles, format_date, issue_timezone
from newsletter.web.deps import DB, State, WebState
from newsletter.web.readerpage import page_lang, reader_page, topic_choices

router = APIRouter(tags=["reader pages"])

PUBLIC_STATES = (IssueStatus.SENDING, IssueStatus.SENT)
PAGE_SIZE = 10
FEED_SIZE = 20
# Beyond these an OFFSET or an issue number overflows the database's integers (SQLite's and PostgreSQL's
# bigint, ``issues.number`` an int4): a reader's URL answered 500. Past them there is nothing to show.
MAX_PAGE = 10**9
MAX_NUMBER = 2**31 - 1
ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class ArchiveEntry:
    """One edition in the archive: ``tags`` are its articles' category labels, in issue order."""

    number: int
    title: str
    date: str
    when: datetime
    url: str
    tags: tuple[str, ...]
    headlines: tuple[str, ...]


def _public(lang: str):  # type: ignore[no-untyped-def]
    return (
        select(Edition, Issue)
        .join(Issue, Issue.id == Edition.issue_id)
        .where(Edition.lang == lang, Issue.status.in_(PUBLIC_STATES), Edition.web_html.is_not(None))
    )


def archive_entries(session: Session, web: WebState, lang: str, page: int = 1, size: int | None = None) -> tuple[list[ArchiveEntry], int]:
    """Page ``page`` (1-based, ``size`` per page, default `PAGE_SIZE`) of the ``lang`` editions that went
    out, newest first, and the page count."""
    size = size or PAGE_SIZE
    total = session.scalar(select(func.count()).select_from(_public(lang).subquery())) or 0
    rows = session.execute(
        _public(lang).order_by(Issue.published_at.desc().nulls_last(), Issue.number.desc()).offset((page - 1) * size).limit(size)
    ).all()
    entries = []
    for edition, issue in rows:
        convert = converter(web.settings) if edition.converted_from == "zh-Hans" else (lambda s: s)
        articles = edition_articles(session, issue, edition)
        tags = tuple(dict.fromkeys(convert(category_label(a.category)) for a in articles if a.category))
        when = issue.published_at or issue.created_at
        date = format_date(when, lang, issue_timezone(web.settings, issue))
        headlines = tuple(convert(a.title) for a in articles[:3])
        entries.append(ArchiveEntry(issue.number, edition.title, date, when, f"/issues/{issue.number}/{lang}", tags, headlines))
    return entries, max(1, math.ceil(total / size))


@router.get("/", response_class=HTMLResponse)
def archive(request: Request, web: State, session: DB, page: int = 1) -> HTMLResponse:
    """The archive of the reader's language, with a subscribe box."""
    lang = page_lang(request)
    page = min(max(page, 1), MAX_PAGE)  # an empty page past the last one, as for any page after it
    entries, pages = archive_entries(session, web, lang, page)
    blank = {"email": "", "name": "", "lang": lang, "topics": []}
    return reader_page(web, request, "archive.html", lang, entries=entries, page=page, pages=pages, form=blank, errors={},
                       topics=topic_choices(session, web, lang))  # fmt: skip


@router.get("/issues/{number}/{lang}", response_class=HTMLResponse)
def edition(number: str, lang: str, session: DB) -> HTMLResponse:
    """The "view in browser" page of an edition, once its issue went out (its language switcher, tags
    and archive links were rendered with it at publish). A number that is not one is a page that does not
    exist (404), not a malformed request (FastAPI's 422 for an ``int`` parameter)."""
    if not number.isascii() or not number.isdigit() or not 1 <= int(number) <= MAX_NUMBER:
        raise HTTPException(404, "no such edition")
    found = session.execute(
        select(Edition.web_html).join(Issue).where(Issue.number == int(number), Edition.lang == lang, Issue.status.in_(PUBLIC_STATES))
    ).scalar_one_or_none()
    if not found:
        raise HTTPException(404, "no such edition")
    return HTMLResponse(found, headers={"Content-Language": lang})


@router.get("/feed/{lang}.atom")
def feed(lang: str, web: State, session: DB) -> Response:
    """The Atom feed (RFC 4287) of the ``lang`` archive: the newest `FEED_SIZE` editions."""
    if lang not in LANGUAGES:
        raise HTTPException(404, "no such language")
    base = web.settings.base_url
    entries, _ = archive_entries(session, web, lang, 1, FEED_SIZE)
    ET.register_namespace("", ATOM)
    root = ET.Element(f"{{{ATOM}}}feed", {"{http://www.w3.org/XML/1998/namespace}lang": lang})
    ET.SubElement(root, f"{{{ATOM}}}title").text = web.settings.branding.list_name(lang)
    ET.SubElement(root, f"{{{ATOM}}}id").text = f"{base}/feed/{lang}.atom"
    ET.SubElement(root, f"{{{ATOM}}}link", rel="self", href=f"{base}/feed/{lang}.atom")
    ET.SubElement(root, f"{{{ATOM}}}link", rel="alternate", type="text/html", href=f"{base}/?lang={lang}")
    newest = max((e.when for e in entries), default=datetime(2000, 1, 1).astimezone())
    ET.SubElement(root, f"{{{ATOM}}}updated").text = newest.isoformat()
    author = ET.SubElement(root, f"{{{ATOM}}}author")
    ET.SubElement(author, f"{{{ATOM}}}name").text = web.settings.branding.list_name(lang)
    for e in entries:
        entry = ET.SubElement(root, f"{{{ATOM}}}entry")
        ET.SubElement(entry, f"{{{ATOM}}}title").text = e.title
        ET.SubElement(entry, f"{{{ATOM}}}id").text = f"{base}{e.url}"
        ET.SubElement(entry, f"{{{ATOM}}}link", rel="alternate", type="text/html", href=f"{base}{e.url}")
        ET.SubElement(entry, f"{{{ATOM}}}updated").text = e.when.isoformat()
        ET.SubElement(entry, f"{{{ATOM}}}summary").text = " · ".join(e.headlines)
        for tag in e.tags:
            ET.SubElement(entry, f"{{{ATOM}}}category", term=tag)
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, media_type="application/atom+xml; charset=utf-8")
