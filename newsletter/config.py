"""Typed settings, read once from the environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from newsletter.dkim import DkimKey, load_key
from newsletter.summaries import BUILTIN_RULES, RulesError, SourceRules, load_rules

log = logging.getLogger(__name__)
N = TypeVar("N", int, float)

DEV_SECRET = "dev-insecure-secret-change-me"


def _number(env: dict[str, str], name: str, default: N, lo: N, hi: N, kind: Callable[[str], N]) -> N:
    """Read a number of type ``kind``, clamping nonsense values into [lo, hi] and saying so.

    Raises:
        ValueError: the value does not parse.
    """
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
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
    secret_key: str
    base_url: str
    from_address: str
    list_id: str
    batch_size: int = 100
    plan_chunk_size: int = 1000
    lease_seconds: float = 300.0
    sweep_interval: float = 30.0
    smtp_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pause_after_failures: int = 50  # auto-pause an issue with this many failures, more than its sent; 0: never
    log_format: str = "text"  # or "json"
    metrics_port: int | None = None  # a worker serves Prometheus metrics here when set
    zh_hant_conversion: str = "s2twp"  # OpenCC conversion of derived zh-Hant editions: s2twp, s2hk or s2t
    zh_hant_phrases: tuple[str, ...] = ()  # extra phrase dictionaries (OpenCC text format) after the project's
    summary_rules: tuple[SourceRules, ...] = BUILTIN_RULES  # lead-in patterns per source (NEWSLETTER_SUMMARY_RULES first)
    timezone: str = "UTC"  # IANA zone of issue dates unless the issue was scheduled in another
    dkim: DkimKey | None = None  # DKIM signing key (NEWSLETTER_DKIM_SELECTOR + NEWSLETTER_DKIM_KEY_FILE)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: tasks run in-process (Celery eager mode)."""
        return not self.redis_url

    @property
    def mail_domain(self) -> str:
        """Domain used for Message-IDs: the From address's domain."""
        return self.from_address.rsplit("@", 1)[-1].strip("> ").lower()

    def describe(self) -> dict[str, str]:
        """Settings for display, with secrets and URL passwords masked."""

        def mask(url: str) -> str:
            parts = urlsplit(url)
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
                return parts._replace(netloc=netloc).geturl()
            return url

        return {
            "DATABASE_URL": mask(self.database_url),
            "REDIS_URL": mask(self.redis_url) if self.redis_url else "(unset: in-process worker)",
            "SMTP_URL": ", ".join(mask(u) for u in self.smtp_urls) or f"(unset: outbox {self.outbox_dir})",
            "NEWSLETTER_DATA_DIR": str(self.data_dir),
            "NEWSLETTER_BASE_URL": self.base_url,
            "NEWSLETTER_SECRET_KEY": "***" if self.secret_key != DEV_SECRET else "(development default)",
        }


def _log_format(env: dict[str, str]) -> str:
    value = (env.get("NEWSLETTER_LOG_FORMAT") or "text").lower()
    if value not in ("text", "json"):
        log.warning("NEWSLETTER_LOG_FORMAT=%s is not text or json; using text", value)
        return "text"
    return value


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the variable."""


def _timezone(env: dict[str, str]) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = env.get("NEWSLETTER_TIMEZONE") or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"NEWSLETTER_TIMEZONE={name!r} is not an IANA time zone (e.g. Asia/Taipei)") from exc
    return name


def _zh_hant(env: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    from newsletter import zh_hant

    conversion = env.get("NEWSLETTER_ZH_HANT_CONVERSION") or zh_hant.DEFAULT_CONVERSION
    if conversion not in zh_hant.CONVERSIONS:
        raise ConfigError(f"NEWSLETTER_ZH_HANT_CONVERSION={conversion!r} is not one of {', '.join(zh_hant.CONVERSIONS)}")
    phrases = tuple(p for p in (env.get("NEWSLETTER_ZH_HANT_PHRASES") or "").split(os.pathsep) if p)
    for path in phrases:
        try:
            zh_hant.read_phrases(Path(path))
        except zh_hant.ConversionError as exc:
            raise ConfigError(f"NEWSLETTER_ZH_HANT_PHRASES: {exc}") from exc
    return conversion, phrases


def _summary_rules(env: dict[str, str]) -> tuple[SourceRules, ...]:
    path = env.get("NEWSLETTER_SUMMARY_RULES")
    if not path:
        return BUILTIN_RULES
    try:
        return load_rules(Path(path)) + BUILTIN_RULES
    except RulesError as exc:
        raise ConfigError(f"NEWSLETTER_SUMMARY_RULES: {exc}") from exc


def _dkim(env: dict[str, str], from_address: str) -> DkimKey | None:
    selector, key_file = env.get("NEWSLETTER_DKIM_SELECTOR"), env.get("NEWSLETTER_DKIM_KEY_FILE")
    if not selector and not key_file:
        return None
    if not selector or not key_file:
        missing = "NEWSLETTER_DKIM_SELECTOR" if not selector else "NEWSLETTER_DKIM_KEY_FILE"
        raise ConfigError(f"{missing} is not set: DKIM signing needs both NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_KEY_FILE")
    try:
        return load_key(selector, Path(key_file).expanduser(), from_address)
    except ValueError as exc:
        raise ConfigError(f"NEWSLETTER_DKIM_KEY_FILE={key_file}: {exc}") from exc


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build `Settings` from ``env`` (default: ``os.environ``).

    Raises:
        ValueError: a numeric variable does not parse.
        ConfigError: a time zone, conversion, rules file or DKIM key that cannot be used (one line naming it).
    """
    env = dict(os.environ if env is None else env)
    home = Path(env.get("NEWSLETTER_HOME") or "var").expanduser()
    database_url = env.get("DATABASE_URL") or f"sqlite:///{home / 'newsletter.db'}"
    smtp_raw = env.get("SMTP_URL") or ""
    retry = RetryPolicy(
        base=_float(env, "NEWSLETTER_BACKOFF_BASE", 60.0, 0.01, 86400.0),
        cap=_float(env, "NEWSLETTER_BACKOFF_CAP", 3600.0, 0.01, 7 * 86400.0),
        max_attempts=_int(env, "NEWSLETTER_MAX_ATTEMPTS", 8, 1, 100),
        window=_float(env, "NEWSLETTER_RETRY_WINDOW", 86400.0, 1.0, 30 * 86400.0),
    )
    from_address = env.get("NEWSLETTER_FROM") or "The Weekly Review <weekly@newsletter.example.org>"
    conversion, phrases = _zh_hant(env)
    return Settings(
        home=home,
        database_url=database_url,
        redis_url=env.get("REDIS_URL") or None,
        smtp_urls=tuple(u.strip() for u in smtp_raw.split(",") if u.strip()),
        outbox_dir=Path(env.get("NEWSLETTER_OUTBOX") or home / "outbox").expanduser(),
        data_dir=Path(env.get("NEWSLETTER_DATA_DIR") or "../shared/data").expanduser(),
        secret_key=env.get("NEWSLETTER_SECRET_KEY") or DEV_SECRET,
        base_url=(env.get("NEWSLETTER_BASE_URL") or "http://localhost:8000").rstrip("/"),
        from_address=from_address,
        list_id=env.get("NEWSLETTER_LIST_ID") or "weekly.newsletter.example.org",
        batch_size=_int(env, "NEWSLETTER_BATCH_SIZE", 100, 1, 10000),
        plan_chunk_size=_int(env, "NEWSLETTER_PLAN_CHUNK", 1000, 10, 100000),
        lease_seconds=_float(env, "NEWSLETTER_LEASE_SECONDS", 300.0, 1.0, 86400.0),
        sweep_interval=_float(env, "NEWSLETTER_SWEEP_INTERVAL", 30.0, 0.1, 3600.0),
        smtp_timeout=_float(env, "SMTP_TIMEOUT", 30.0, 0.5, 600.0),
        retry=retry,
        pause_after_failures=_int(env, "NEWSLETTER_PAUSE_AFTER_FAILURES", 50, 0, 10**9),
        log_format=_log_format(env),
        metrics_port=_int(env, "NEWSLETTER_METRICS_PORT", 0, 0, 65535) or None,
        zh_hant_conversion=conversion,
        zh_hant_phrases=phrases,
        summary_rules=_summary_rules(env),
        timezone=_timezone(env),
        dkim=_dkim(env, from_address),
    )
