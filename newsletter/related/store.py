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

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from newsletter.db import dialect_insert
from newsletter.models import Article, RelatedIndexEntry, utcnow
from newsletter.related.index import Entry, RelatedIndex, make_entry
from newsletter.related.text import TermVector, group_of

TOKENISER_VERSION = "1"  # part of text_hash: bump it when tokens() changes, then run `newsletter related reindex`


def text_hash(article: Article) -> str:
    """What the index entry of ``article`` depends on, hashed (SHA-256 hex)."""
    parts = (TOKENISER_VERSION, article.lang, article.title, article.body_text, str(article.published_at), article.category or "")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


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
    new: list[dict[str, object]] = []
    for article in articles:
        digest = text_hash(article)
        entry = existing.get(article.id)
        if entry is not None and entry.text_hash == digest:
            report.unchanged += 1
            continue
        group = group_of(article.lang)
        made = make_entry(article.id, group, article.title, article.body_text, article.published_at, article.category)
        values = {"group": group, "published_at": article.published_at, "category": article.category,
                  "title_terms": made.title.to_bytes(), "body_terms": made.body.to_bytes(),
                  "text_hash": digest, "indexed_at": utcnow()}  # fmt: skip
        if entry is None:
            new.append({"article_id": article.id, **values})
        else:
            for key, value in values.items():
                setattr(entry, key, value)
        report.indexed += 1
    session.flush()
    if new:
        # An upsert, not session.add: another process (a restarted pipeline, a parallel import) may
        # index the same article at the same time. One executemany for all new rows.
        stmt = dialect_insert(session, RelatedIndexEntry)
        columns = [c for c in new[0] if c != "article_id"]
        session.execute(stmt.on_conflict_do_update(index_elements=["article_id"], set_={c: stmt.excluded[c] for c in columns}), new)
    return report


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
