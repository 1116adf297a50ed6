"""Article import from the shared JSON Lines corpus format (one object per line)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from newsletter.article_text import link_base, markdown_body_html, summary_of
from newsletter.content import html_plain_text, markdown_plain_text, sanitise_html, unstorable
from newsletter.db import first_line
from newsletter.models import LANGUAGES, Article
from newsletter.summaries import BUILTIN_RULES, SourceRules
from newsletter.textfiles import CONTROL, control_character, open_text

# Column sizes (newsletter.models.Article): a longer value is refused per record, not by the database.
LENGTH_LIMITS = {"id": 512, "category": 128, "translation_key": 512}
# Fields whose value, when given (not null), must be a JSON string: a number or an object was stored as
# its Python text ("{'a': 1}", a list as a PostgreSQL array literal), and a numeric category stopped the
# whole import with a TypeError in the related index.
TEXT_FIELDS = ("title", "body", "body_html", "summary", "category", "lang", "url", "source_url", "translation_key")
_JSON_TYPES = {bool: "true/false", int: "a number", float: "a number", dict: "an object", list: "an array"}


# Part of every source hash: bump it when record_to_fields (or what it calls) converts differently, so the
# next import converts every line again instead of skipping the ones it has seen.
CONVERSION_VERSION = "1"


def source_hasher(rules: Sequence[SourceRules]) -> Callable[[str], str]:
    """``line -> SHA-256 hex`` of a corpus line together with `CONVERSION_VERSION` and the summary ``rules``
    (patterns and flags): two lines with one hash convert to the same article fields."""
    prefix = hashlib.sha256(f"{CONVERSION_VERSION}\x1f{rules!r}".encode()).digest()

    def digest(line: str) -> str:
        return hashlib.sha256(prefix + line.encode("utf-8", "surrogatepass")).hexdigest()

    return digest


class ArticleError(ValueError):
    """A corpus record that cannot become an article; ``line`` is 1-based."""

    def __init__(self, line: int, record_id: str | None, reason: str) -> None:
        super().__init__(f"line {line}" + (f" (id {record_id!r})" if record_id else "") + f": {reason}")
        self.line, self.record_id, self.reason = line, record_id, reason

    def __reduce__(self) -> tuple[type[ArticleError], tuple[int, str | None, str]]:
        # Rebuilt from its fields (pickled back from a worker process, see `read_jsonl`).
        return type(self), (self.line, self.record_id, self.reason)


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


def record_to_fields(
    record: dict[str, Any], rules: Sequence[SourceRules] = BUILTIN_RULES, *, defer: bool = False, screened: bool = False
) -> dict[str, Any]:
    """Map one corpus record to `Article` column values (``summary`` and ``body_html`` by their public names).

    ``body_html`` (sanitised) wins over ``body`` (Markdown or plain paragraphs). Relative links and
    images in the body are made absolute against the article's own URL (where a reader of the source
    would have followed them); an image without alt text gets the title. Markdown links are kept in the
    HTML but dropped from the text used for summaries and similarity. Without a ``summary`` field, one is
    made from the body with the summary ``rules`` of the article's source (`newsletter.summaries`).
    ``body_text`` is the plain text the related-articles index reads (`markdown_plain_text`).

    With ``defer`` (what `import_lines` does when ``rules`` are the deployment's), the HTML of a Markdown
    body and a missing summary are left pending (``text_pending``: ``""`` now, made on first use with the
    same functions, see `newsletter.article_text`). Everything that can refuse a record is still checked
    here, and a body given as HTML is still sanitised here: nothing unsafe is ever stored. ``screened``
    says the caller found no control character in the record (`screened`): the search is not repeated.

    Raises:
        ValueError: a required field is missing or malformed.
    """
    for key, value in () if screened else record.items():
        if isinstance(value, str) and (where := control_character(value)):
            raise ValueError(f"{key!r} contains a control character ({where})")
    ext_id = record.get("id")
    if ext_id is None or ext_id == "" or (isinstance(ext_id, str) and not ext_id.strip()):
        raise ValueError("missing 'id'")
    if isinstance(ext_id, bool) or not isinstance(ext_id, str | int):
        raise ValueError(f"'id' must be a string or an integer, got {_JSON_TYPES.get(type(ext_id), type(ext_id).__name__)}")
    for key in TEXT_FIELDS:
        if (value := record.get(key)) is not None and not isinstance(value, str):
            raise ValueError(f"{key!r} must be a string, got {_JSON_TYPES.get(type(value), type(value).__name__)}")
    for key, limit in LENGTH_LIMITS.items():
        if len(str(record.get(key) or "")) > limit:
            raise ValueError(f"{key!r} is longer than {limit} characters")
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("missing 'title'")
    lang = record.get("lang")
    if lang is None or lang == "":
        raise ValueError(f"missing 'lang' (one of {', '.join(LANGUAGES)})")
    if lang not in LANGUAGES:
        raise ValueError(f"'lang' must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    url = record.get("url") or record.get("source_url") or None
    title = " ".join(title.split())
    body_markdown: str | None = None
    if record.get("body_html"):
        body_html = sanitise_html(str(record["body_html"]), base_url=link_base(url), image_alt=title)
        body_text = html_plain_text(body_html)
    else:
        body_markdown = str(record.get("body") or "")
        body_html = "" if defer else markdown_body_html(body_markdown, url, title)
        body_text = markdown_plain_text(body_markdown)
    try:
        published_at = parse_datetime(record.get("published_at"))
    except ValueError as exc:
        raise ValueError(f"'published_at' is not ISO 8601: {record.get('published_at')!r}") from exc
    given = record.get("summary")
    if given:
        summary = str(given)
    elif defer:
        summary = ""
    else:
        summary = summary_of(body_html, body_markdown is not None, lang, url, rules)
    return {
        "external_id": str(ext_id),
        "title": title,
        "summary": summary,
        "body_html": body_html,
        "body_markdown": body_markdown,
        "body_text": body_text,
        "text_pending": defer and (not given or body_markdown is not None),
        "category": record.get("category") or None,
        "lang": lang,
        "published_at": published_at,
        "url": url,
        "translation_key": record.get("translation_key") or None,
    }


# `record_to_fields` keys whose value is "" while pending, and the `Article` columns behind them.
DERIVED = {"summary": "stored_summary", "body_html": "stored_body_html"}
INDEX_KEY = "related_index"  # added by `read_jsonl(..., index=True)`: the related-index entry, made in the worker


def final_value(fields: dict[str, Any], key: str) -> Any:
    """What ``fields[key]`` is once made: pending values of deferred fields (see `record_to_fields`) are
    made as on first use (the deployment's summary rules)."""
    if not fields.get("text_pending") or key not in DERIVED or fields[key] != "":
        return fields[key]
    from newsletter.config import deployment_summary_rules

    html = fields["body_html"] or markdown_body_html(fields["body_markdown"] or "", fields["url"], fields["title"])
    if key == "body_html":
        return html
    return summary_of(html, fields["body_markdown"] is not None, fields["lang"], fields["url"], deployment_summary_rules())


def differs(article: Article, fields: dict[str, Any]) -> bool:
    """Whether storing ``fields`` would change what ``article`` shows. A side still pending is compared by
    what it becomes (so a re-import never counts an article as changed only because it was read since)."""
    for key, value in fields.items():
        if key == INDEX_KEY or key == "text_pending":
            continue
        if key in DERIVED:
            if getattr(article, DERIVED[key]) == value:
                continue
            if getattr(article, key) != final_value(fields, key):  # the getattr makes a pending one
                return True
        elif getattr(article, key) != value:
            return True
    return False


def column_values(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` keyed by `Article` attribute (the stored columns behind ``summary`` and ``body_html``)."""
    return {DERIVED.get(k, k): v for k, v in fields.items() if k != INDEX_KEY}


# A character either check of a record refuses: `CONTROL` (`record_to_fields`) or a surrogate (`unstorable`).
_REFUSED = re.compile(CONTROL.pattern.removesuffix("]") + "\ud800-\udfff]")


def screened(record: dict[str, Any]) -> bool:
    """Whether ``record`` certainly passes both character checks: no nested value, and no key or string
    value holding a character of `_REFUSED` (one search per string instead of two on the import path)."""
    for key, value in record.items():
        if _REFUSED.search(key) or isinstance(value, dict | list) or (isinstance(value, str) and _REFUSED.search(value)):
            return False
    return True


def parse_line(
    number: int, line: str, rules: Sequence[SourceRules] = BUILTIN_RULES, *, defer: bool = False, index: bool = False
) -> dict[str, Any] | ArticleError | None:
    """One line of JSON Lines as `Article` fields (`record_to_fields`), an `ArticleError` naming it, or None
    if it is blank. With ``index``, the fields also carry the article's related-index entry under `INDEX_KEY`
    (`newsletter.related.store.entry_values`), so worker processes do the tokenising too."""
    if number == 1:
        line = line.removeprefix("\ufeff")  # a byte order mark (RFC 7159 §8.1 lets parsers ignore it)
    if not line.strip():
        return None
    record_id = None
    try:
        record = json.loads(line.rstrip("\r\n"))  # so an error at the end is not placed on a "line 2"
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        record_id = str(record.get("id")) if record.get("id") is not None else None
        if screened(record):  # one search for both checks below; else each names what it found
            fields = record_to_fields(record, rules, defer=defer, screened=True)
        else:
            fields = record_to_fields(record, rules, defer=defer)
            if unstorable(record):  # nested values and unpaired surrogates: PostgreSQL refuses them
                raise ValueError("contains a NUL or an unpaired surrogate character")
        if index:
            from newsletter.related.store import entry_values

            fields[INDEX_KEY] = entry_values(
                fields["lang"], fields["title"], fields["body_text"], fields["published_at"], fields["category"]
            )
        return fields
    except json.JSONDecodeError as exc:
        # Its own "line 1 column 5 (char 4)" would read as a second line number beside the file's.
        return ArticleError(number, record_id, f"invalid JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:
        return ArticleError(number, record_id, str(exc))


def _parse_block(
    block: list[tuple[int, str]], rules: Sequence[SourceRules], defer: bool, index: bool
) -> list[tuple[int, dict[str, Any] | ArticleError]]:
    return [(n, r) for n, line in block if (r := parse_line(n, line, rules, defer=defer, index=index)) is not None]


HASH_WINDOW = 500  # lines whose source hashes are looked up in one query
PARALLEL_MIN_LINES = 256  # below this, starting worker processes costs more than it saves
BLOCK_LINES = 64  # lines per task handed to a worker process (~30 ms of work: the hand-over stays small)


def read_jsonl(
    lines: Iterable[str], rules: Sequence[SourceRules] = BUILTIN_RULES, *, workers: int = 1, defer: bool = False, index: bool = False
) -> Iterator[tuple[int, dict[str, Any] | ArticleError]]:
    """Yield ``(line_number, fields)`` per non-blank line, or an `ArticleError` for a bad one, in line order
    (`parse_line` with ``defer`` and ``index``).

    With ``workers`` > 1 and at least `PARALLEL_MIN_LINES` lines, the records are converted (validation,
    sanitising, plain text, index terms, and without ``defer`` Markdown and summaries) in that many forked
    processes, a window of few blocks of lines at a time so memory stays bounded. Fork only from a
    single-threaded process (the CLI).
    """
    return _read_numbered(enumerate(lines, start=1), rules, workers, defer, index)


def _read_numbered(
    numbered: Iterator[tuple[int, str]], rules: Sequence[SourceRules], workers: int, defer: bool, index: bool
) -> Iterator[tuple[int, dict[str, Any] | ArticleError]]:
    first = list(itertools.islice(numbered, PARALLEL_MIN_LINES))
    if workers <= 1 or len(first) < PARALLEL_MIN_LINES:
        for number, line in itertools.chain(first, numbered):
            if (result := parse_line(number, line, rules, defer=defer, index=index)) is not None:
                yield number, result
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    if index:  # imported once here rather than in every worker process (numpy alone is ~0.1 s of CPU)
        import numpy  # noqa: F401

        import newsletter.related.store  # noqa: F401
    source = itertools.chain(first, numbered)
    in_flight: deque[Future[list[tuple[int, dict[str, Any] | ArticleError]]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        while True:
            while len(in_flight) < workers * 4:  # keep the workers busy while this process stores
                block = list(itertools.islice(source, BLOCK_LINES))
                if not block:
                    break
                in_flight.append(pool.submit(_parse_block, block, rules, defer, index))
            if not in_flight:
                return
            yield from in_flight.popleft().result()


def deferrable(rules: Sequence[SourceRules]) -> bool:
    """Whether summaries made with ``rules`` can wait for first use: only if they are the rules that use
    will apply (this process's `newsletter.config.deployment_summary_rules`)."""
    from newsletter.config import SettingsError, deployment_summary_rules

    try:
        return tuple(rules) == deployment_summary_rules()
    except SettingsError:
        return False


def import_articles(
    session: Session,
    path: Path,
    *,
    batch: int = 500,
    encoding: str = "utf-8",
    rules: Sequence[SourceRules] = BUILTIN_RULES,
    workers: int = 1,
    defer: bool | None = None,
) -> ImportReport:
    """Import a JSON Lines file in ``encoding``, idempotent on ``id`` (re-importing updates changed records),
    and add the new or changed articles to the related-articles index (`newsletter.related.store.index_articles`).

    A malformed line (bad JSON, a missing field, a control character such as NUL, a value too long
    for its column) is reported with its line number and the rest is still imported. Commits every
    ``batch`` records, so an interrupted import keeps what it did; if the database refuses a batch,
    its records are stored one by one, so one bad record never costs the good ones.

    ``workers`` > 1 converts the records in that many processes (see `read_jsonl`). The HTML of Markdown
    bodies and missing summaries are left pending (made on first use, see `newsletter.article_text`) when
    ``defer`` says so; by default (None) when ``rules`` are the deployment's (`deferrable`).

    Raises:
        FileEncodingError: the file is not in ``encoding`` (nothing was imported).
    """
    with open_text(path, encoding) as handle:
        return import_lines(session, handle, batch=batch, rules=rules, workers=workers, defer=defer)


def import_lines(
    session: Session,
    lines: Iterable[str],
    *,
    batch: int = 500,
    rules: Sequence[SourceRules] = BUILTIN_RULES,
    workers: int = 1,
    defer: bool | None = None,
) -> ImportReport:
    """Import JSON Lines text given line by line (an upload, a file); see `import_articles`.

    A line whose `source_hasher` hash an article already carries was imported before unchanged: it is
    counted ``unchanged`` without being parsed or converted (one indexed lookup per `HASH_WINDOW` lines).
    """
    report = ImportReport()
    pending: list[tuple[int, dict[str, Any]]] = []
    hasher = source_hasher(rules)
    hashes: dict[int, str] = {}  # line number -> source hash, for the lines on their way to `store`

    def unseen(numbered: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        while window := list(itertools.islice(numbered, HASH_WINDOW)):
            digests = {n: hasher(line) for n, line in window if line.strip()}
            known = set(session.scalars(select(Article.source_hash).where(Article.source_hash.in_(set(digests.values())))))
            for number, line in window:
                digest = digests.get(number)
                if digest in known:
                    report.unchanged += 1
                    continue
                if digest is not None:
                    hashes[number] = digest
                yield number, line

    def store(items: list[tuple[int, dict[str, Any]]]) -> None:
        """Create or update ``items`` and their related-articles index entries, and commit; the report
        counts them only once committed. New articles are inserted with one executemany and their index
        entries (made by `parse_line`) upserted with another; changed ones go through the ORM."""
        from newsletter.related.store import index_articles, write_entries

        counts = {"created": 0, "updated": 0, "unchanged": 0}
        ids = [f["external_id"] for _, f in items]
        existing = {a.external_id: a for a in session.scalars(select(Article).where(Article.external_id.in_(ids)))}
        new: dict[str, tuple[int, dict[str, Any]]] = {}  # external id -> (line, fields); the last line of an id wins
        changed: list[Article] = []
        for line, fields in items:
            article = existing.get(fields["external_id"])
            digest = hashes.get(line)
            if article is None:
                earlier = new.get(fields["external_id"])
                if earlier is None:
                    counts["created"] += 1
                elif any(v != earlier[1].get(k) for k, v in fields.items() if k != INDEX_KEY):
                    counts["updated"] += 1
                else:
                    counts["unchanged"] += 1
                new[fields["external_id"]] = (line, fields)
            elif differs(article, fields):
                for key, value in column_values(fields).items():
                    setattr(article, key, value)
                article.source_hash = digest
                changed.append(article)
                counts["updated"] += 1
            else:
                article.source_hash = digest  # imported before hashes were kept: skipped from now on
                counts["unchanged"] += 1
        if new:
            # Core, not the ORM (its bulk path costs more than SQLite's insert): table columns are named as
            # `record_to_fields` names them. A plain executemany (RETURNING would make SQLite run one
            # statement per row), then one id lookup.
            rows = [{**{k: v for k, v in f.items() if k != INDEX_KEY}, "source_hash": hashes.get(line)} for line, f in new.values()]
            session.execute(insert(Article.__table__), rows)
            made = dict(session.execute(select(Article.external_id, Article.id).where(Article.external_id.in_(list(new)))).all())
            entries = [{"article_id": made[external_id], **(f.get(INDEX_KEY) or _entry(f))} for external_id, (_, f) in new.items()]
            write_entries(session, entries)
        session.flush()
        # The related-articles index follows in the same transaction: only new or changed texts are tokenised.
        index_articles(session, changed)
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
        for line, _fields in pending:
            hashes.pop(line, None)
        pending.clear()

    if defer is None:
        defer = deferrable(rules)
    for number, result in _read_numbered(unseen(enumerate(lines, start=1)), rules, workers, defer, True):
        if isinstance(result, ArticleError):
            report.errors.append(result)
            hashes.pop(number, None)
            continue
        pending.append((number, result))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return report


def _entry(fields: dict[str, Any]) -> dict[str, Any]:
    from newsletter.related.store import entry_values

    return entry_values(fields["lang"], fields["title"], fields["body_text"], fields["published_at"], fields["category"])
