"""Long-running and maintenance commands: ``worker``, ``sweep``, ``web`` and ``demo``."""

from __future__ import annotations

import socket

import click

from newsletter.cli.common import Context, pass_ctx
from newsletter.cli.common import settings as cli_settings


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--beat", is_flag=True, help="Also run the periodic sweeper (Celery beat) in this worker.")
@click.option("--concurrency", "-c", type=int, default=2, show_default=True)
@click.pass_context
def worker(click_ctx: click.Context, beat: bool, concurrency: int) -> None:
    """Run a Celery worker on the render, plan, send and notices queues (needs REDIS_URL).

    Extra arguments are passed on to celery worker (a later -Q wins: '-Q notices' for a worker of
    subscription messages only).
    """
    settings = cli_settings()
    if settings.embedded:
        raise click.ClickException("REDIS_URL is not set: without a broker, 'newsletter issue publish' runs the tasks in-process")
    from tasks import app
    from tasks.app import QUEUES

    argv = ["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "-Q", ",".join(QUEUES)]
    if beat:
        settings.home.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(settings.home / "celerybeat-schedule")]
    app.worker_main(argv + list(click_ctx.args))


@click.command()
@pass_ctx
def sweep(ctx: Context) -> None:
    """Run one sweep now: re-enqueue due retries and expired claims, finish done issues."""
    from newsletter import notice_queue, sweeper
    from tasks.app import use_settings
    from tasks.notices import enqueue_due_notices
    from tasks.publish import enqueue_send, start_pipeline

    use_settings(ctx.settings)
    with ctx.session() as session:
        result = sweeper.sweep(session, ctx.settings, enqueue_send, start=start_pipeline)
        # Without a broker no worker runs: due notices are sent by this process.
        notices = sum(notice_queue.send_due(session, ctx.settings).values()) if ctx.settings.embedded else enqueue_due_notices()
    fired = ", ".join(str(i) for i in result.fired) or "none"
    click.echo(
        f"fired scheduled issues: {fired}; enqueued {sum(result.enqueued.values())} batches; finished issues: {result.finished or 'none'}"
        f"; notices handed on: {notices}"
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes.")
@click.option("--reload", is_flag=True, help="Restart on code changes (development).")
def web(host: str, port: int, workers: int, reload: bool) -> None:
    """Serve the web app with uvicorn: the admin pages (/admin), the editor API (/api, docs at /docs),
    view-in-browser editions (/issues/N/LANG), one-click unsubscribe, preferences, Prometheus metrics
    (/metrics) and a health check (/healthz).

    Without REDIS_URL a publish started from the web runs in this process (keep it running until sent)."""
    import uvicorn

    cli_settings()  # a bad setting fails here, before uvicorn starts
    url = f"http://{host}:{port}"
    if workers > 1 or reload:
        # Supervised child processes start the app; each logs "Application startup complete" when ready.
        click.echo(f"starting on {url}: ready once uvicorn logs 'Application startup complete'")
        uvicorn.run(APP, host=host, port=port, workers=workers, reload=reload, log_level="info")
        return

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # the app is loaded and the socket listens: said only now, not before a slow import
                click.echo(f"serving on {url}")

    server = Server(uvicorn.Config(APP, host=host, port=port, log_level="info"))
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's own exit status for a failed startup (uvicorn.main.STARTUP_FAILURE)


APP = "newsletter.web.asgi:app"


@click.command()
@click.option("--subscribers", "per_lang", default=40, show_default=True, type=int, help="Subscribers per language.")
@click.option("--keep", is_flag=True, help="Keep the previous demo database and outbox instead of starting fresh.")
@click.option(
    "--use-configured-services",
    is_flag=True,
    help="Run against the configured DATABASE_URL / SMTP_URL (refused without this flag).",
)
def demo(per_lang: int, keep: bool, use_configured_services: bool) -> None:
    """Run the main job end to end on real articles: import, subscribe, create and publish an issue.

    Without DATABASE_URL/REDIS_URL/SMTP_URL it uses var/demo/ (SQLite, in-process worker, outbox).
    With DATABASE_URL or SMTP_URL set it refuses unless given --use-configured-services, and even
    then its issue goes only to the subscribers it generated (addresses at example.com/.net/.org).
    """
    from newsletter.cli.issues import follow_with_bar
    from newsletter.demo import DemoRefused, run_demo
    from newsletter.runner import BrokerUnavailable

    try:
        outcome = run_demo(
            per_lang=per_lang, fresh=not keep, echo=click.echo, follow=follow_with_bar, use_configured=use_configured_services
        )
    except (DemoRefused, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    if outcome.status != "sent":
        raise click.ClickException(f"the demo issue ended {outcome.status}: {outcome.error}")
