"""Typed settings, read once from the environment and checked there: a bad value is refused at start
(`SettingsError`, one line naming the variable and the form it needs), never found at send time."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from newsletter.branding import Branding, BrandingError, load_branding
from newsletter.dkim import DkimKey, load_key
from newsletter.summaries import BUILTIN_RULES, RulesError, SourceRules, load_rules

log = logging.getLogger(__name__)
N = TypeVar("N", int, float)
V = TypeVar("V")

SECRET_FILE = "secret_key"  # in NEWSLETTER_HOME: the embedded default's own random key
MIN_SECRET_LENGTH = 8
# Values that were public once (in this source, compose files, tutorials): refused as keys.
PUBLIC_SECRETS = frozenset({"dev-insecure-secret-change-me", "change-me", "changeme", "change_me", "secret-key", "development"})
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")
SMTP_QUERY_KEYS = ("rate", "burst", "connections")  # see ratelimit.relay_rate and pool.relay_connections
REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix", "sentinel")
TRUE = ("1", "true", "yes", "on")
DEFAULT_BASE_URL = "http://localhost:8000"  # the embedded default's: nothing leaves the machine
# RFC 2919 §2: list-id = list-label "." list-id-namespace, both dot-atom-text (RFC 5322 §3.2.3).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LIST_ID = re.compile(rf"{_ATEXT}(\.{_ATEXT})+")


class SettingsError(ValueError):
    """A setting that cannot be used. ``str()`` is one line naming the variable, what was found and
    the form it needs; every process prints it and exits with status 2 (see `newsletter.cli`, `tasks.app`)."""

    def __init__(self, name: str, problem: str, expected: str) -> None:
        super().__init__(f"{name}{'' if problem.startswith('=') else ' '}{problem}; expected {expected}")
        self.name, self.problem, self.expected = name, problem, expected


class SettingsErrors(SettingsError):
    """Several settings that cannot be used, found in one reading. ``str()`` has one line per setting
    (each as `SettingsError` words it); ``errors`` holds them. ``name``, ``problem`` and ``expected``
    are the first one's. Printers write ``error: `` before each line of ``str()``."""

    def __init__(self, errors: list[SettingsError]) -> None:
        first = errors[0]
        super().__init__(first.name, first.problem, first.expected)
        self.args = ("\n".join(str(error) for error in errors),)
        self.errors = tuple(errors)


def _shown(url: str) -> str:
    """A URL for an error message, its password masked."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    except ValueError:
        pass
    return url


def _number(env: dict[str, str], name: str, default: N, lo: N, hi: N, kind: Callable[[str], N]) -> N:
    """Read a number of type ``kind``, clamping nonsense values into [lo, hi] and saying so.

    Raises:
        SettingsError: the value does not parse (or is not finite).
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    expected = f"{'an integer' if kind is int else 'a number'} between {lo} and {hi}"
    try:
        value = kind(raw.strip())
    except ValueError as exc:
        raise SettingsError(name, f"={raw!r} is not {'an integer' if kind is int else 'a number'}", expected) from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(name, f"={raw!r} is not a finite number", expected)
    clamped = min(max(value, lo), hi)
    if clamped != value:
        log.warning("%s=%s is out of range [%s, %s]; using %s", name, value, lo, hi, clamped)
    return clamped


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _number(env, name, default, lo, hi, int)


def _float(env: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    return _number(env, name, default, lo, hi, float)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).

    The n-th retry (n >= 1) waits ``uniform(0, min(cap, base * 2 ** (n - 1)))`` seconds.
    A delivery fails for good after ``max_attempts`` attempts or once ``window`` seconds have
    passed since its first attempt, whichever comes first.
    """

    base: float = 60.0
    cap: float = 3600.0
    max_attempts: int = 8
    window: float = 86400.0


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment; see the README's configuration table."""

    home: Path
    database_url: str
    redis_url: str | None
    smtp_urls: tuple[str, ...]
    outbox_dir: Path
    data_dir: Path
    secret_keys: tuple[str, ...]  # the first signs, every one verifies (key rotation)
    base_url: str
    from_address: str
    list_id: str
    batch_size: int = 100
    plan_chunk_size: int = 10000
    # A claim's lease: renewed every quarter of it while its worker sends, so it only bounds how long a dead
    # worker's claims wait (and, after a PostgreSQL restart, how long every claim is safe from takeover).
    lease_seconds: float = 60.0
    sweep_interval: float = 30.0
    smtp_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pause_after_failures: int = 50  # auto-pause an issue with this many failures, more than its sent; 0: never
    # Auto-pause an issue once a relay's first this-many attempts for it all failed and it accepted none
    # (the relay refuses everyone: a small list never reaches `pause_after_failures`); 0: never.
    pause_after_first_failures: int = 5
    log_format: str = "text"  # or "json"
    metrics_port: int | None = None  # a worker serves Prometheus metrics here when set
    zh_hant_conversion: str = "s2twp"  # OpenCC conversion of derived zh-Hant editions: s2twp, s2hk or s2t
    zh_hant_phrases: tuple[str, ...] = ()  # extra phrase dictionaries (OpenCC text format) after the project's
    summary_rules: tuple[SourceRules, ...] = BUILTIN_RULES  # lead-in patterns per source (NEWSLETTER_SUMMARY_RULES first)
    timezone: str = "UTC"  # IANA zone of issue dates unless the issue was scheduled in another
    dkim: DkimKey | None = None  # DKIM signing key (NEWSLETTER_DKIM_SELECTOR + NEWSLETTER_DKIM_KEY_FILE)
    configured: bool = False  # DATABASE_URL, REDIS_URL or SMTP_URL is set: not the embedded default
    allow_http: bool = False  # NEWSLETTER_ALLOW_HTTP: an http base URL outside the embedded default (local tests)
    branding: Branding = field(default_factory=Branding)  # list name, logo, colours, topics, template overrides
    confirm_hours: float = 72.0  # NEWSLETTER_CONFIRM_HOURS: how long a confirmation link of a sign-up works

    @property
    def secret_key(self) -> str:
        """The key that signs new tokens, VERP addresses and Message-IDs (the first of `secret_keys`)."""
        return self.secret_keys[0]

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: tasks run in-process (Celery eager mode)."""
        return not self.redis_url

    @property
    def mail_domain(self) -> str:
        """Domain used for Message-IDs: the From address's domain."""
        return self.from_address.rsplit("@", 1)[-1].strip("> ").lower()

    def from_header(self, lang: str) -> str:
        """The From header of a message in ``lang``: `from_address`, with its display name translated to the
        list's name in ``lang`` when it is the list's English name (so 每週評論 readers are not mailed by
        "The Weekly Review"). A display name of any other kind is the sender's own and stays as written."""
        from email.headerregistry import Address
        from email.utils import parseaddr

        name, addr = parseaddr(self.from_address)
        translated = self.branding.list_name(lang)
        if not name or name != self.branding.list_name("en") or translated == name:
            return self.from_address
        local, _, domain = addr.rpartition("@")
        return str(Address(translated, local, domain))

    def describe(self) -> dict[str, str]:
        """Settings for display, with secrets and URL passwords masked."""
        keys = len(self.secret_keys)
        return {
            "DATABASE_URL": _shown(self.database_url),
            "REDIS_URL": _shown(self.redis_url) if self.redis_url else "(unset: in-process worker)",
            "SMTP_URL": ", ".join(_shown(u) for u in self.smtp_urls) or f"(unset: outbox {self.outbox_dir})",
            "NEWSLETTER_DATA_DIR": str(self.data_dir),
            "NEWSLETTER_BASE_URL": self.base_url,
            "NEWSLETTER_SECRET_KEY": f"*** ({keys} key{'s' if keys > 1 else ''})",
        }


def _branding(env: dict[str, str]) -> Branding:
    try:
        return load_branding(env)
    except BrandingError as exc:
        raise SettingsError(exc.variable, exc.problem, exc.expected) from exc


def _log_format(env: dict[str, str]) -> str:
    value = (env.get("NEWSLETTER_LOG_FORMAT") or "text").strip().lower()
    if value not in ("text", "json"):
        raise SettingsError("NEWSLETTER_LOG_FORMAT", f"={value!r} is not a log format", "text or json")
    return value


def _timezone(env: dict[str, str]) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = env.get("NEWSLETTER_TIMEZONE") or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError("NEWSLETTER_TIMEZONE", f"={name!r} is not an IANA time zone", "a zone name such as Asia/Taipei or UTC") from exc
    return name


def _zh_hant(env: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    from newsletter import zh_hant

    conversion = env.get("NEWSLETTER_ZH_HANT_CONVERSION") or zh_hant.DEFAULT_CONVERSION
    if conversion not in zh_hant.CONVERSIONS:
        raise SettingsError(
            "NEWSLETTER_ZH_HANT_CONVERSION",
            f"={conversion!r} is not one of {', '.join(zh_hant.CONVERSIONS)}",
            "s2twp (Taiwan standard with phrases), s2hk or s2t",
        )
    phrases = tuple(p for p in (env.get("NEWSLETTER_ZH_HANT_PHRASES") or "").split(os.pathsep) if p)
    for path in phrases:
        try:
            zh_hant.read_phrases(Path(path))
        except zh_hant.ConversionError as exc:
            raise SettingsError("NEWSLETTER_ZH_HANT_PHRASES", f"cannot be used: {exc}", "OpenCC phrase files, separated by ':'") from exc
    return conversion, phrases


def _summary_rules(env: dict[str, str]) -> tuple[SourceRules, ...]:
    path = env.get("NEWSLETTER_SUMMARY_RULES")
    if not path:
        return BUILTIN_RULES
    try:
        return load_rules(Path(path)) + BUILTIN_RULES
    except RulesError as exc:
        raise SettingsError("NEWSLETTER_SUMMARY_RULES", f"cannot be used: {exc}", "a JSON rules file as the README shows") from exc


def deployment_summary_rules() -> tuple[SourceRules, ...]:
    """The summary rules of this process's environment: ``NEWSLETTER_SUMMARY_RULES`` (read once per path)
    before the built-in ones, as `Settings.summary_rules`. Summaries made after the import (see
    `newsletter.article_text`) use these.

    Raises:
        SettingsError: the rules file cannot be used.
    """
    return _rules_at(os.environ.get("NEWSLETTER_SUMMARY_RULES") or "")


@functools.cache
def _rules_at(path: str) -> tuple[SourceRules, ...]:
    return _summary_rules({"NEWSLETTER_SUMMARY_RULES": path} if path else {})


def _dkim(env: dict[str, str], from_address: str) -> DkimKey | None:
    selector, key_file = env.get("NEWSLETTER_DKIM_SELECTOR"), env.get("NEWSLETTER_DKIM_KEY_FILE")
    if not selector and not key_file:
        return None
    if not selector or not key_file:
        missing = "NEWSLETTER_DKIM_SELECTOR" if not selector else "NEWSLETTER_DKIM_KEY_FILE"
        raise SettingsError(missing, "is not set", "both NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_KEY_FILE for DKIM signing")
    try:
        return load_key(selector, Path(key_file).expanduser(), from_address)
    except ValueError as exc:
        raise SettingsError("NEWSLETTER_DKIM_KEY_FILE", f"={key_file}: {exc}", "a PEM RSA private key file") from exc


def _database_url(env: dict[str, str], home: Path) -> str:
    raw = (env.get("DATABASE_URL") or "").strip()
    if not raw:
        return f"sqlite:///{home / 'newsletter.db'}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    expected = "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
    try:
        backend = make_url(raw).get_backend_name()
    except (ArgumentError, ValueError) as exc:
        raise SettingsError("DATABASE_URL", f"={_shown(raw)!r} is not a database URL", expected) from exc
    if backend not in ("postgresql", "postgres", "sqlite"):
        raise SettingsError("DATABASE_URL", f"={_shown(raw)!r} names an unsupported database {backend!r}", expected)
    return raw


def _redis_url(env: dict[str, str]) -> str | None:
    raw = (env.get("REDIS_URL") or "").strip()
    if not raw:
        return None
    expected = "redis://[:password@]host:6379/0 (or rediss:// for TLS)"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError as exc:
        raise SettingsError("REDIS_URL", f"={_shown(raw)!r} is not a URL", expected) from exc
    if parts.scheme not in REDIS_SCHEMES:
        raise SettingsError("REDIS_URL", f"={_shown(raw)!r} has scheme {parts.scheme!r}", expected)
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise SettingsError("REDIS_URL", f"={_shown(raw)!r} names no host", expected)
    if parts.scheme in ("redis", "rediss") and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise SettingsError("REDIS_URL", f"={_shown(raw)!r} names database {parts.path.strip('/')!r}", expected)
    return raw


def _smtp_urls(env: dict[str, str]) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in (env.get("SMTP_URL") or "").split(",") if u.strip())
    expected = (
        "smtp://host:25, smtp+starttls://user:password@host:587 or smtps://user:password@host:465, "
        "comma-separated, each optionally with ?rate=N&burst=M&connections=C"
    )
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError for a bad port)
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise SettingsError("SMTP_URL", f"entry {_shown(url)!r} is not a URL", expected) from exc
        if parts.scheme not in SMTP_SCHEMES:
            raise SettingsError("SMTP_URL", f"entry {_shown(url)!r} has scheme {parts.scheme!r}", expected)
        if not parts.hostname:
            raise SettingsError("SMTP_URL", f"entry {_shown(url)!r} names no host", expected)
        for key, values in query.items():
            if key not in SMTP_QUERY_KEYS:
                raise SettingsError("SMTP_URL", f"entry {_shown(url)!r} has an unknown parameter {key!r}", expected)
            try:
                ok = float(values[-1]) > 0 if key == "rate" else int(values[-1]) >= 1
            except ValueError:
                ok = False
            if ok and key == "connections":
                ok = int(values[-1]) <= 1000  # pool.MAX_CONNECTIONS
            if not ok or (key == "rate" and not math.isfinite(float(values[-1]))):
                raise SettingsError(
                    "SMTP_URL",
                    f"entry {_shown(url)!r} has {key}={values[-1]!r}",
                    "rate > 0 (messages/s), burst >= 1 (messages) and connections 1..1000 (at once, over all workers)",
                )
    return urls


def _from_address(env: dict[str, str]) -> str:
    raw = env.get("NEWSLETTER_FROM") or "The Weekly Review <weekly@newsletter.example.org>"
    expected = "one address, e.g. 'The Weekly Review <weekly@news.example.org>'"
    if any(ch in raw for ch in "\r\n\x00"):
        raise SettingsError("NEWSLETTER_FROM", "contains a line break", expected)
    pairs = getaddresses([raw])
    if len(pairs) != 1 or not pairs[0][1]:
        raise SettingsError("NEWSLETTER_FROM", f"={raw!r} is not one address", expected)
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(pairs[0][1], check_deliverability=False)
    except EmailNotValidError as exc:
        raise SettingsError("NEWSLETTER_FROM", f"={raw!r} is not a valid address ({exc})", expected) from exc
    return raw


def _base_url(env: dict[str, str], configured: bool, allow_http: bool) -> str:
    given = (env.get("NEWSLETTER_BASE_URL") or "").strip()
    raw = (given or DEFAULT_BASE_URL).rstrip("/")
    expected = "the public https URL of 'newsletter web', e.g. https://news.example.org"
    if not given and configured and not allow_http:
        # Not the default's fault: say the variable is missing (the default only serves the embedded mode).
        raise SettingsError(
            "NEWSLETTER_BASE_URL",
            f"is not set, and DATABASE_URL, REDIS_URL or SMTP_URL is: links in messages would point at {DEFAULT_BASE_URL}",
            f"{expected}, set in NEWSLETTER_BASE_URL",
        )
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018
    except ValueError as exc:
        raise SettingsError("NEWSLETTER_BASE_URL", f"={raw!r} is not a URL", expected) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or " " in raw:
        raise SettingsError("NEWSLETTER_BASE_URL", f"={raw!r} is not an http(s) URL without query", expected)
    if parts.scheme == "http" and configured and not allow_http:
        # RFC 8058 §3.1: one-click unsubscription needs an https URI in List-Unsubscribe.
        raise SettingsError(
            "NEWSLETTER_BASE_URL",
            f"={raw!r} is http: List-Unsubscribe needs https (RFC 8058 §3.1)",
            f"{expected} (NEWSLETTER_ALLOW_HTTP=1 allows http for local testing only)",
        )
    return raw


def _list_id(env: dict[str, str]) -> str:
    raw = (env.get("NEWSLETTER_LIST_ID") or "weekly.newsletter.example.org").strip()
    if len(raw) > 255 or not _LIST_ID.fullmatch(raw):
        raise SettingsError("NEWSLETTER_LIST_ID", f"={raw!r} is not a list id", "label.namespace, e.g. weekly.news.example.org (RFC 2919)")
    return raw


def parse_secret_keys(raw: str) -> tuple[str, ...]:
    """Split ``NEWSLETTER_SECRET_KEY`` into keys: separated by commas and/or white space, newest first.

    Raises:
        SettingsError: no key, a key shorter than `MIN_SECRET_LENGTH`, or one that was ever public.
    """
    keys = tuple(k for k in re.split(r"[,\s]+", raw.strip()) if k)
    expected = (
        f"one or more random keys of at least {MIN_SECRET_LENGTH} characters, comma-separated, the newest first "
        "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )
    if not keys:
        raise SettingsError("NEWSLETTER_SECRET_KEY", "is empty", expected)
    for n, key in enumerate(keys, 1):
        if len(key) < MIN_SECRET_LENGTH:
            raise SettingsError("NEWSLETTER_SECRET_KEY", f"key {n} is {len(key)} characters long", expected)
        if key.lower() in PUBLIC_SECRETS:
            raise SettingsError("NEWSLETTER_SECRET_KEY", f"key {n} is a value published as an example", expected)
    return keys


def embedded_secret(home: Path) -> str:
    """The embedded default's own key: ``$NEWSLETTER_HOME/secret_key``, created (32 random bytes, mode
    0600) on first use and kept, so links in messages already sent stay valid.

    Raises:
        SettingsError: the file cannot be read or created.
    """
    path = home / SECRET_FILE
    expected = f"a writable NEWSLETTER_HOME for {path}, or NEWSLETTER_SECRET_KEY set"
    try:
        if path.is_file():
            return parse_secret_keys(path.read_text(encoding="ascii"))[0]
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # atomic: of two processes starting at once, one key wins and both use it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return parse_secret_keys(path.read_text(encoding="ascii"))[0]
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError("NEWSLETTER_SECRET_KEY", f"is unset and {path} cannot be used ({exc})", expected) from exc
    except SettingsError as exc:
        raise SettingsError("NEWSLETTER_SECRET_KEY", f"is unset and {path} holds no usable key ({exc.problem})", expected) from exc


def _secret_keys(env: dict[str, str], home: Path, configured: bool) -> tuple[str, ...]:
    raw = env.get("NEWSLETTER_SECRET_KEY") or ""
    if raw.strip():
        return parse_secret_keys(raw)
    if configured:
        raise SettingsError(
            "NEWSLETTER_SECRET_KEY",
            "is not set, and DATABASE_URL, REDIS_URL or SMTP_URL is: links in messages would be forgeable",
            "one or more random keys, comma-separated, the newest first "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return (embedded_secret(home),)


def default_data_dir(cwd: Path | None = None, checkout: Path | None = None) -> Path:
    """Where the shared corpora are looked for when ``NEWSLETTER_DATA_DIR`` is unset: ``../shared/data``
    from the current directory, else beside the checkout this package runs from (so the demo finds them
    from any directory). Returns the first that exists, else the current directory's (for the message)."""
    here = cwd or Path.cwd()
    beside = (checkout or Path(__file__).resolve().parents[1]).parent
    candidates = [here.parent / "shared" / "data", beside / "shared" / "data"]
    return next((path for path in candidates if path.is_dir()), candidates[0])


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build `Settings` from ``env`` (default: ``os.environ``), checking every value.

    Numbers outside their sane range are clamped with a warning (listmonk does the same); anything
    that cannot be used is refused. Outside the embedded default (any of DATABASE_URL, REDIS_URL,
    SMTP_URL set) NEWSLETTER_SECRET_KEY is required and NEWSLETTER_BASE_URL must be https.

    Raises:
        SettingsError: a value that cannot be used; the message names the variable and the form it needs.
            With several, a `SettingsErrors` naming every one, one line each (so a new installation
            learns everything it lacks at its first start, not one variable per attempt).
    """
    env = dict(os.environ if env is None else env)
    home = Path(env.get("NEWSLETTER_HOME") or "var").expanduser()
    configured = any((env.get(name) or "").strip() for name in ("DATABASE_URL", "REDIS_URL", "SMTP_URL"))
    allow_http = (env.get("NEWSLETTER_ALLOW_HTTP") or "").strip().lower() in TRUE
    errors: list[SettingsError] = []

    def check(read: Callable[[], V], fallback: V) -> V:
        # Every setting is read independently: keep going after a bad one and report them all.
        try:
            return read()
        except SettingsError as exc:
            errors.append(exc)
            return fallback

    retry = RetryPolicy(
        base=check(lambda: _float(env, "NEWSLETTER_BACKOFF_BASE", 60.0, 0.01, 86400.0), 60.0),
        cap=check(lambda: _float(env, "NEWSLETTER_BACKOFF_CAP", 3600.0, 0.01, 7 * 86400.0), 3600.0),
        max_attempts=check(lambda: _int(env, "NEWSLETTER_MAX_ATTEMPTS", 8, 1, 100), 8),
        window=check(lambda: _float(env, "NEWSLETTER_RETRY_WINDOW", 86400.0, 1.0, 30 * 86400.0), 86400.0),
    )
    if retry.base > retry.cap:
        errors.append(
            SettingsError(
                "NEWSLETTER_BACKOFF_BASE",
                f"={retry.base:g} is larger than NEWSLETTER_BACKOFF_CAP={retry.cap:g}",
                "a first backoff (seconds) no larger than the cap",
            )
        )
    from_address = check(lambda: _from_address(env), "")
    conversion, phrases = check(lambda: _zh_hant(env), ("s2twp", ()))
    values = {
        "home": home,
        "database_url": check(lambda: _database_url(env, home), ""),
        "redis_url": check(lambda: _redis_url(env), None),
        "smtp_urls": check(lambda: _smtp_urls(env), ()),
        "outbox_dir": Path(env.get("NEWSLETTER_OUTBOX") or home / "outbox").expanduser(),
        "data_dir": Path(env["NEWSLETTER_DATA_DIR"]).expanduser() if env.get("NEWSLETTER_DATA_DIR") else default_data_dir(),
        "base_url": check(lambda: _base_url(env, configured, allow_http), DEFAULT_BASE_URL),
        "from_address": from_address,
        "list_id": check(lambda: _list_id(env), ""),
        "batch_size": check(lambda: _int(env, "NEWSLETTER_BATCH_SIZE", 100, 1, 10000), 100),
        "plan_chunk_size": check(lambda: _int(env, "NEWSLETTER_PLAN_CHUNK", 10000, 10, 100000), 10000),
        "lease_seconds": check(lambda: _float(env, "NEWSLETTER_LEASE_SECONDS", 60.0, 1.0, 86400.0), 60.0),
        "sweep_interval": check(lambda: _float(env, "NEWSLETTER_SWEEP_INTERVAL", 30.0, 0.1, 3600.0), 30.0),
        "smtp_timeout": check(lambda: _float(env, "SMTP_TIMEOUT", 30.0, 0.5, 600.0), 30.0),
        "retry": retry,
        "pause_after_failures": check(lambda: _int(env, "NEWSLETTER_PAUSE_AFTER_FAILURES", 50, 0, 10**9), 50),
        "pause_after_first_failures": check(lambda: _int(env, "NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES", 5, 0, 10**6), 5),
        "log_format": check(lambda: _log_format(env), "text"),
        "metrics_port": check(lambda: _int(env, "NEWSLETTER_METRICS_PORT", 0, 0, 65535), 0) or None,
        "configured": configured,
        "allow_http": allow_http,
        "zh_hant_conversion": conversion,
        "zh_hant_phrases": phrases,
        "summary_rules": check(lambda: _summary_rules(env), BUILTIN_RULES),
        "timezone": check(lambda: _timezone(env), "UTC"),
        # The key's domain is checked against the From address: only once that address is usable.
        "dkim": check(lambda: _dkim(env, from_address), None) if from_address else None,
        "branding": check(lambda: _branding(env), Branding()),
        "confirm_hours": check(lambda: _float(env, "NEWSLETTER_CONFIRM_HOURS", 72.0, 0.25, 24 * 30.0), 72.0),
    }
    if errors:
        # The embedded default would write its key file, which it should do only for settings that work:
        # only a key given (or missing) in the environment is checked here.
        if configured or (env.get("NEWSLETTER_SECRET_KEY") or "").strip():
            check(lambda: _secret_keys(env, home, configured), ())
        raise errors[0] if len(errors) == 1 else SettingsErrors(errors)
    # Last: the embedded default writes its key file, which it should do only for settings that work.
    return Settings(secret_keys=_secret_keys(env, home, configured), **values)
