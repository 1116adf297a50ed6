"""What the command modules share: per-invocation settings and small formatting helpers."""

from __future__ import annotations

import sys

import click

from newsletter.config import Settings, load_settings
from newsletter.db import SchemaOutOfDate, check_schema, session_factory


def plural(n: int, noun: str) -> str:
    """``1 article``, ``2 articles``, ``2 failed deliveries``, ``2 addresses``."""
    if n == 1:
        return f"{n} {noun}"
    if noun.endswith("y"):
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}es" if noun.endswith(("s", "x", "sh", "ch")) else f"{n} {noun}s"


def confirm_or_refuse(question: str) -> None:
    """Ask ``question`` at a terminal; without one (a script, a pipe) refuse instead of reading EOF as "no"
    and printing a bare "Aborted!".

    Raises:
        click.UsageError: standard input is not a terminal (exit status 2; the message names ``--yes``).
        click.Abort: the person at the terminal said no.
    """
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question.rstrip('?')}: not at a terminal to confirm; pass --yes to do it anyway")
    click.confirm(question, abort=True, err=True)


def settings() -> Settings:
    """The settings the ``newsletter`` group loaded and checked for this invocation (loaded here when a
    command runs without the group, as in some tests)."""
    ctx = click.get_current_context(silent=True)
    loaded = ctx.meta.get("newsletter.settings") if ctx is not None else None
    return loaded if isinstance(loaded, Settings) else load_settings()


class Context:
    """Settings loaded once per invocation."""

    def __init__(self) -> None:
        try:
            self.settings: Settings = settings()
        except ValueError as exc:  # a setting that cannot be used: one line naming it, never a traceback
            raise click.ClickException(str(exc)) from exc

    def session(self):  # type: ignore[no-untyped-def]
        """A session on the configured database, after checking its schema is current.

        Raises:
            click.ClickException: the schema needs ``newsletter db upgrade`` (instead of a traceback).
        """
        try:
            check_schema(self.settings.database_url)
        except SchemaOutOfDate as exc:
            raise click.ClickException(str(exc)) from exc
        return session_factory(self.settings.database_url)()


pass_ctx = click.make_pass_decorator(Context, ensure=True)
