"""What the command modules share: per-invocation settings and small formatting helpers."""

from __future__ import annotations

import click

from newsletter.config import Settings, load_settings
from newsletter.db import session_factory


def plural(n: int, noun: str) -> str:
    """``1 article``, ``2 articles``, ``2 failed deliveries``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


class Context:
    """Settings loaded once per invocation."""

    def __init__(self) -> None:
        self.settings: Settings = load_settings()

    def session(self):  # type: ignore[no-untyped-def]
        return session_factory(self.settings.database_url)()


pass_ctx = click.make_pass_decorator(Context, ensure=True)
