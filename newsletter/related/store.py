"""The persisted related-articles index (table ``related_index``) and its per-process cache.

The database holds each article's term counts, written when the article is imported or changed
(`index_articles`), so every worker on every machine sees the same index and one new article costs one
tokenisation, never a refit. `load_index` builds the in-memory `RelatedIndex` of a group from those rows
and keeps it until a row of that group is added, changed or deleted. `reindex` rebuilds everything
(``newsletter related reindex``): after a tokeniser change, or to index articles imported before the index
existed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter.db import dialect_insert
from newsletter.models import Article, RelatedIndexEntry, utcnow
from newsletter.related.index import Entry, RelatedIndex, make_entry
from newsletter.related.text import TermVector, group_of

TOKENISER_VERSION = "1"  # part of text_hash: bump it when tokens() changes, then run `newsletter related reindex`


def text_hash(article: Article) -> str:
    """What the index entry of ``article`` depends on, hashed (SHA-256 hex)."""
    return _text_hash(article.lang, article.title, article.body_text, article.published_at, article.category)


def _text_hash(lang: str, title: str, body_text: str, published_at: datetime | None, category: str | None) -> str:
    parts = (TOKENISER_VERSION, lang, title, body_text, str(published_at), category or "")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def entry_values(lang: str, title: str, body_text: str, published_at: datetime | None, category: str | None) -> dict[str, Any]:
    """The ``related_index`` row of an article, without ``article_id`` and ``indexed_at``: its group, date,
    category, serialised term vectors of the title and of title + body (`make_entry`) and `text_hash`.
    Needs no database, so an import makes it in its worker processes."""
    group = group_of(lang)
    made = make_entry(0, group, title, body_text, published_at, category)
    return {"group": group, "published_at": published_at, "category": category, "title_terms": made.title.to_bytes(),
            "body_terms": made.body.to_bytes(), "text_hash": _text_hash(lang, title, body_text, published_at, category)}  # fmt: skip


@dataclass
class IndexReport:
    """What an indexing pass did: entries written, unchanged ones skipped."""

    indexed: int = 0
    unchanged: int = 0


def index_articles(session: Session, articles: Iterable[Article]) -> IndexReport:
    """Write (or refresh) the index entries of ``articles``; does not commit.

    An article whose text, date and category are unchanged since it was indexed is skipped.
    """
    report = IndexReport()
    articles = list(articles)
    if not articles:
        return report
    existing = {
        e.article_id: e
        for e in session.scalars(select(RelatedIndexEntry).where(RelatedIndexEntry.article_id.in_([a.id for a in articles])))
    }
    new: list[dict[str, Any]] = []
    for article in articles:
        digest = text_hash(article)
        entry = existing.get(article.id)
        if entry is not None and entry.text_hash == digest:
            report.unchanged += 1
            continue
        values = entry_values(article.lang, article.title, article.body_text, article.published_at, article.category)
        if entry is None:
            new.append({"article_id": article.id, **values})
        else:
            for key, value in values.items():
                setattr(entry, key, value)
            entry.indexed_at = utcnow()
        report.indexed += 1
    session.flush()
    write_entries(session, new)
    return report


def write_entries(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace index rows (`entry_values` plus ``article_id``) with one executemany; does not commit.

    An upsert, not session.add: another process (a restarted pipeline, a parallel import) may index the
    same article at the same time.
    """
    if not rows:
        return
    now = utcnow()
    rows = [{**row, "indexed_at": now} for row in rows]
    stmt = dialect_insert(session, RelatedIndexEntry)
    columns = [c for c in rows[0] if c != "article_id"]
    session.execute(stmt.on_conflict_do_update(index_elements=["article_id"], set_={c: stmt.excluded[c] for c in columns}), rows)


def index_missing(session: Session, batch: int = 500) -> IndexReport:
    """Index every article that has no entry or a stale one; commits per ``batch`` articles."""
    report = IndexReport()
    last = 0
    while True:
        chunk = list(session.scalars(select(Article).where(Article.id > last).order_by(Article.id).limit(batch)))
        if not chunk:
            return report
        part = index_articles(session, chunk)
        session.commit()
        report.indexed += part.indexed
        report.unchanged += part.unchanged
        last = chunk[-1].id


def reindex(session: Session, batch: int = 500) -> IndexReport:
    """Drop the whole index and rebuild it from the articles; commits per ``batch`` articles."""
    session.execute(delete(RelatedIndexEntry))
    session.commit()
    _CACHE.clear()
    return index_missing(session, batch)


def _version(session: Session, group: str) -> tuple[int, str]:
    count, newest = session.execute(
        select(func.count(), func.max(RelatedIndexEntry.indexed_at)).where(RelatedIndexEntry.group == group)
    ).one()
    return int(count), str(newest)


_CACHE: dict[tuple[str, str], tuple[tuple[int, str], RelatedIndex]] = {}
_LOCK = threading.Lock()


def load_index(session: Session, group: str) -> RelatedIndex:
    """The in-memory index of ``group``, from the cache while no entry of the group changed.

    Cached per database URL and group; a change is seen by the row count and newest ``indexed_at``.
    """
    key = (str(session.get_bind().url), group)
    version = _version(session, group)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
    rows = session.execute(
        select(
            RelatedIndexEntry.article_id,
            RelatedIndexEntry.published_at,
            RelatedIndexEntry.category,
            RelatedIndexEntry.title_terms,
            RelatedIndexEntry.body_terms,
        )
        .where(RelatedIndexEntry.group == group)
        .order_by(RelatedIndexEntry.article_id)
    )
    entries = [Entry(a, p, c, TermVector.from_bytes(t), TermVector.from_bytes(b)) for a, p, c, t, b in rows]
    index = RelatedIndex(entries)
    with _LOCK:
        _CACHE[key] = (version, index)
    return index


def ensure_indexed(session: Session, articles: Sequence[Article], langs: Iterable[str] = (), batch: int = 500) -> int:
    """Index ``articles`` if missing or stale, and every article in ``langs`` that has no entry at all
    (created other than by ``articles import``, or before the index existed); commits. Returns how many
    entries were written. On an index kept up to date by imports this is one query that finds nothing."""
    written = index_articles(session, articles).indexed
    langs = list(langs)
    while langs:
        chunk = list(
            session.scalars(
                select(Article)
                .outerjoin(RelatedIndexEntry, RelatedIndexEntry.article_id == Article.id)
                .where(Article.lang.in_(langs), RelatedIndexEntry.article_id.is_(None))
                .order_by(Article.id)
                .limit(batch)
            )
        )
        if not chunk:
            break
        written += index_articles(session, chunk).indexed
        session.commit()
    if written:
        session.commit()
    return written
