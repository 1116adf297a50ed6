"""Subscribers: address normalisation and CSV import."""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from newsletter.db import first_line
from newsletter.models import LANGUAGES, Subscriber, SubscriberStatus, utcnow
from newsletter.textfiles import control_character, open_text


class InvalidAddress(ValueError):
    """An address that is not a valid RFC 5321 mailbox; ``address`` is the raw input."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address!r}: {reason}")
        self.address, self.reason = address, reason


def _memoise_domain_checks() -> None:
    # email_validator checks the domain of every address from scratch (IDNA, UTS #46: most of its time);
    # a list holds few distinct domains and the check is a pure function of the domain, so it is
    # memoised. Errors are not cached (raised again each time), so every bad address is still named.
    module = importlib.import_module("email_validator.validate_email")  # the module, which looks the check up by name
    check = getattr(module, "validate_email_domain_name", None)
    if callable(check) and not hasattr(check, "cache_info"):
        module.validate_email_domain_name = lru_cache(maxsize=4096)(check)  # type: ignore[attr-defined]


def normalise_address(address: str) -> str:
    """Validate and normalise an address: the domain is lower-cased (and IDNA-encoded to Unicode
    form); the local part keeps its case, since RFC 5321 §2.4 makes it case-sensitive.

    Raises:
        InvalidAddress: syntax is wrong, or the input has control characters (header injection).
    """
    if any(ch in address for ch in "\r\n\x00"):
        raise InvalidAddress(address, "contains a line break or NUL")
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidAddress(address, str(exc)) from exc


def normalise_lang(value: str | None) -> str:
    """Map common spellings to the BCP 47 tags we publish in (``zh-CN`` -> ``zh-Hans``, ...).

    Raises:
        ValueError: not a supported language.
    """
    raw = (value or "en").strip()
    key = raw.lower().replace("_", "-")
    aliases = {
        "en": "en", "en-us": "en", "en-gb": "en",
        "zh-hans": "zh-Hans", "zh-cn": "zh-Hans", "zh-sg": "zh-Hans", "zh": "zh-Hans",
        "zh-hant": "zh-Hant", "zh-tw": "zh-Hant", "zh-hk": "zh-Hant", "zh-mo": "zh-Hant",
    }  # fmt: skip
    if key not in aliases:
        raise ValueError(f"unsupported language {raw!r} (use one of {', '.join(LANGUAGES)})")
    return aliases[key]


@dataclass
class SubscriberImportReport:
    """Counts of an import, and errors naming their CSV line. ``merged`` counts rows of the file that
    repeated an earlier row's address; ``updated``/``unchanged`` count subscribers that already existed."""

    created: int = 0
    merged: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # addresses created as ``pending`` (to be asked to confirm)
    swallowed: int = 0  # rows after the first that an unclosed quote ran over: rejected too, with one error

    @property
    def rejected(self) -> int:
        """Rows not imported: one per error, plus each further row an unclosed quote swallowed (a row per
        line: a quote that runs on to the end of the file swallows every row below it)."""
        return len(self.errors) + self.swallowed


CORE_COLUMNS = ("email", "name", "lang", "topics", "signed_up", "status")  # status (as exported) is never imported


NAME_LENGTH = 256  # newsletter.models.Subscriber.name


# Bidirectional embeddings, overrides and isolates (Unicode UAX #9): U+202E in a name reverses what follows it
# wherever the name is shown (the To field, admin lists, exports), a known spoofing trick (CVE-2021-42574 kind).
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def clean_name(value: str) -> str:
    """A display name fit for a ``To`` header: line breaks and tabs become single spaces (a CR LF would
    otherwise fail every message to this person, as header injection, RFC 5322 §2.2), and bidirectional
    embedding, override and isolate characters (U+202A–U+202E, U+2066–U+2069) are dropped.

    Raises:
        ValueError: another control character (NUL ...), or longer than `NAME_LENGTH`.
    """
    if where := control_character(value):
        raise ValueError(f"the name contains a control character ({where})")
    name = " ".join(BIDI_CONTROLS.sub("", value).split())
    if len(name) > NAME_LENGTH:
        raise ValueError(f"the name is longer than {NAME_LENGTH} characters")
    return name


def header_delimiter(header: str) -> str:
    """The cell separator of a CSV file from its header line: ``,`` when the header has one, else ``;``
    or a tab when `csv.Sniffer` finds one of those (spreadsheets in many locales export ``;``), else ``,``.
    Only the header is looked at: ``;`` also separates topics inside a cell of a comma-separated file."""
    if "," in header:
        return ","
    try:
        return csv.Sniffer().sniff(header, delimiters=";\t").delimiter
    except csv.Error:  # one column: no separator to find
        return ","


class _Lines:
    """The lines of a file for `csv.reader`, remembering whether it ran past the last one."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.exhausted = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            return next(self._lines)
        except StopIteration:
            self.exhausted = True
            raise


def import_subscribers(
    session: Session, path: Path, *, status: SubscriberStatus = SubscriberStatus.ACTIVE, encoding: str = "utf-8"
) -> SubscriberImportReport:
    """Import a CSV in ``encoding`` with columns ``email, name, lang, topics`` (topics separated by ``;``
    or ``|``), an optional ``signed_up`` (ISO 8601 date or time: the signup date segments can select on),
    and any other columns, which become string attributes (``plan``, ``country`` ...; empty cells are
    left out).

    Addresses that differ only in the case of their domain are one subscriber: later rows update the
    name, language, topics and attributes of the earlier one. Invalid rows are reported with their line
    number and the others imported: a bad address or language, more cells than the header names, a
    control character (NUL ...) in any cell; line breaks in a name are turned into spaces. Existing
    unsubscribed or bounced subscribers keep their status (an import never re-subscribes). New subscribers
    get ``status`` (``pending`` to ask them to confirm, see `newsletter.signup.send_confirmations`) and
    ``source="import"``. An address
    erased on request after it had opted out is refused (see `newsletter.erasure`). If the database
    refuses a chunk, its rows are stored one by one, so one bad row never costs the good ones.

    Raises:
        FileEncodingError: the file is not in ``encoding`` (nothing was imported).
        ValueError: the header names no ``email`` column, or one column twice (nothing was imported).
    """
    from newsletter.erasure import address_hash, erased_suppressed_hashes

    _memoise_domain_checks()
    erased = erased_suppressed_hashes(session)  # one query, not one per row
    report = SubscriberImportReport()
    rows: dict[str, dict[str, object]] = {}
    lines: dict[str, int] = {}
    with open_text(path, encoding, newline="") as handle:
        header = handle.readline()
        delimiter = header_delimiter(header)
        source = _Lines(itertools.chain([header], handle))
        reader = csv.DictReader(source, delimiter=delimiter)
        if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
            found = ", ".join(repr(f) for f in reader.fieldnames or []) or "nothing"
            raise ValueError(f"{path}: the header must name an 'email' column (it names {found})")
        # Names are matched without case or spaces, and a second column of one name silently replaced the
        # first in every row (``email,...,Email`` imported the other column's addresses): refuse the file.
        names = [f.strip().lower() for f in reader.fieldnames]
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            where = "; ".join(f"{n!r} in columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}" for n in twice)
            raise ValueError(f"{path}: the header names a column twice ({where}); nothing was imported")
        width = len(reader.fieldnames)
        end = reader.line_num  # the line the previous record ended on (the header's)
        for raw in reader:
            start, line, end = end + 1, reader.line_num, reader.line_num
            if line > start and any(("\n" in v or "\r" in v) and delimiter in v for v in raw.values() if isinstance(v, str)):
                # A quote opened and not closed swallows the following rows into one cell (separators and all).
                report.errors.append(f"lines {start}-{line}: a quoted cell runs over {line - start + 1} lines; is a closing quote "
                                     f"missing on line {start}? (nothing from these lines was imported)")  # fmt: skip
                report.swallowed += line - start
                continue
            if source.exhausted:
                # The reader asked for a line after this record's last and found the end of the file: only a
                # quoted cell left open does that (csv, not strict, ends the cell there and returns the row).
                report.errors.append(f"line {start}: a quoted cell runs to the end of the file; is a closing quote missing on "
                                     f"line {start}? (nothing from this line was imported)")  # fmt: skip
                report.swallowed += line - start
                continue
            if None in raw:  # csv.DictReader's restkey: cells beyond the header
                report.errors.append(f"line {line}: {width + len(raw[None])} cells, but the header names {width} columns")  # type: ignore[index, arg-type]
                continue
            try:
                row = _cells(raw)
                email = normalise_address(row.get("email", ""))
                if erased and address_hash(email) in erased:
                    raise ValueError(f"{email} was erased on its owner's request after opting out; it is not imported again")
                lang = normalise_lang(row.get("lang") or None)
                signed_up = _signup(row.get("signed_up"))
                name = clean_name(row.get("name", ""))
            except ValueError as exc:
                report.errors.append(f"line {line}: {exc}")
                continue
            topics = sorted({t.strip() for t in row.get("topics", "").replace("|", ";").split(";") if t.strip()})
            attributes = {k: v for k, v in row.items() if k and k not in CORE_COLUMNS and v != ""}
            if email in rows:
                report.merged += 1
                attributes = {**rows[email]["attributes"], **attributes}  # type: ignore[dict-item]
            rows[email] = {"name": name, "lang": lang, "topics": topics, "attributes": attributes}
            lines[email] = line
            if signed_up is not None:
                rows[email]["created_at"] = signed_up

    emails = list(rows)
    for start in range(0, len(emails), 1000):
        chunk = emails[start : start + 1000]
        try:
            _store(session, chunk, rows, status, report)
        except DBAPIError:
            session.rollback()
            for email in chunk:  # find the row the database refused; keep the others
                try:
                    _store(session, [email], rows, status, report)
                except DBAPIError as exc:
                    session.rollback()
                    report.errors.append(f"line {lines[email]}: refused by the database: {first_line(exc)}")
    return report


# A cell a spreadsheet would read as a formula starts with one of these (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """``cell`` as written to an exported CSV: prefixed with ``'`` when it starts like a formula, so a
    spreadsheet shows a sign-up name such as ``=HYPERLINK(...)`` as text instead of running it (OWASP,
    "CSV Injection"). `from_spreadsheet` undoes it on import, so an export imports back unchanged."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def from_spreadsheet(cell: str) -> str:
    """The inverse of `spreadsheet_safe`: a leading ``'`` before a formula's first character is dropped."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _cells(raw: dict[str | None, str | None]) -> dict[str, str]:
    """Header names lower-cased and cells stripped (and `from_spreadsheet` applied); a control character
    in any cell is refused.

    Raises:
        ValueError: naming the column.
    """
    row = {(k or "").strip().lower(): from_spreadsheet((v or "").strip()) for k, v in raw.items() if isinstance(v, str | None)}
    for key, value in row.items():
        if key != "name" and (where := control_character(value)):
            raise ValueError(f"column {key!r} contains a control character ({where})")
    return row


def _store(
    session: Session, chunk: list[str], rows: dict[str, dict[str, object]], status: SubscriberStatus, report: SubscriberImportReport
) -> None:
    """Create or update the subscribers of ``chunk`` and commit; ``report`` counts them once committed.

    New subscribers go in with one multi-row INSERT (SQLAlchemy's insertmanyvalues); only the existing
    ones are loaded as ORM objects, to be compared and updated.
    """
    created = updated = unchanged = 0
    pending: list[str] = []
    existing = {s.email: s for s in session.scalars(select(Subscriber).where(Subscriber.email.in_(chunk)))}
    now = utcnow()
    confirmed = now if status == SubscriberStatus.ACTIVE else None
    new = [
        {"email": email, "name": "", "lang": "en", "topics": [], "attributes": {}, "status": status, "created_at": now,
         "confirmed_at": confirmed, "soft_bounces": 0, "source": "import", **rows[email]}
        for email in chunk
        if email not in existing
    ]  # fmt: skip
    if new:
        _insert_new(session, new)
        created = len(new)
        if status == SubscriberStatus.PENDING:
            pending.extend(row["email"] for row in new)
    for email in chunk:
        values = rows[email]
        subscriber = existing.get(email)
        if subscriber is None:
            continue
        values = {**values, "attributes": {**(subscriber.attributes or {}), **values["attributes"]}}  # type: ignore[dict-item]
        if all(getattr(subscriber, key) == value for key, value in values.items()):
            unchanged += 1
            continue
        for key, value in values.items():
            setattr(subscriber, key, value)
        updated += 1
    session.commit()
    report.pending.extend(pending)
    report.created, report.updated, report.unchanged = report.created + created, report.updated + updated, report.unchanged + unchanged


COPY_COLUMNS = (
    "email", "name", "lang", "topics", "attributes", "status", "created_at", "confirmed_at", "soft_bounces", "source",
)  # fmt: skip


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert new subscriber rows (every key of `COPY_COLUMNS`): with COPY on PostgreSQL (in the session's
    transaction), else one multi-row INSERT. The same values either way (tests/test_import_paths.py)."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(Subscriber), rows)
        return
    import psycopg

    raw = session.connection().connection.driver_connection
    statement = f"COPY subscribers ({', '.join(COPY_COLUMNS)}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row((
                    row["email"], row["name"], row["lang"], json.dumps(row["topics"]), json.dumps(row["attributes"]),
                    SubscriberStatus(row["status"]).value, row["created_at"], row["confirmed_at"], row["soft_bounces"],
                    row["source"],
                ))  # fmt: skip
    except psycopg.Error as exc:  # as SQLAlchemy would raise it, so the caller stores the rows one by one
        raise DBAPIError(statement, None, exc) from exc


def _signup(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"signed_up {value!r} is not an ISO 8601 date or time") from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """The subscriber with this address (normalised first), or None."""
    return session.scalar(select(Subscriber).where(Subscriber.email == normalise_address(email)))


def unsubscribe(session: Session, subscriber_id: int, source: str = "link") -> Subscriber | None:
    """Unsubscribe and suppress the address; idempotent; commits. Returns None for an unknown id.

    Pending deliveries of issues still sending are skipped at send time (the sender re-checks status).
    """
    from newsletter.models import Suppression

    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = utcnow()
    if session.scalar(select(Suppression.id).where(Suppression.email == subscriber.email)) is None:
        session.add(Suppression(email=subscriber.email, reason="unsubscribe", detail=source))
    session.commit()
    return subscriber


def update_preferences(
    session: Session, subscriber_id: int, lang: str, topics: list[str], *, paused: bool | None = None
) -> Subscriber | None:
    """Set a subscriber's language and topics (and pause or resume deliveries unless ``paused`` is None);
    commits. Returns None for an unknown id.

    Raises:
        ValueError: unsupported language.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    subscriber.lang = normalise_lang(lang)
    subscriber.topics = sorted({t.strip() for t in topics if t.strip()})
    if paused is not None:
        subscriber.paused = paused
    session.commit()
    return subscriber
