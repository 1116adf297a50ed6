"""Branding and reader-facing lists from settings: list name per language, logo, accent colour, postal
address, the topics readers choose from, and a folder of templates overriding the packaged ones.

Read by `newsletter.config.load_settings`; every value is checked there (a bad one is a `SettingsError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LANGS = ("en", "zh-Hans", "zh-Hant")
DEFAULT_LIST_NAME = {"en": "The Weekly Review", "zh-Hans": "每周评论", "zh-Hant": "每週評論"}
COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
TOPIC_SLUG = re.compile(r"[^\s,;|，；]{1,64}")


class BrandingError(ValueError):
    """A branding value that cannot be used; ``variable`` names the setting."""

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        super().__init__(problem)
        self.variable, self.problem, self.expected = variable, problem, expected


@dataclass(frozen=True)
class Topic:
    """A topic a reader may choose: ``slug`` is what is stored on the subscriber and matched by segments;
    ``labels`` maps a language to its readable label (the slug itself where none is given)."""

    slug: str
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, lang: str) -> str:
        """The label in ``lang``, else English, else the slug."""
        return self.labels.get(lang) or self.labels.get("en") or self.slug


@dataclass(frozen=True)
class Branding:
    """What readers see of the list's identity. ``accent`` is a ``#rrggbb`` colour; ``templates`` a folder
    whose files take precedence over the packaged ``templates/`` (same relative paths)."""

    list_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LIST_NAME))
    logo_url: str = ""
    accent: str = "#0f2a4a"
    postal_address: str = ""
    topics: tuple[Topic, ...] = ()
    templates: Path | None = None

    def list_name(self, lang: str) -> str:
        """The list's name in ``lang`` (English when that language has none)."""
        return self.list_names.get(lang) or self.list_names.get("en") or DEFAULT_LIST_NAME["en"]


def _list_names(raw: str) -> dict[str, str]:
    names = dict(DEFAULT_LIST_NAME)
    if not raw.strip():
        return names
    expected = '\'The Weekly Review\' or JSON such as {"en": "The Weekly Review", "zh-Hans": "每周评论"}'
    if raw.lstrip().startswith("{"):
        try:
            given = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BrandingError("NEWSLETTER_LIST_NAME", f"is not valid JSON ({exc.msg})", expected) from exc
        if not isinstance(given, dict) or not all(k in LANGS and isinstance(v, str) and v.strip() for k, v in given.items()):
            raise BrandingError("NEWSLETTER_LIST_NAME", f"={raw!r} must map {', '.join(LANGS)} to names", expected)
        given = {k: " ".join(v.split()) for k, v in given.items()}
        fallback = given.get("en") or next(iter(given.values()), "")  # a rebranded list never shows the default name
        return {lang: given.get(lang) or fallback or names[lang] for lang in LANGS}
    return dict.fromkeys(LANGS, " ".join(raw.split()))


def _topics(raw: str) -> tuple[Topic, ...]:
    if not raw.strip():
        return ()
    expected = 'JSON such as {"economy": {"en": "Economy", "zh-Hans": "经济", "zh-Hant": "經濟"}, "policy": "Policy"}'
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BrandingError("NEWSLETTER_TOPICS", f"is not valid JSON ({exc.msg})", expected) from exc
    if not isinstance(given, dict):
        raise BrandingError("NEWSLETTER_TOPICS", "must be a JSON object of topic -> label", expected)
    topics = []
    for slug, labels in given.items():
        if not TOPIC_SLUG.fullmatch(slug):
            raise BrandingError("NEWSLETTER_TOPICS", f"topic {slug!r} has spaces or separators", expected)
        if isinstance(labels, str):
            labels = {"en": labels}
        if not isinstance(labels, dict) or not all(k in LANGS and isinstance(v, str) for k, v in labels.items()):
            raise BrandingError("NEWSLETTER_TOPICS", f"labels of {slug!r} must be a string or map {', '.join(LANGS)} to strings", expected)
        topics.append(Topic(slug, dict(labels)))
    return tuple(topics)


def load_branding(env: dict[str, str]) -> Branding:
    """Branding from ``NEWSLETTER_LIST_NAME``, ``NEWSLETTER_LOGO_URL``, ``NEWSLETTER_ACCENT_COLOR``,
    ``NEWSLETTER_POSTAL_ADDRESS``, ``NEWSLETTER_TOPICS`` and ``NEWSLETTER_TEMPLATES``.

    Raises:
        BrandingError: naming the variable.
    """
    logo = (env.get("NEWSLETTER_LOGO_URL") or "").strip()
    if logo and (urlsplit(logo).scheme != "https" or any(c in logo for c in ' "<>')):
        # Mail clients block or warn about http images; a quote would break out of the attribute.
        raise BrandingError(
            "NEWSLETTER_LOGO_URL", f"={logo!r} is not an https URL", "an https URL of an image, e.g. https://news.example.org/logo.png"
        )
    accent = (env.get("NEWSLETTER_ACCENT_COLOR") or "#0f2a4a").strip()
    if not COLOUR.fullmatch(accent):
        raise BrandingError("NEWSLETTER_ACCENT_COLOR", f"={accent!r} is not a colour", "#rrggbb, e.g. #0f2a4a")
    postal = " ".join((env.get("NEWSLETTER_POSTAL_ADDRESS") or "").split())
    folder = (env.get("NEWSLETTER_TEMPLATES") or "").strip()
    templates = Path(folder).expanduser() if folder else None
    if templates is not None and not templates.is_dir():
        raise BrandingError(
            "NEWSLETTER_TEMPLATES", f"={folder!r} is not a folder", "a folder laid out like templates/ (email/..., web/...)"
        )
    return Branding(
        list_names=_list_names(env.get("NEWSLETTER_LIST_NAME") or ""),
        logo_url=logo,
        accent=accent.lower(),
        postal_address=postal,
        topics=_topics(env.get("NEWSLETTER_TOPICS") or ""),
        templates=templates,
    )
