"""The ``newsletter`` command line (click)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from newsletter import logs, sweeper
from newsletter.articles import import_articles
from newsletter.cli_common import Context, pass_ctx
from newsletter.config import load_settings
from newsletter.db import current_revision, upgrade
from newsletter.subscribers import import_subscribers


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


# -- db ---------------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to the newest version (Alembic)."""
    before = current_revision(ctx.settings.database_url)
    upgrade(ctx.settings.database_url)
    after = current_revision(ctx.settings.database_url)
    where = ctx.settings.describe()["DATABASE_URL"]
    if before == after:
        click.echo(f"{where}: already at the newest schema ({after})")
    else:
        click.echo(f"{where}: migrated from {before or 'an empty database'} to {after}")


# -- articles ---------------------------------------------------------------------------------------
@main.group()
def articles() -> None:
    """Article archive commands."""


@articles.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def articles_import(ctx: Context, file: Path) -> None:
    """Import articles from a JSON Lines FILE (fields: id, title, body or body_html, category, lang,
    published_at). Idempotent on id; bad lines are reported and skipped."""
    with ctx.session() as session:
        report = import_articles(session, file)
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, {len(report.errors)} rejected")
    if report.errors and not (report.created or report.updated or report.unchanged):
        sys.exit(1)


# -- subscribers ------------------------------------------------------------------------------------
@main.group()
def subscribers() -> None:
    """Subscriber commands."""


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def subscribers_import(ctx: Context, file: Path) -> None:
    """Import subscribers from a CSV FILE with columns email, name, lang, topics (';'-separated), an
    optional signed_up date, and any other columns as attributes. Invalid addresses are reported;
    duplicates are merged (domain compared case-insensitively)."""
    with ctx.session() as session:
        try:
            report = import_subscribers(session, file)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    for error in report.errors:
        click.echo(f"{file}: {error}", err=True)
    click.echo(
        f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.merged} merged, {len(report.errors)} rejected"
    )


@subscribers.command("show")
@click.argument("email")
@pass_ctx
def subscribers_show(ctx: Context, email: str) -> None:
    """Show one subscriber: status, language, topics, attributes, suppression and recent deliveries."""
    from sqlalchemy import select

    from newsletter.models import Delivery, Issue, Suppression
    from newsletter.subscribers import InvalidAddress, find_subscriber

    with ctx.session() as session:
        try:
            subscriber = find_subscriber(session, email)
        except InvalidAddress as exc:
            raise click.ClickException(str(exc)) from exc
        if subscriber is None:
            raise click.ClickException(f"no subscriber {email}")
        click.echo(f"{subscriber.email} ({subscriber.name or 'no name'}): {subscriber.status}, {subscriber.lang}")
        click.echo(f"  signed up {subscriber.created_at:%Y-%m-%d}; topics: {', '.join(subscriber.topics) or '-'}")
        if subscriber.attributes:
            click.echo("  attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(subscriber.attributes.items())))
        suppression = session.scalar(select(Suppression).where(Suppression.email == subscriber.email))
        if suppression:
            click.echo(f"  suppressed since {suppression.created_at:%Y-%m-%d}: {suppression.reason} ({suppression.detail or ''})")
        rows = session.execute(
            select(Issue.number, Delivery.status, Delivery.attempts, Delivery.last_error)
            .join(Issue, Issue.id == Delivery.issue_id)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(Issue.number.desc())
            .limit(10)
        )
        for number, status, attempts, error in rows:
            click.echo(f"  issue {number}: {status} after {attempts} attempt(s)" + (f" — {error}" if error else ""))


# -- processes --------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--beat", is_flag=True, help="Also run the periodic sweeper (Celery beat) in this worker.")
@click.option("--concurrency", "-c", type=int, default=2, show_default=True)
@click.pass_context
def worker(click_ctx: click.Context, beat: bool, concurrency: int) -> None:
    """Run a Celery worker on the render, plan and send queues (needs REDIS_URL).

    Extra arguments are passed on to celery worker.
    """
    settings = load_settings()
    if settings.embedded:
        raise click.ClickException("REDIS_URL is not set: without a broker, 'newsletter issue publish' runs the tasks in-process")
    from tasks import app

    argv = ["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "-Q", "render,plan,send"]
    if beat:
        settings.home.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(settings.home / "celerybeat-schedule")]
    app.worker_main(argv + list(click_ctx.args))


@main.command()
@pass_ctx
def sweep(ctx: Context) -> None:
    """Run one sweep now: re-enqueue due retries and expired claims, finish done issues."""
    from tasks.publish import enqueue_send, start_pipeline, use_settings

    use_settings(ctx.settings)
    with ctx.session() as session:
        result = sweeper.sweep(session, ctx.settings, enqueue_send, start=start_pipeline)
    fired = ", ".join(str(i) for i in result.fired) or "none"
    click.echo(
        f"fired scheduled issues: {fired}; enqueued {sum(result.enqueued.values())} batches; finished issues: {result.finished or 'none'}"
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int, help="Request threads (waitress).")
@click.option("--dev", is_flag=True, help="Flask's development server with reloading, instead of waitress.")
def web(host: str, port: int, threads: int, dev: bool) -> None:
    """Serve the web pages: view-in-browser editions (/issues/N/LANG), one-click unsubscribe, preferences,
    Prometheus metrics (/metrics) and a health check (/healthz), with the waitress WSGI server."""
    from newsletter.web import create_app

    app = create_app(load_settings())
    if dev:
        app.run(host=host, port=port, debug=True)
        return
    from waitress import serve

    click.echo(f"serving on http://{host}:{port}")
    serve(app, host=host, port=port, threads=threads, ident="newsletter")


@main.command()
@click.option("--subscribers", "per_lang", default=40, show_default=True, type=int, help="Subscribers per language.")
@click.option("--keep", is_flag=True, help="Keep the previous demo database and outbox instead of starting fresh.")
def demo(per_lang: int, keep: bool) -> None:
    """Run the main job end to end on real articles: import, subscribe, create and publish an issue.

    Without DATABASE_URL/REDIS_URL/SMTP_URL it uses var/demo/ (SQLite, in-process worker, outbox).
    """
    from newsletter.cli_issues import follow_with_bar
    from newsletter.demo import run_demo

    run_demo(per_lang=per_lang, fresh=not keep, echo=click.echo, follow=follow_with_bar)


from newsletter.cli_issues import issue  # noqa: E402

main.add_command(issue)

from newsletter.cli_segments import segment  # noqa: E402

main.add_command(segment)

from newsletter.cli_bounces import bounces  # noqa: E402

main.add_command(bounces)


if __name__ == "__main__":
    main()
