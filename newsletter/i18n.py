"""Interface strings of emails and reader pages: gettext catalogs (Babel), looked up by their English text.

The catalogs are ``newsletter/locale/<locale>/LC_MESSAGES/messages.po`` (``zh_Hans``, ``zh_Hant``);
English is the source language and needs none. ``babel.cfg`` says where messages are extracted from
(``pybabel extract -F babel.cfg``); a wheel carries the compiled ``.mo`` files (hatch_build.py). A
checkout without them reads the ``.po`` files with Babel, so the two never disagree for long.

Lookups are strict: a message missing from a catalog (or only fuzzy, or empty) raises
`MissingTranslation` instead of falling back to English, so a publish stops naming the string.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).with_name("locale")
DOMAIN = "messages"
# BCP 47 tag of an edition -> the POSIX-style locale name of its catalog folder (Babel's identifier).
CATALOG_LOCALES = {"zh-Hans": "zh_Hans", "zh-Hant": "zh_Hant"}
SOURCE_LANG = "en"


class MissingTranslation(LookupError):
    """A template asked for a string that the language's catalog lacks."""

    def __init__(self, lang: str, message: str) -> None:
        super().__init__(f"missing {lang} translation for {message!r}")
        self.lang, self.message = lang, message


def catalog_path(lang: str, suffix: str = ".po") -> Path:
    """Where the catalog of ``lang`` (a BCP 47 tag, e.g. ``zh-Hant``) lives; ``suffix`` ``.po`` or ``.mo``."""
    return LOCALE_DIR / CATALOG_LOCALES[lang] / "LC_MESSAGES" / f"{DOMAIN}{suffix}"


@cache
def catalog(lang: str) -> dict[str, str]:
    """The translations of ``lang`` as ``{English: translated}``, without fuzzy or empty entries.

    Reads the compiled ``.mo`` when it is at least as new as the ``.po``, else the ``.po`` (Babel).

    Raises:
        MissingTranslation: no catalog for ``lang`` (message ``*``).
    """
    if lang not in CATALOG_LOCALES or not catalog_path(lang).exists():
        raise MissingTranslation(lang, "*")
    po, mo = catalog_path(lang), catalog_path(lang, ".mo")
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    # A .mo leaves fuzzy entries out (msgfmt and Babel alike); the header entry has the empty id.
    with (mo if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime else po).open("rb") as handle:
        parsed = read_mo(handle) if handle.name.endswith(".mo") else read_po(handle, locale=CATALOG_LOCALES[lang])
    return {m.id: m.string for m in parsed if m.id and isinstance(m.id, str) and isinstance(m.string, str) and m.string and not m.fuzzy}


def gettext_for(lang: str) -> Callable[[str], str]:
    """A ``gettext`` for ``lang``. English is the source language and needs no catalog.

    The returned function raises `MissingTranslation` instead of silently falling back to English,
    so a missing string stops the publish (or shows a server error) with a message naming it.
    """
    if lang == SOURCE_LANG:
        return lambda message: message
    messages = catalog(lang)

    def gettext(message: str) -> str:
        try:
            return messages[message]
        except KeyError:
            raise MissingTranslation(lang, message) from None

    return gettext


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it here (translated where it is shown)."""
    return message
