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
from sqlalchemy.orm import Session

from newsletter.content import html_to_text, sanitise_html, strip_links, unstorable
from newsletter.models import LANGUAGES, Article
from newsletter.summaries import BUILTIN_RULES, SourceRules, summarise


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
    ext_id = record.get("id")
    if not isinstance(ext_id, str | int) or str(ext_id).strip() == "":
        raise ValueError("missing 'id'")
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
        if not line.strip():
            continue
        record_id = None
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if unstorable(record):
                raise ValueError("contains a NUL or an unpaired surrogate character")
            record_id = str(record.get("id")) if record.get("id") is not None else None
            yield number, record_to_fields(record, rules)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            yield number, ArticleError(number, record_id, str(exc))


def import_articles(session: Session, path: Path, *, batch: int = 500, rules: Sequence[SourceRules] = BUILTIN_RULES) -> ImportReport:
    """Import a JSON Lines file, idempotent on ``id`` (re-importing updates changed records), and add the
    new or changed articles to the related-articles index (`newsletter.related.store.index_articles`).

    A malformed line is reported with its line number and the rest is still imported. Commits every
    ``batch`` records, so an interrupted import keeps what it did.
    """
    with path.open(encoding="utf-8") as handle:
        return import_lines(session, handle, batch=batch, rules=rules)


def import_lines(session: Session, lines: Iterable[str], *, batch: int = 500, rules: Sequence[SourceRules] = BUILTIN_RULES) -> ImportReport:
    """Import JSON Lines text given line by line (an upload, a file); see `import_articles`."""
    report = ImportReport()
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        from newsletter.related.store import index_articles

        ids = [f["external_id"] for f in pending]
        existing = {a.external_id: a for a in session.scalars(select(Article).where(Article.external_id.in_(ids)))}
        for fields in pending:
            article = existing.get(fields["external_id"])
            if article is None:
                article = Article(**fields)
                session.add(article)
                existing[fields["external_id"]] = article
                report.created += 1
            elif any(getattr(article, k) != v for k, v in fields.items()):
                for key, value in fields.items():
                    setattr(article, key, value)
                report.updated += 1
            else:
                report.unchanged += 1
        session.flush()
        # The related-articles index follows in the same transaction: only new or changed texts are tokenised.
        index_articles(session, existing.values())
        session.commit()
        pending.clear()

    for _number, result in read_jsonl(lines, rules):
        if isinstance(result, ArticleError):
            report.errors.append(result)
            continue
        pending.append(result)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return report
