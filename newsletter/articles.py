"""Article import from the shared JSON Lines corpus format (one object per line)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import markdown
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from newsletter.content import html_to_text, sanitise_html, strip_links, unstorable
from newsletter.db import first_line
from newsletter.models import LANGUAGES, Article
from newsletter.summaries import BUILTIN_RULES, SourceRules, summarise
from newsletter.textfiles import control_character, open_text

# Column sizes (newsletter.models.Article): a longer value is refused per record, not by the database.
LENGTH_LIMITS = {"id": 512, "category": 128, "translation_key": 512}


class ArticleError(ValueError):
    """A corpus record that cannot become an article; ``line`` is 1-based."""

    def __init__(self, line: int, record_id: str | None, reason: str) -> None:
        super().__init__(f"line {line}" + (f" (id {record_id!r})" if record_id else "") + f": {reason}")
        self.line, self.record_id, self.reason = line, record_id, reason


@dataclass
class ImportReport:
    """What an import did: counts and the errors, each naming its line."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[ArticleError] = field(default_factory=list)


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601 to an aware UTC datetime; a date alone means midnight UTC; None stays None.

    Raises:
        ValueError: the value is not ISO 8601.
    """
    if value in (None, ""):
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def record_to_fields(record: dict[str, Any], rules: Sequence[SourceRules] = BUILTIN_RULES) -> dict[str, Any]:
    """Map one corpus record to `Article` column values.

    ``body_html`` (sanitised) wins over ``body`` (Markdown or plain paragraphs). Relative links and
    images in the body are made absolute against the article's own URL (where a reader of the source
    would have followed them); an image without alt text gets the title. Markdown links are kept in the
    HTML but dropped from the text used for summaries and similarity. Without a ``summary`` field, one is
    made from the body with the summary ``rules`` of the article's source (`newsletter.summaries`).

    Raises:
        ValueError: a required field is missing or malformed.
    """
    for key, value in record.items():
        if isinstance(value, str) and (where := control_character(value)):
            raise ValueError(f"{key!r} contains a control character ({where})")
    ext_id = record.get("id")
    if not isinstance(ext_id, str | int) or str(ext_id).strip() == "":
        raise ValueError("missing 'id'")
    for key, limit in LENGTH_LIMITS.items():
        if len(str(record.get(key) or "")) > limit:
            raise ValueError(f"{key!r} is longer than {limit} characters")
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("missing 'title'")
    lang = record.get("lang")
    if lang not in LANGUAGES:
        raise ValueError(f"'lang' must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    url = record.get("url") or record.get("source_url") or None
    base = url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
    title = " ".join(title.split())
    if record.get("body_html"):
        body_html = sanitise_html(str(record["body_html"]), base_url=base, image_alt=title)
        body_text = html_to_text(body_html, links=False)
    else:
        body = str(record.get("body") or "")
        body_html = sanitise_html(markdown.markdown(body, output_format="html"), base_url=base, image_alt=title)
        body_text = strip_links(html_to_text(body_html, links=False))
    try:
        published_at = parse_datetime(record.get("published_at"))
    except ValueError as exc:
        raise ValueError(f"'published_at' is not ISO 8601: {record.get('published_at')!r}") from exc
    summary = record.get("summary") or summarise(body_text, lang, url=url, rules=rules)
    return {
        "external_id": str(ext_id),
        "title": title,
        "summary": str(summary),
        "body_html": body_html,
        "body_text": body_text,
        "category": record.get("category") or None,
        "lang": lang,
        "published_at": published_at,
        "url": url,
        "translation_key": record.get("translation_key") or None,
    }


def read_jsonl(lines: Iterable[str], rules: Sequence[SourceRules] = BUILTIN_RULES) -> Iterator[tuple[int, dict[str, Any] | ArticleError]]:
    """Yield ``(line_number, fields)`` per non-blank line, or an `ArticleError` for a bad one."""
    for number, line in enumerate(lines, start=1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte order mark (RFC 7159 §8.1 lets parsers ignore it)
        if not line.strip():
            continue
        record_id = None
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            record_id = str(record.get("id")) if record.get("id") is not None else None
            fields = record_to_fields(record, rules)
            if unstorable(record):  # nested values and unpaired surrogates: PostgreSQL refuses them
                raise ValueError("contains a NUL or an unpaired surrogate character")
            yield number, fields
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            yield number, ArticleError(number, record_id, str(exc))


def import_articles(
    session: Session, path: Path, *, batch: int = 500, encoding: str = "utf-8", rules: Sequence[SourceRules] = BUILTIN_RULES
) -> ImportReport:
    """Import a JSON Lines file in ``encoding``, idempotent on ``id`` (re-importing updates changed records),
    and add the new or changed articles to the related-articles index (`newsletter.related.store.index_articles`).

    A malformed line (bad JSON, a missing field, a control character such as NUL, a value too long
    for its column) is reported with its line number and the rest is still imported. Commits every
    ``batch`` records, so an interrupted import keeps what it did; if the database refuses a batch,
    its records are stored one by one, so one bad record never costs the good ones.

    Raises:
        FileEncodingError: the file is not in ``encoding`` (nothing was imported).
    """
    with open_text(path, encoding) as handle:
        return import_lines(session, handle, batch=batch, rules=rules)


def import_lines(session: Session, lines: Iterable[str], *, batch: int = 500, rules: Sequence[SourceRules] = BUILTIN_RULES) -> ImportReport:
    """Import JSON Lines text given line by line (an upload, a file); see `import_articles`."""
    report = ImportReport()
    pending: list[tuple[int, dict[str, Any]]] = []

    def store(items: list[tuple[int, dict[str, Any]]]) -> None:
        """Create or update ``items`` and their related-articles index entries, and commit; the report
        counts them only once committed."""
        from newsletter.related.store import index_articles

        counts = {"created": 0, "updated": 0, "unchanged": 0}
        ids = [f["external_id"] for _, f in items]
        existing = {a.external_id: a for a in session.scalars(select(Article).where(Article.external_id.in_(ids)))}
        for _line, fields in items:
            article = existing.get(fields["external_id"])
            if article is None:
                article = Article(**fields)
                session.add(article)
                existing[fields["external_id"]] = article
                counts["created"] += 1
            elif any(getattr(article, k) != v for k, v in fields.items()):
                for key, value in fields.items():
                    setattr(article, key, value)
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
        session.flush()
        # The related-articles index follows in the same transaction: only new or changed texts are tokenised.
        index_articles(session, existing.values())
        session.commit()
        report.created += counts["created"]
        report.updated += counts["updated"]
        report.unchanged += counts["unchanged"]

    def flush() -> None:
        try:
            store(pending)
        except DBAPIError:
            session.rollback()
            for line, fields in pending:  # find the record the database refused; keep the others
                try:
                    store([(line, fields)])
                except DBAPIError as exc:
                    session.rollback()
                    report.errors.append(ArticleError(line, fields["external_id"], f"refused by the database: {first_line(exc)}"))
        pending.clear()

    for number, result in read_jsonl(lines, rules):
        if isinstance(result, ArticleError):
            report.errors.append(result)
            continue
        pending.append((number, result))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return report
