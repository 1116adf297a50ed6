"""The ``newsletter`` command line (click): one module per command group.

Heavy modules (scikit-learn, premailer, Celery) are imported inside the commands that use them, so
``newsletter --help`` starts fast.
"""

from __future__ import annotations

import logging
import os

import click

from newsletter import logs


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


class Main(click.Group):
    """The top-level group: a setting that cannot be used ends the command with one line and exit
    status 2; an unreachable broker or database with one line and status 1 (never a traceback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Help is shown whatever the settings: remember whether any command asked for it.
        ctx.meta["newsletter.help"] = bool({"-h", "--help"} & set(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        from newsletter.config import SettingsError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"error: {exc}", err=True)
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
        load_settings()  # raises SettingsError, which `Main` turns into one line and exit status 2


def _register() -> None:
    from newsletter.cli import articles, bounces, db, issues, processes, segments, subscribers

    for command in (
        db.db,
        articles.articles,
        subscribers.subscribers,
        issues.issue,
        segments.segment,
        bounces.bounces,
        processes.worker,
        processes.sweep,
        processes.web,
        processes.demo,
    ):
        main.add_command(command)


_register()
