"""Structured logs: every record carries the issue, delivery and task it concerns.

Context is kept in `contextvars`, bound by the task layer (issue, task) and the sender (delivery), and
added to each record by `ContextFilter`. ``NEWSLETTER_LOG_FORMAT=json`` writes one JSON object per line
for log shippers; the default is readable text with ``key=value`` pairs appended.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("issue_id", "delivery_id", "task_id")
_context: dict[str, ContextVar[Any]] = {name: ContextVar(name, default=None) for name in FIELDS}


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind context fields (``issue_id=…``, ``delivery_id=…``, ``task_id=…``) for the ``with`` block."""
    tokens = [(_context[k], _context[k].set(v)) for k, v in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound context fields to every record (None where unbound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message issue_id=… delivery_id=…``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None) is not None)
        return f"{line} {extra}" if extra else line


def issue_name(session: Any, issue_id: int) -> str:
    """How logs name the issue with internal id ``issue_id``: ``"issue 4"``, by the number editors see.

    Ids and numbers differ once a draft was deleted, and editors only know numbers; the id stays in the
    record's ``issue_id`` field. ``session`` is a SQLAlchemy `Session`; one primary-key read (none when
    the session holds the issue). Never raises: naming an issue in a log must not break the work, so
    when the row is gone or the database cannot answer, the name is ``"issue id 5"``.
    """
    from newsletter.models import Issue  # imported here: this module is imported by everything, models included

    try:
        issue = session.get(Issue, issue_id)
    except Exception:
        return f"issue id {issue_id}"
    return f"issue {issue.number}" if issue is not None else f"issue id {issue_id}"


def install(handler: logging.Handler, fmt: str = "text") -> None:
    """Give ``handler`` the context filter and the formatter for ``fmt`` (``text`` or ``json``)."""
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    """Route the root logger through one stderr handler with context (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "_newsletter", False):
            install(handler, fmt)
            return
    handler = logging.StreamHandler()
    handler._newsletter = True  # type: ignore[attr-defined]
    install(handler, fmt)
    root.addHandler(handler)
