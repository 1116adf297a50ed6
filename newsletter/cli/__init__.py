"""The ``newsletter`` command line (click): one module per command group.

Heavy modules (numpy and scipy, premailer, Celery) are imported inside the commands that use them, so
``newsletter --help`` starts fast.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os

import click

from newsletter import logs

# name -> (module, attribute, its short help as `newsletter --help` shows it). A command's module is imported only
# when that command runs (or its own --help is asked for), so `newsletter --help` imports click and nothing
# of the domain; tests/test_cli_startup.py checks each short help against the command's own.
COMMANDS = {
    "db": ("db", "db", "Database schema commands."),
    "articles": ("articles", "articles", "Article archive commands."),
    "subscribers": ("subscribers", "subscribers", "Subscriber commands."),
    # cli.drafts adds edit, delete and test-send to the group that cli.issues defines.
    "issue": ("drafts", "issue", "Create, preview, publish and follow issues."),
    "notices": ("notices", "notices", "Subscription messages (confirm, welcome, already, goodbye) queued, failed and sent."),
    "segment": ("segments", "segment", "Segments: rules that choose which subscribers an issue goes to."),
    "bounces": ("bounces", "bounces", "Bounce handling: VERP return paths come back as delivery status notifications."),
    "users": ("users", "users", "Editors who sign in to the admin pages (/admin)."),
    "tokens": ("users", "tokens", "Bearer tokens for the editor API (/api, see /docs)."),
    "related": ("related", "related", 'Related-articles ("You might also like") index commands.'),
    "worker": ("processes", "worker", "Run a Celery worker on the render, plan, send and notices queues (needs REDIS_URL)."),
    "sweep": ("processes", "sweep", "Run one sweep now: re-enqueue due retries and expired claims, finish done issues."),
    "web": (
        "processes",
        "web",
        (
            "Serve the web app with uvicorn: the admin pages (/admin), the editor API (/api, docs at /docs), "
            "view-in-browser editions (/issues/N/LANG), one-click unsubscribe, preferences, Prometheus metrics "
            "(/metrics) and a health check (/healthz)."
        ),
    ),
    "demo": ("processes", "demo", "Run the main job end to end on real articles: import, subscribe, create and publish an issue."),
}


def _shorten(text: str, limit: int) -> str:
    """``text`` cut at a word to at most ``limit`` characters, "..." marking the cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's "lazily loading subcommands" pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"newsletter.cli.{module}"), attribute)
        self.add_command(command, cmd_name)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        # click suggests close names from the commands already loaded, which here are none yet: a typo
        # ("subscriber") got no "Did you mean 'subscribers'?". Suggest from every name instead.
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx))
            hint = ""
            if len(close) == 1:
                hint = f" Did you mean {close[0]!r}?"
            elif close:
                hint = f" (Did you mean one of: {', '.join(close)}?)"
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click's own: one line per command, the help cut to the room left.
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, _shorten(COMMANDS[name][2], limit)) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def outage_message(exc: BaseException) -> str | None:
    """One line for an error that says a service is unreachable (the broker, the database), else None.

    Checked by module name, so that ``newsletter --help`` need not import kombu, redis or SQLAlchemy.
    """
    module = type(exc).__module__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if module.startswith(("kombu", "redis")):
        return f"cannot reach the broker (REDIS_URL): {first}; is Redis running?"
    if module.startswith("sqlalchemy"):
        from newsletter.db import first_line, is_transient_db_error

        if is_transient_db_error(exc):
            return f"cannot reach the database (DATABASE_URL): {first_line(exc)}"
    return None


class Main(LazyGroup):
    """The top-level group: commands load lazily (`LazyGroup`); a setting that cannot be used ends the
    command with one line and exit status 2; an unreachable broker or database with one line and status 1
    (never a traceback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Help is shown whatever the settings: remember whether any command asked for it.
        ctx.meta["newsletter.help"] = bool({"-h", "--help"} & set(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        from newsletter.config import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            for line in str(exc).splitlines():  # several settings at once (`SettingsErrors`): one line each
                click.echo(f"error: {line}", err=True)
            ctx.exit(2)
        except Exception as exc:
            message = outage_message(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """Publish a weekly newsletter issue in several languages to its subscribers.

    Configuration comes from the environment (DATABASE_URL, REDIS_URL, SMTP_URL, NEWSLETTER_*);
    with none set, everything runs in this process on SQLite and writes mail to a local outbox.
    Every setting is checked here, before any command runs.
    """
    from newsletter.config import load_settings

    # The format is read here directly: settings are loaded (and their warnings logged) once logging is set up.
    fmt = "json" if os.environ.get("NEWSLETTER_LOG_FORMAT", "").lower() == "json" else "text"
    logs.configure(logging.INFO if verbose else logging.WARNING, fmt)
    if not click.get_current_context().meta.get("newsletter.help"):
        # Raises SettingsError, which `Main` turns into one line and exit status 2. Kept for the commands
        # (`common.settings`), so a clamped value is warned about once, not once per loading.
        click.get_current_context().meta["newsletter.settings"] = load_settings()
