"""The ``newsletter`` command line (click): one module per command group.

Heavy modules (scikit-learn, premailer, Celery) are imported inside the commands that use them, so
``newsletter --help`` starts fast.
"""

from __future__ import annotations

import logging
import os

import click

from newsletter import logs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """Publish a weekly newsletter issue in several languages to its subscribers.

    Configuration comes from the environment (DATABASE_URL, REDIS_URL, SMTP_URL, NEWSLETTER_*);
    with none set, everything runs in this process on SQLite and writes mail to a local outbox.
    """
    # The format is read here directly: settings are loaded (and their warnings logged) once logging is set up.
    fmt = "json" if os.environ.get("NEWSLETTER_LOG_FORMAT", "").lower() == "json" else "text"
    logs.configure(logging.INFO if verbose else logging.WARNING, fmt)


def _register() -> None:
    from newsletter.cli import articles, bounces, db, drafts, issues, processes, segments, subscribers, users

    _ = drafts  # adds edit, delete and test-send to the issue group

    for command in (
        db.db,
        articles.articles,
        subscribers.subscribers,
        issues.issue,
        segments.segment,
        bounces.bounces,
        users.users,
        users.tokens,
        processes.worker,
        processes.sweep,
        processes.web,
        processes.demo,
    ):
        main.add_command(command)


_register()
