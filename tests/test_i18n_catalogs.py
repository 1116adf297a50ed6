"""The gettext catalogs: every message the code and templates use is translated in every language, the
compiled ``.mo`` (hatch build hook) says what the ``.po`` says, and branding overrides reach the messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from newsletter import i18n
from newsletter.config import SettingsError, load_settings
from newsletter.notices import render_notice
from tests.conftest import ROOT


def extracted() -> set[str]:
    """Every msgid ``pybabel extract -F babel.cfg -k N_`` finds."""
    with (ROOT / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    keywords = {"_": None, "gettext": None, "N_": None}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(str(ROOT), method_map, options_map, keywords=keywords):
        found.add(message if isinstance(message, str) else message[0])
    return found


@pytest.mark.parametrize("lang", sorted(i18n.CATALOG_LOCALES))
def test_every_message_is_translated(lang: str) -> None:
    messages = extracted()
    assert len(messages) > 60 and "Confirm your subscription" in messages and "Leave only this topic" in messages
    catalog = i18n.catalog(lang)
    missing = sorted(messages - set(catalog))
    assert missing == [], f"untranslated in {lang}: {missing}"
    with i18n.catalog_path(lang).open("rb") as handle:
        po = read_po(handle)
    assert not [m.id for m in po if m.id and m.fuzzy], "fuzzy entries are not translations"
    # Placeholders survive translation (a lost %(email)s would raise at render time).
    for msgid, text in catalog.items():
        assert sorted(re.findall(r"%\(\w+\)s", msgid)) == sorted(re.findall(r"%\(\w+\)s", text)), (lang, msgid)


def test_compiled_catalogs_match_the_po_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the build hook writes (.mo) is read back with the same content as the .po."""
    from hatch_build import CompileCatalogs

    locale = tmp_path / "newsletter" / "locale"
    for lang in i18n.CATALOG_LOCALES:
        target = locale / i18n.CATALOG_LOCALES[lang] / "LC_MESSAGES" / "messages.po"
        target.parent.mkdir(parents=True)
        target.write_bytes(i18n.catalog_path(lang).read_bytes())
    hook = CompileCatalogs.__new__(CompileCatalogs)
    hook._BuildHookInterface__root = str(tmp_path)  # type: ignore[attr-defined]
    monkeypatch.setattr(CompileCatalogs, "root", property(lambda self: str(tmp_path)))
    build: dict[str, dict[str, str]] = {"force_include": {}}
    hook.initialize("standard", build)
    assert len(build["force_include"]) == 2
    from_po = {lang: dict(i18n.catalog(lang)) for lang in i18n.CATALOG_LOCALES}
    monkeypatch.setattr(i18n, "LOCALE_DIR", locale)
    i18n.catalog.cache_clear()
    try:
        for lang in i18n.CATALOG_LOCALES:
            assert i18n.catalog_path(lang, ".mo").exists()
            assert i18n.catalog(lang) == from_po[lang]
    finally:
        i18n.catalog.cache_clear()


def test_branding_and_template_override(tmp_path: Path) -> None:
    override = tmp_path / "brand"
    (override / "email" / "confirm").mkdir(parents=True)
    # An override may extend the packaged layout and replace one part only.
    (override / "email" / "confirm" / "subject.txt").write_text('{{ _("Confirm your subscription") }} · {{ list_name }} ★\n')
    env = {
        "NEWSLETTER_HOME": str(tmp_path / "home"),
        "NEWSLETTER_TEMPLATES": str(override),
        "NEWSLETTER_LIST_NAME": '{"en": "Policy Weekly", "zh-Hant": "政策週報"}',
        "NEWSLETTER_LOGO_URL": "https://news.example.org/logo.png",
        "NEWSLETTER_ACCENT_COLOR": "#8B0000",
        "NEWSLETTER_POSTAL_ADDRESS": "1 Main St,\n Springfield",
    }
    settings = load_settings(env)
    subject, text, html = render_notice(settings, "confirm", "zh-Hant", name="", email="a@example.com", confirm_url="https://x/c", hours=72)
    assert subject == "確認訂閱 · 政策週報 ★"
    assert "政策週報" in text and "1 Main St, Springfield" in text
    assert 'src="https://news.example.org/logo.png"' in html and "#8b0000" in html
    assert render_notice(settings, "confirm", "zh-Hans", name="", email="a", confirm_url="u", hours=1)[0] == "确认订阅 · Policy Weekly ★"
    for name, value in (("NEWSLETTER_LOGO_URL", "http://x/logo.png"), ("NEWSLETTER_ACCENT_COLOR", "red"),
                        ("NEWSLETTER_TEMPLATES", str(tmp_path / "missing")), ("NEWSLETTER_TOPICS", '{"a b": "x"}'),
                        ("NEWSLETTER_LIST_NAME", '{"fr": "x"}')):  # fmt: skip
        with pytest.raises(SettingsError) as info:
            load_settings({**env, name: value})
        assert str(info.value).startswith(name)


@pytest.mark.parametrize(("lang", "expected"), [("zh-Hans", "您已退出“economy”。"), ("zh-Hant", "您已退出「economy」。")])
def test_a_left_topic_is_set_apart_from_the_chinese_text(lang: str, expected: str) -> None:
    """A topic without a Chinese label shows its slug: it must not run into the text ("您已退出economy")."""
    from newsletter.rendering import translator

    assert translator(lang, True)("You left %(topics)s. You still receive your other topics.", topics="economy").startswith(expected)
