"""The ``newsletter segment`` commands: try a segment rule against the subscriber list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from newsletter.cli.common import settings as cli_settings
from newsletter.db import session_factory
from newsletter.segments import SegmentError, audience, count_audience, parse_segment, why_empty

SAMPLE_SIZE = 10


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys; in a rule that is almost always a mistake.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def load_rule(text: str) -> Any:
    """The JSON value in ``text``, or in the file it names as ``@path`` (`parse_segment` checks its shape).

    Raises:
        click.BadParameter: the file cannot be read, or the text is not JSON without duplicate keys.
    """
    source = "RULE"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror or exc}", param_hint="RULE") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise click.BadParameter(f"{source} is not valid JSON: {exc}", param_hint="RULE") from exc


@click.group()
def segment() -> None:
    """Segments: rules that choose which subscribers an issue goes to."""


@segment.command("preview")
@click.argument("rule")
def segment_preview(rule: str) -> None:
    """Count the subscribers RULE selects and show up to 10 of them (email, language, topics).

    RULE is a JSON object, or @FILE to read one from a file. Every key must hold:

    \b
      "languages":  ["en", "zh-Hans"]
      "topics":     {"any": ["security"]}  or  {"all": ["security", "economy"]}
      "status":     ["active"]  (a rule can only narrow the audience)
      "attributes": {"plan": "pro", "country": {"in": ["US", "CA"]}, "vip": {"exists": true}}
      "signed_up":  {"after": "2026-01-01", "before": "2026-06-01"}  (after <= signup < before, UTC)
      "and": [RULE, ...]   "or": [RULE, ...]   "not": RULE

    Only active subscribers whose address is not suppressed are ever selected.

    \b
    Example:
      newsletter segment preview '{"languages": ["en"], "topics": {"any": ["security"]}}'
    """
    try:
        parsed = parse_segment(load_rule(rule))
    except SegmentError as exc:
        raise click.BadParameter(str(exc), param_hint="RULE") from exc
    settings = cli_settings()
    try:
        with session_factory(settings.database_url)() as session:
            total = count_audience(session, parsed)
            sample = list(session.scalars(audience(parsed).limit(SAMPLE_SIZE)))
            why = f": {why_empty(session, parsed)}" if total == 0 else ""
    except (OperationalError, ProgrammingError) as exc:
        raise click.ClickException(f"cannot query the database ({exc.orig}); has 'newsletter db upgrade' been run?") from exc
    click.echo(f"{total} subscriber{'' if total == 1 else 's'} in the audience{why}")
    width = max((len(s.email) for s in sample), default=0)
    for sub in sample:
        click.echo(f"  {sub.email:<{width}}  {sub.lang:<7}  {', '.join(sub.topics) or '-'}")
    if total > len(sample):
        click.echo(f"  ... and {total - len(sample)} more")
