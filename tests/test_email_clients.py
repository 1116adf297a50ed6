"""Editions as readers get them: the longest real issues in Debian's chromium at 600 and 375 px, both colour
schemes, and every message under Gmail's clipping size.

The issue is built through the product's own steps from the shared corpora: the busiest White House week
(31 documents, 2025-W04, plus three articles with images) and the longest CCTV bulletin (34 items, 2024-09-04),
so one issue has en, zh-Hans and a converted zh-Hant edition. Screenshots go to ``artifacts/email/`` (git-ignored); the path is printed.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from newsletter import publishing
from newsletter.articles import import_articles
from newsletter.db import session_factory, upgrade
from newsletter.issues import create_issue
from newsletter.mime import Envelope, build_message, to_bytes
from newsletter.models import Article
from newsletter.rendering import COLUMN_WIDTH, RenderedEdition, greeting, personalise, render_edition
from tests.conftest import ROOT, unavailable
from tests.test_browser import browser  # noqa: F401  (the module-scoped chromium fixture)

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past this much HTML
ARTIFACTS = ROOT / "artifacts" / "email"
NOTE = (
    "This week: [the archive](/archive), [the lead story](#article-1), write to [the editors](mailto:editors@example.org). "
    "A long address that must wrap: https://news.example.org/an/extremely/long/path/that/would/otherwise/push/the/column/wider/than/a/phone/screen"
)


def _png(width: int, height: int) -> bytes:
    """A grey PNG of the given size (a stand-in for every remote image: the browser has no network)."""
    row = b"\x00" + b"\x80\x80\x80" * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def _longest_issue_records(data: Path) -> list[dict[str, Any]]:
    with (data / "corpus-xinwenlianbo" / "xwlb_2024H2_issues.jsonl").open(encoding="utf-8") as handle:
        bulletins = [json.loads(line) for line in handle]
    longest = max(bulletins, key=lambda b: len(b["item_ids"]))
    with (data / "corpus-xinwenlianbo" / "xwlb_2024H2_items.jsonl").open(encoding="utf-8") as handle:
        items = {r["id"]: r for r in map(json.loads, handle)}
    chinese = [items[i] for i in longest["item_ids"]]
    weeks: dict[tuple[int, int], list[dict[str, Any]]] = {}
    pictured: list[dict[str, Any]] = []
    with (data / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        for record in map(json.loads, handle):
            if record.get("published_at"):
                weeks.setdefault(datetime.fromisoformat(record["published_at"]).isocalendar()[:2], []).append(record)
            if "<img" in record["body"] and len(pictured) < 3:
                pictured.append(record)
    english = max(weeks.values(), key=len)
    # That week has no pictures: three articles with images (no size given, served 1600 px wide) join it.
    return english + [r for r in pictured if r not in english] + chinese


@pytest.fixture(scope="module")
def editions(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RenderedEdition]:
    """The longest real issue, rendered per edition by the product's publish steps (related block included)."""
    from newsletter.config import load_settings

    folder = tmp_path_factory.mktemp("clients")
    url = f"sqlite:///{folder / 'clients.db'}"
    upgrade(url)
    records = _longest_issue_records(shared_data)
    corpus = folder / "issue.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    settings = load_settings(
        {"DATABASE_URL": url, "NEWSLETTER_BASE_URL": "https://news.example.org", "NEWSLETTER_SECRET_KEY": "email-clients-test-key"}
    )
    with session_factory(url)() as session:
        assert not import_articles(session, corpus).errors
        by_id = {a.external_id: a for a in session.query(Article)}
        issue = create_issue(
            session, [by_id[r["id"]] for r in records], notes={"en": NOTE, "zh-Hans": "本周要闻。"}, titles={"en": "Week 4"}
        )
        session.commit()
        publishing.attach_related(session, settings, issue.id)
        out = {e.lang: render_edition(publishing.edition_content(session, settings, issue, e)) for e in issue.editions}
    assert sorted(out) == ["en", "zh-Hans", "zh-Hant"]
    return out


def _personal(edition: RenderedEdition, lang: str) -> tuple[str, str]:
    values = {
        "GREETING": greeting(lang, "Alexandria Ocasio-Montgomery-Worthington" if lang == "en" else "欧阳娜娜"),
        "EMAIL": "a.very.long.address.for.testing@subdomain.example.org",
        "UNSUBSCRIBE_URL": "https://news.example.org/unsubscribe/12345.67.AbCdEfGhIjKlMnOpQrStUv",
        "PREFERENCES_URL": "https://news.example.org/preferences/12345.AbCdEfGhIjKlMnOpQrStUv",
    }
    return personalise(edition.html, values, escape=True), personalise(edition.text, values, escape=False)


def test_every_message_is_under_gmails_clipping_size(editions: dict[str, RenderedEdition]) -> None:
    for lang, edition in editions.items():
        html, text = _personal(edition, lang)
        env = Envelope(
            from_header="The Weekly Review <weekly@newsletter.example.org>", to_address="reader@example.org", to_name="Reader",
            subject=edition.subject, message_id="<1.2.abc@newsletter.example.org>", list_id="weekly.newsletter.example.org",
            unsubscribe_url="https://news.example.org/unsubscribe/12345.67.AbCdEfGhIjKlMnOpQrStUv", lang=lang,
        )  # fmt: skip
        raw = to_bytes(build_message(env, text, html))
        html_part = email.message_from_bytes(raw, policy=email.policy.default).get_body(("html",))
        html_bytes = len(html_part.get_content().encode("utf-8"))  # type: ignore[union-attr]
        print(f"{lang}: HTML {html_bytes:,} bytes, whole message {len(raw):,} bytes (Gmail clips past {GMAIL_CLIP_BYTES:,} of HTML)")
        assert html_bytes < GMAIL_CLIP_BYTES, lang


MEASURE = """() => {
  const column = document.querySelector('.container').getBoundingClientRect();
  const images = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {src: i.currentSrc, width: r.width, left: r.left, right: r.right, loaded: i.complete && i.naturalWidth > 0};
  });
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          column: {left: column.left, right: column.right, width: column.width}, images,
          lang: document.documentElement.lang, dir: document.documentElement.dir};
}"""

# WCAG 2.1 §1.4.3 contrast of every visible text against the background it is drawn on (the nearest ancestor
# with an opaque background colour), https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio.
CONTRAST = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; })
                                     .reduce((a, c, i) => a + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!own || box.width === 0 || box.height === 0 || style.visibility === 'hidden') continue;
    const [l1, l2] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))].sort((a, b) => b - a);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    out.push({text: el.textContent.trim().slice(0, 40), ratio: (l1 + 0.05) / (l2 + 0.05), needed: large ? 3 : 4.5,
              color: style.color, cls: el.className || el.parentElement.className});
  }
  return out;
}"""


@pytest.fixture(scope="module")
def open_page(browser: Any) -> Iterator[Any]:  # noqa: F811
    """``open_page(width, scheme)``: a page in a fresh context whose image requests are answered locally."""
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout if shutil.which("fc-list") else ""
    if "CJK" not in fonts:
        unavailable("no CJK font for chromium (apt-get install fonts-noto-cjk)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    wide = _png(1600, 900)
    contexts = []

    def open_(width: int, scheme: str = "light") -> Any:
        context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
        # Every remote image is served from here: the machine has no network, and a wide picture is the worst case.
        context.route("**/*", lambda route: route.fulfill(status=200, content_type="image/png", body=wide))
        contexts.append(context)
        return context.new_page()

    yield open_
    for context in contexts:
        context.close()


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "zh-Hant"])
@pytest.mark.parametrize("width", [600, 375])
def test_edition_fits_the_screen(open_page: Any, editions: dict[str, RenderedEdition], lang: str, width: int) -> None:
    page = open_page(width)
    html, _ = _personal(editions[lang], lang)
    page.set_content(html, wait_until="load")
    m = page.evaluate(MEASURE)
    shot = ARTIFACTS / f"{lang}-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert (m["lang"], m["dir"]) == (lang, "ltr")
    assert m["scrollWidth"] <= m["innerWidth"], f"horizontal overflow: {m['scrollWidth']} > {m['innerWidth']} ({shot})"
    assert m["column"]["width"] <= min(width, 600)
    if lang == "en":
        assert m["images"], "the White House week has article images"
    for image in m["images"]:
        assert image["loaded"]
        assert image["width"] <= min(m["column"]["width"], COLUMN_WIDTH) + 0.5, (image, shot)
        assert m["column"]["left"] - 0.5 <= image["left"] and image["right"] <= m["column"]["right"] + 0.5, (image, shot)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_meets_wcag_aa_in_both_schemes(open_page: Any, editions: dict[str, RenderedEdition], scheme: str) -> None:
    page = open_page(600, scheme)
    html, _ = _personal(editions["en"], "en")
    page.set_content(html, wait_until="load")
    texts = page.evaluate(CONTRAST)
    body_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.screenshot(path=str(ARTIFACTS / f"en-600-{scheme}.png"), full_page=True)
    page.close()
    assert body_bg == ("rgb(11, 15, 23)" if scheme == "dark" else "rgb(243, 244, 246)")  # the scheme's own palette applied
    assert len(texts) > 50
    low = [t for t in texts if t["ratio"] < t["needed"]]
    assert low == [], low[:5]
