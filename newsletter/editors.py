"""Editors: users who sign in to the admin pages (argon2id passwords) and bearer tokens for the API.

Tokens are 256-bit random strings shown once; only their SHA-256 is stored (a token has full entropy,
so a fast hash is enough: nothing to brute-force). Passwords are hashed with argon2id (RFC 9106) via
argon2-cffi, whose defaults follow the RFC's second recommended option.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.models import ApiToken, User, utcnow
from newsletter.subscribers import InvalidAddress, normalise_address

TOKEN_PREFIX = "nl_"
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong address costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class EditorError(ValueError):
    """A user or token cannot be created or changed as asked; the message says why."""


def hash_password(password: str) -> str:
    """An argon2id PHC string for ``password``.

    Raises:
        EditorError: shorter than `MIN_PASSWORD` characters.
    """
    if len(password) < MIN_PASSWORD:
        raise EditorError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def create_user(session: Session, email: str, password: str) -> User:
    """Create an editor account; commits.

    Raises:
        EditorError: invalid address, address taken or password too short.
    """
    try:
        address = normalise_address(email).lower()  # sign-in is case-insensitive
    except InvalidAddress as exc:
        raise EditorError(str(exc)) from exc
    if session.scalar(select(User.id).where(User.email == address)) is not None:
        raise EditorError(f"user {address} already exists")
    user = User(email=address, password_hash=hash_password(password))
    session.add(user)
    session.commit()
    return user


def set_password(session: Session, email: str, password: str) -> User:
    """Change a user's password (signing them out everywhere: see `session_fingerprint`); commits.

    Raises:
        EditorError: no such user or password too short.
    """
    user = find_user(session, email)
    if user is None:
        raise EditorError(f"no user {email}")
    user.password_hash = hash_password(password)
    session.commit()
    return user


def set_disabled(session: Session, email: str, disabled: bool) -> User:
    """Disable (or enable again) a user; a disabled user cannot sign in and their sessions end. Commits.

    Raises:
        EditorError: no such user.
    """
    user = find_user(session, email)
    if user is None:
        raise EditorError(f"no user {email}")
    user.disabled = disabled
    session.commit()
    return user


def find_user(session: Session, email: str) -> User | None:
    """The user with this address (normalised first), or None."""
    try:
        address = normalise_address(email).lower()
    except InvalidAddress:
        return None
    return session.scalar(select(User).where(User.email == address))


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The enabled user whose password matches, else None; commits the sign-in time.

    Takes as long for an unknown address as for a wrong password. A hash made with older argon2
    parameters is upgraded on success.
    """
    user = find_user(session, email)
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_sign_in_at = utcnow()
    session.commit()
    return user


def session_fingerprint(user: User, secret: str) -> str:
    """A value stored in a user's session cookie that changes with the password and the disabled flag,
    so changing either ends every session signed in before."""
    material = f"{user.id}:{user.password_hash}:{user.disabled}".encode()
    return hmac.new(secret.encode(), material, hashlib.sha256).hexdigest()[:32]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``secret`` is shown once and never stored."""

    name: str
    secret: str


def create_token(session: Session, name: str) -> NewToken:
    """Create an API token named ``name``; commits. Returns the secret, which is not stored.

    Raises:
        EditorError: the name is empty, too long or already used.
    """
    name = name.strip()
    if not name or len(name) > 128:
        raise EditorError("a token name needs 1 to 128 characters")
    old = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if old is not None and old.revoked_at is None:
        raise EditorError(f"a token named {name!r} already exists (revoke it first)")
    if old is not None:  # a revoked token frees its name
        session.delete(old)
        session.flush()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=_token_hash(secret), prefix=secret[:10]))
    session.commit()
    return NewToken(name, secret)


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token, newest first (revoked ones included, with ``revoked_at``)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())))


def revoke_token(session: Session, name: str) -> ApiToken:
    """Revoke a token by name: it stops working at once and stays listed as revoked; commits.

    Raises:
        EditorError: no such live token.
    """
    token = session.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)))
    if token is None:
        raise EditorError(f"no live token named {name!r}")
    token.revoked_at = utcnow()
    session.commit()
    return token


def token_owner(session: Session, secret: str) -> ApiToken | None:
    """The live token matching a presented bearer secret, or None. Records when it was last used
    (at most once a minute, to keep reads cheap); commits then."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(secret)))
    if token is None or token.revoked_at is not None:
        return None
    now = utcnow()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        token.last_used_at = now
        session.commit()
    return token
