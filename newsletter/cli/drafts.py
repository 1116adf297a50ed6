"""The ``newsletter issue`` commands that change a draft or try it out: edit, delete and test-send."""

from __future__ import annotations

import click

from newsletter.cli.common import Context, confirm_or_refuse, pass_ctx, plural
from newsletter.cli.issues import _lang_map, issue
from newsletter.issues import IssueError, articles_by_external_id, get_issue
from newsletter.rendering import RenderError


def _ids(value: str | None) -> list[str]:
    return [i.strip() for i in (value or "").split(",") if i.strip()]


@issue.command("edit")
@click.argument("number", type=int)
@click.option("--title", "titles", multiple=True, metavar="LANG=TEXT", help="Edition title. Repeatable.")
@click.option("--note", "notes", multiple=True, metavar="LANG=TEXT", help="Editor's note (Markdown). Repeatable.")
@click.option("--add", "add_ids", metavar="IDS", help="Comma-separated article ids to append (or insert with --at).")
@click.option("--at", "position", type=int, help="0-based position for --add.")
@click.option("--remove", "remove_ids", metavar="IDS", help="Comma-separated article ids to take out.")
@click.option("--order", "order_ids", metavar="IDS", help="The issue's complete article list, in the new order.")
@click.option("--segment", "segment_rule", metavar="RULE", help="Audience rule as JSON or @FILE ('{}' for everyone).")
@pass_ctx
def issue_edit(
    ctx: Context,
    number: int,
    titles: tuple[str, ...],
    notes: tuple[str, ...],
    add_ids: str | None,
    position: int | None,
    remove_ids: str | None,
    order_ids: str | None,
    segment_rule: str | None,
) -> None:
    """Change draft NUMBER: titles and notes per language, its articles and their order, its audience.

    The changes are made in the order remove, add, order, texts, audience (so --order may name the articles
    --add brings in, as the complete list it is), and stored together: if one is refused, none is stored.
    """
    from newsletter import issues
    from newsletter.cli.segments import load_rule

    rule = load_rule(segment_rule) if segment_rule is not None else None  # a bad rule: refused before any change
    options = issues.zh_hant_options(ctx.settings)
    with ctx.session() as session:
        try:
            draft = get_issue(session, number)
            if remove_ids:
                for article in articles_by_external_id(session, _ids(remove_ids)):
                    issues.remove_article(session, draft, article, **options, commit=False)
            if add_ids:
                issues.add_articles(session, draft, articles_by_external_id(session, _ids(add_ids)), position, **options, commit=False)
            if order_ids:
                issues.set_articles(session, draft, articles_by_external_id(session, _ids(order_ids)), **options, commit=False)
            if titles or notes:
                issues.update_texts(
                    session,
                    draft,
                    _lang_map(titles, "--title"),
                    _lang_map(notes, "--note"),
                    conversion=ctx.settings.zh_hant_conversion,
                    phrases=ctx.settings.zh_hant_phrases,
                    commit=False,
                )
            if segment_rule is not None:
                issues.set_segment(session, draft, rule or None, commit=False)
            issues.require_editable(session, draft)  # even with nothing to change, say so for a non-draft
            session.commit()
        except IssueError as exc:
            session.rollback()  # what this command changed before the refusal goes too
            raise click.ClickException(str(exc)) from exc
        langs = ", ".join(f"{e.lang}{' (converted)' if e.converted_from else ''}" for e in draft.editions) or "none"
        click.echo(f"issue {number}: {plural(len(draft.items), 'article')}; editions: {langs}")
        for n, article in enumerate(issues.issue_article_list(draft), 1):
            click.echo(f"  {n:>3}. {article.external_id}  [{article.lang}]  {article.title}")
        for warning in issues.draft_warnings(draft):
            click.echo(f"warning: {warning}", err=True)


@issue.command("delete")
@click.argument("number", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def issue_delete(ctx: Context, number: int, yes: bool) -> None:
    """Delete draft NUMBER (an issue that sent anything stays as the record of it)."""
    from newsletter.issues import check_deletable, delete_issue

    if not yes:
        with ctx.session() as session:  # say "only a draft can be deleted" before asking, not after
            try:
                check_deletable(session, get_issue(session, number))
            except IssueError as exc:
                raise click.ClickException(str(exc)) from exc
        confirm_or_refuse(f"Delete issue {number}?")
    with ctx.session() as session:
        try:
            delete_issue(session, get_issue(session, number))
        except IssueError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"issue {number} deleted")


@issue.command("test-send")
@click.argument("number", type=int)
@click.option("--lang", default="en", show_default=True, help="Edition language.")
@click.option(
    "--to", "addresses", multiple=True, required=True, metavar="ADDRESS", help="Recipient; repeatable or comma-separated (at most 10)."
)
@pass_ctx
def issue_test_send(ctx: Context, number: int, lang: str, addresses: tuple[str, ...]) -> None:
    """Mail one edition of issue NUMBER to a few addresses as a test ([TEST] subject, X-Newsletter-Test
    header) through the configured SMTP relay or outbox. Never counted as a delivery."""
    from newsletter.testsend import send_test, split_addresses

    with ctx.session() as session:
        try:
            result = send_test(session, ctx.settings, get_issue(session, number), lang, split_addresses(addresses), "cli")
        except (IssueError, RenderError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"subject: {result.subject}")
    for address in result.sent:
        click.echo(f"  sent to {address}")
    for address, error in result.failed.items():
        click.echo(f"  failed for {address}: {error}", err=True)
    if result.failed:
        raise SystemExit(1)
