"""The ``newsletter users`` and ``newsletter tokens`` commands: editors who sign in, and API tokens."""

from __future__ import annotations

import sys

import click

from newsletter.cli.common import Context, pass_ctx
from newsletter.editors import EditorError


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)  # type: ignore[no-any-return]


@click.group()
def users() -> None:
    """Editors who sign in to the admin pages (/admin)."""


@users.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@pass_ctx
def users_create(ctx: Context, email: str, password_stdin: bool) -> None:
    """Create an editor account for EMAIL; asks for a password (at least 10 characters)."""
    from newsletter.editors import create_user

    password = _password(password_stdin)
    with ctx.session() as session:
        try:
            user = create_user(session, email, password)
        except EditorError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"user {user.email} created; sign in at {ctx.settings.base_url}/admin")


@users.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@pass_ctx
def users_set_password(ctx: Context, email: str, password_stdin: bool) -> None:
    """Change EMAIL's password; their open sessions end."""
    from newsletter.editors import set_password

    password = _password(password_stdin)
    with ctx.session() as session:
        try:
            set_password(session, email, password)
        except EditorError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {email} changed")


@users.command("disable")
@click.argument("email")
@click.option("--enable", is_flag=True, help="Enable the account again instead.")
@pass_ctx
def users_disable(ctx: Context, email: str, enable: bool) -> None:
    """Stop EMAIL from signing in (their open sessions end), or --enable again."""
    from newsletter.editors import set_disabled

    with ctx.session() as session:
        try:
            set_disabled(session, email, not enable)
        except EditorError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"user {email} {'enabled' if enable else 'disabled'}")


@users.command("list")
@pass_ctx
def users_list(ctx: Context) -> None:
    """List editor accounts."""
    from sqlalchemy import select

    from newsletter.models import User

    with ctx.session() as session:
        for user in session.scalars(select(User).order_by(User.email)):
            last = f"last sign-in {user.last_sign_in_at:%Y-%m-%d %H:%M} UTC" if user.last_sign_in_at else "never signed in"
            click.echo(f"{user.email}  {'disabled' if user.disabled else 'active'}  {last}")


@click.group()
def tokens() -> None:
    """Bearer tokens for the editor API (/api, see /docs)."""


@tokens.command("create")
@click.argument("name")
@pass_ctx
def tokens_create(ctx: Context, name: str) -> None:
    """Create a token called NAME and print it once (only a hash is kept: copy it now)."""
    from newsletter.editors import create_token

    with ctx.session() as session:
        try:
            new = create_token(session, name)
        except EditorError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(new.secret)
    click.echo(f"token {new.name!r} created; it is shown only this once. Use it as: Authorization: Bearer <token>", err=True)


@tokens.command("list")
@pass_ctx
def tokens_list(ctx: Context) -> None:
    """List tokens: name, first characters, created, last used, revoked."""
    from newsletter.editors import list_tokens

    with ctx.session() as session:
        for t in list_tokens(session):
            used = f"last used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
            click.echo(f"{t.name}  {t.prefix}…  created {t.created_at:%Y-%m-%d %H:%M}  {used}  {state}")


@tokens.command("revoke")
@click.argument("name")
@pass_ctx
def tokens_revoke(ctx: Context, name: str) -> None:
    """Revoke token NAME: it stops working at once."""
    from newsletter.editors import revoke_token

    with ctx.session() as session:
        try:
            revoke_token(session, name)
        except EditorError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"token {name!r} revoked")
