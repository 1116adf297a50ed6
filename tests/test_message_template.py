"""The byte-level per-recipient path (newsletter.message_template) against the email package's message.

Every case builds the same recipient's message both ways, `MessageTemplate.render` and the reference
`mime.build_message(personalise(...))`, parses both with the email package and compares headers
(the boundary and the Date second aside) and decoded parts.
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import replace
from email.message import EmailMessage
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.message_template import MessageTemplate, to_field
from newsletter.mime import DotFree, Envelope, HeaderInjection, build_message, to_bytes
from newsletter.rendering import ArticleView, EditionContent, greeting, personalise, render_edition
from newsletter.tokens import message_id, sign

SAMPLE = Path(__file__).resolve().parent.parent / "newsletter" / "sample"
FROM = "Wöchentliche Rundschau <weekly@news.example.org>"
LIST_ID = "weekly.news.example.org"
NAMES = [
    "Ada Lovelace", "张三", "陳怡君", "王芳 Wang Fang", "Zoë O'Brien", 'Doe, "Jim"', "a\\b", "", "Dr. Who (work)", ".",
    "x" * 80, "張" * 40, "張" * 15, "張" * 16, "  spaced  out ", "tab\there", "=?utf-8?q?x?=", "ctrl\x01char", "Ann\u00a0Lee",
]  # fmt: skip
ADDRESSES = ["ann@example.com", "first.last+tag@sub.example.org", "ann@bücher.de", "o'brien@example.ie", "a" * 60 + "@example.com"]


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def canonical(raw: bytes) -> tuple[object, ...]:
    """What a reader sees: headers as parsed (Date and the boundary left out) and each part's headers and content."""
    msg = _parse(raw)
    headers = []
    for name, value in msg.items():
        if name == "Date":
            continue
        if name == "Content-Type":
            headers.append((name, value.content_type, {k: v for k, v in value.params.items() if k != "boundary"}))
        elif name in ("To", "From"):
            headers.append((name, [(a.display_name, a.addr_spec) for a in value.addresses]))
        else:
            headers.append((name, str(value).strip()))
    parts = [(list(p.items()), p.get_content()) for p in msg.iter_parts()]
    return tuple(headers), tuple(map(repr, parts))


def reference(env: Envelope, text: str, html: str, values: dict[str, str]) -> bytes:
    return to_bytes(build_message(env, personalise(text, values, escape=False), personalise(html, values, escape=True)))


def both(text: str, html: str, lang: str, name: str, address: str, base_url: str = "https://news.example.org") -> tuple[bytes, bytes]:
    unsub = f"{base_url}/unsubscribe/{sign('k', 'unsubscribe', 12345, 7)}"
    values = {"GREETING": greeting(lang, name), "EMAIL": address, "UNSUBSCRIBE_URL": unsub,
              "PREFERENCES_URL": f"{base_url}/preferences/{sign('k', 'preferences', 12345)}"}  # fmt: skip
    mid = message_id("k", 7, 12345, "news.example.org")
    subject = {"en": "The week · Issue 7", "zh-Hans": "一周要闻 · 第 7 期", "zh-Hant": "一週要聞 · 第 7 期"}[lang]
    template = MessageTemplate.build(FROM, subject, LIST_ID, lang, text, html)
    mine = template.render(to_address=address, to_name=name, message_id=mid, unsubscribe_url=unsub, values=values)
    return mine, reference(Envelope(FROM, address, name, subject, mid, LIST_ID, unsub, lang), text, html, values)


@cache
def edition(lang: str) -> tuple[str, str]:
    """A real rendered edition (Jinja2 + premailer) of the bundled sample, markers in place: (text, html)."""
    source = "en" if lang == "en" else "zh-Hans"
    records = [json.loads(line) for line in (SAMPLE / f"articles-{source}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    views = [ArticleView(title=r["title"], summary=(r.get("body") or r.get("body_html") or "")[:400], url=r.get("url") or "https://news.example.org/a", category=r.get("category"))
             for r in records[:9]]  # fmt: skip
    # The first three articles carry a "You might also like" block of the other three.
    articles = tuple(replace(v, related=tuple(views[6:9])) if i < 3 else v for i, v in enumerate(views[:6]))
    content = EditionContent(number=7, lang=lang, title="Issue", date="2026", web_url=f"https://news.example.org/issues/7/{lang}",
                             articles=articles, editors_note="A *note*.")  # fmt: skip
    rendered = render_edition(content)
    return rendered.text, rendered.html


def assert_well_formed(raw: bytes) -> None:
    if isinstance(raw, DotFree):  # SMTP will send it without dot-stuffing: no line may start with "."
        assert not raw.startswith(b".") and b"\n." not in raw
    head, _, body = raw.partition(b"\r\n\r\n")
    raw.decode("ascii")  # 7-bit: headers RFC 2047-encoded, bodies quoted-printable
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "zh-Hant"])
@pytest.mark.parametrize("name", NAMES)
def test_rendered_editions_match_the_email_package(lang: str, name: str) -> None:
    text, html = edition(lang)
    mine, ref = both(text, html, lang, name, "ann@example.com")
    assert canonical(mine) == canonical(ref)
    assert_well_formed(mine)
    assert isinstance(mine, DotFree) == lang.startswith("zh")  # base64 bodies: the sender skips dot-stuffing
    parsed = _parse(mine)
    assert parsed["Date"].datetime is not None
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize(
    "base_url", ["https://news.example.org", "https://newsletter.example.org/weekly", "https://n.example/" + "p" * 300]
)
def test_addresses_and_long_urls(address: str, base_url: str) -> None:
    text, html = edition("en")
    mine, ref = both(text, html, "en", "Ada Lovelace", address, base_url)
    assert canonical(mine) == canonical(ref)
    assert_well_formed(mine)
    assert b"=?" not in mine.split(b"List-Unsubscribe:", 1)[1].split(b"\r\nList-Unsubscribe-Post", 1)[0]


@pytest.mark.parametrize("width", range(60, 82))
@pytest.mark.parametrize("lang", ["en", "zh-Hans"])
def test_marker_lines_near_the_76_character_limit(width: int, lang: str) -> None:
    pad = "x" if lang == "en" else "好"
    text = f"{pad * (width - 20)}@@NL_GREETING@@ tail\n{pad * width}\n@@NL_UNSUBSCRIBE_URL@@{pad * (width - 50)}\n= @@NL_EMAIL@@ \n"
    html = f'<p style="margin:0">{pad * (width - 30)}@@NL_GREETING@@</p>\n<a href="@@NL_UNSUBSCRIBE_URL@@">{pad * width}</a>\n'
    for name in ("Ada Lovelace", "张三", "x" * 70):
        mine, ref = both(text, html, lang, name, "ann@example.com")
        assert canonical(mine) == canonical(ref)
        assert_well_formed(mine)


def test_only_marker_lines_change() -> None:
    text, html = edition("zh-Hans")
    mine, _ = both(text, html, "zh-Hans", "张三", "ann@example.com")
    again, _ = both(text, html, "zh-Hans", "李四", "bob@example.com")
    changed = {a for a, b in zip(mine.split(b"\r\n"), again.split(b"\r\n"), strict=False) if a != b}
    assert 0 < len(changed) < 20


def test_every_marker_is_found_or_the_build_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    text, html = edition("zh-Hans")
    template = MessageTemplate.build(FROM, "s", LIST_ID, "zh-Hans", text, html)
    raw = template.render(to_address="a@example.com", to_name="Ann", message_id="<a@b>", unsubscribe_url="https://n.example/u",
                          values={"GREETING": "Hi", "EMAIL": "a@example.com", "UNSUBSCRIBE_URL": "u", "PREFERENCES_URL": "p"})  # fmt: skip
    assert b"@@NL_" not in raw
    assert not any("@@NL_" in p.get_content() for p in _parse(raw).iter_parts())  # zh parts are base64: look decoded
    # A body the template cannot read (here: 8bit instead of quoted-printable or base64) must not go out with markers in it.
    original = EmailMessage.set_content

    def eight_bit_content(self: EmailMessage, *args: object, **kwargs: object) -> None:
        original(self, *args, **{**kwargs, "cte": "8bit"})  # type: ignore[arg-type]

    monkeypatch.setattr(EmailMessage, "set_content", eight_bit_content)
    with pytest.raises(ValueError, match="markers not found"):
        MessageTemplate.build(FROM, "s", LIST_ID, "zh-Hans", text, html)


def test_unknown_or_missing_marker_raises_like_personalise() -> None:
    template = MessageTemplate.build(FROM, "s", LIST_ID, "en", "@@NL_GREETING@@\n", "<p>@@NL_NOPE@@</p>")
    with pytest.raises(KeyError):
        template.render(
            to_address="a@example.com", to_name="", message_id="<a@b>", unsubscribe_url="https://n.example/u", values={"GREETING": "Hi"}
        )


@pytest.mark.parametrize(
    "field, value",
    [("to_name", "Ann\r\nBcc: victim@example.com"), ("to_address", "a@example.com\nBcc: v@example.com"),
     ("message_id", "<a@b>\rBcc: v@example.com"), ("unsubscribe_url", "https://n.example/u\r\nBcc: v@example.com")],
)  # fmt: skip
def test_header_injection_is_refused(field: str, value: str) -> None:
    template = MessageTemplate.build(FROM, "s", LIST_ID, "en", "t\n", "<p>h</p>")
    args = {"to_address": "a@example.com", "to_name": "Ann", "message_id": "<a@b>", "unsubscribe_url": "https://n.example/u"}
    with pytest.raises(HeaderInjection):
        template.render(**{**args, field: value}, values={})


def test_to_field_fast_path_is_plain() -> None:
    assert to_field("ann@example.com", "Ann Lee") == b"To: Ann Lee <ann@example.com>\r\n"
    assert to_field("ann@example.com", "") == b"To: ann@example.com\r\n"
    assert to_field("ann@example.com", 'Doe, "J"') == b'To: "Doe, \\"J\\"" <ann@example.com>\r\n'
    assert to_field("ann@bücher.de", "张三") == b"To: =?utf-8?b?5byg5LiJ?= <ann@xn--bcher-kva.de>\r\n"


names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=60)
url_tail = st.text(st.sampled_from("abcXYZ0189-._~/%?&="), min_size=1, max_size=120)
prose = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\x00@"), max_size=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, tail=url_tail, before=prose, after=prose, lang=st.sampled_from(["en", "zh-Hans", "zh-Hant"]))
@example(name="张三", tail="u", before="x" * 75, after="", lang="en")
@example(name="", tail="u" * 100, before=" ", after=" \t", lang="zh-Hans")
def test_property_same_message_as_the_email_package(name: str, tail: str, before: str, after: str, lang: str) -> None:
    text = f"{before}@@NL_GREETING@@{after}\n{after}\nUnsubscribe: @@NL_UNSUBSCRIBE_URL@@\n{before}@@NL_EMAIL@@\n"
    html = f'<p>{before}@@NL_GREETING@@{after}</p>\n<a href="@@NL_UNSUBSCRIBE_URL@@">{after}</a>@@NL_PREFERENCES_URL@@\n'
    mine, ref = both(text, html, lang, name, "ann@example.com", "https://news.example.org/" + tail)
    assert canonical(mine) == canonical(ref)
    assert_well_formed(mine)


@pytest.mark.parametrize("gap", ["", "x", "好", "xy", "好x", "好好", "\n.", ".\n."])
@pytest.mark.parametrize("name", ["", "A", "Ab", "Abc", "张", "张三", "Zoë <&>"])
def test_base64_parts_around_markers_at_every_alignment(gap: str, name: str) -> None:
    # CJK editions are base64 (mime.body_encoding): each value and the 0-2 octets around it are encoded per
    # recipient, every static run at the alignment the value leaves; markers next to each other, 1-2 octets
    # apart, at the start and at the end of a part.
    text = f"@@NL_GREETING@@{gap}@@NL_EMAIL@@{gap}\n{'好' * 40}{gap}@@NL_UNSUBSCRIBE_URL@@\n{gap}@@NL_PREFERENCES_URL@@"
    html = f"@@NL_GREETING@@{gap}@@NL_EMAIL@@<p>{'好' * 30}{gap}</p>@@NL_UNSUBSCRIBE_URL@@{gap}@@NL_PREFERENCES_URL@@"
    mine, ref = both(text, html, "zh-Hans", name, "ann@example.com")
    assert b"Content-Transfer-Encoding: base64" in mine
    assert canonical(mine) == canonical(ref)
    assert_well_formed(mine)
