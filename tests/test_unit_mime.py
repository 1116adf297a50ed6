"""Unit tests for newsletter.mime: multipart structure, line endings, header encoding, injection."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re

import pytest

from newsletter.mime import Envelope, HeaderInjection, build_message, parse_from, to_bytes

ENV = Envelope(
    from_header="Wöchentliche Rundschau <weekly@news.example.org>",
    to_address="Ann@example.com",
    to_name="张三 Zhāng",
    subject="第 3 期 · Ünïcode — weekly review",
    message_id="<issue3.2.0123456789abcdef@news.example.org>",
    list_id="weekly.news.example.org",
    unsubscribe_url="https://news.example.org/unsubscribe/2.3.AAAAAAAAAAAAAAAAAAAAAA",
    lang="zh-Hans",
)
TEXT = "Hello 张三,\nline two\n" + "long " * 400 + "\n"
HTML = "<p>Hello 张三</p>\n<p>" + "<b>y</b>" * 300 + "</p>\n"


def _raw(env: Envelope = ENV, text: str = TEXT, html: str = HTML) -> bytes:
    return to_bytes(build_message(env, text, html))


def _headers(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize("lang, cte", [("zh-Hans", "base64"), ("zh-Hant", "base64"), ("ja", "base64"), ("en", "quoted-printable"),
                                       ("de", "quoted-printable")])  # fmt: skip
def test_multipart_alternative_text_then_html(lang: str, cte: str) -> None:
    msg = _parse(_raw(dataclasses.replace(ENV, lang=lang)))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert [p["Content-Transfer-Encoding"] for p in parts] == [cte, cte]
    # The parser keeps the wire's CRLF line ends in decoded text.
    assert parts[0].get_content().replace("\r\n", "\n") == TEXT
    assert parts[1].get_content().replace("\r\n", "\n") == HTML


def test_crlf_only_no_bare_lf_or_cr() -> None:
    raw = _raw()
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_every_line_at_most_998_octets() -> None:
    env = dataclasses.replace(ENV, subject="A" * 1500, unsubscribe_url="https://news.example.org/u/" + "b" * 900)
    raw = _raw(env, text="x" * 5000 + "\n", html="<p>" + "y" * 5000 + "</p>")
    lines = raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    parsed = _parse(raw)
    assert parsed["Subject"] == "A" * 1500
    assert str(parsed["List-Unsubscribe"]).strip() == "<https://news.example.org/u/" + "b" * 900 + ">"


@pytest.mark.parametrize("lang", ["en", "zh-Hans"])
def test_body_lines_at_most_76(lang: str) -> None:
    # RFC 2045 §6.7 rule 5 (quoted-printable) and §6.8 (base64); the SMTP policy alone would allow 78.
    raw = _raw(
        dataclasses.replace(ENV, lang=lang), text="x" * 500 + "\n" + "好" * 200 + "\n" + "a " * 200 + "\n", html="<p>" + "y" * 500 + "</p>"
    )
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


def test_cjk_editions_are_base64_and_shorter_than_quoted_printable() -> None:
    # Quoted-printable writes a 3-byte CJK character as 9 characters (=E5=A5=BD), base64 as 4.
    text, html = "好" * 3000 + "\n", "<p>" + "好" * 3000 + "</p>\n"
    zh = _raw(dataclasses.replace(ENV, lang="zh-Hans"), text=text, html=html)
    en = _raw(dataclasses.replace(ENV, lang="en"), text=text, html=html)
    assert b"Content-Transfer-Encoding: base64" in zh and b"Content-Transfer-Encoding: base64" not in en
    assert len(zh) < 0.5 * len(en)
    assert [p.get_content() for p in _parse(zh).iter_parts()] == [p.get_content() for p in _parse(en).iter_parts()]


@pytest.mark.parametrize("length", [40, 60, 76, 77, 78, 120, 400])
def test_list_unsubscribe_is_never_rfc2047_encoded(length: int) -> None:
    # RFC 2369 clients (one-click unsubscribe, RFC 8058) read the URL as it stands: the email package would
    # fold a URL longer than a folded line into =?utf-8?q?...?= words, which they would not decode.
    url = "https://news.example.org/unsubscribe/" + "t" * (length - 37)
    head = _headers(_raw(dataclasses.replace(ENV, unsubscribe_url=url)))
    field = re.search(rb"\r\nList-Unsubscribe:(.*?)\r\n(?! )", head, re.S).group(1)  # type: ignore[union-attr]
    assert b"=?" not in field
    assert field.replace(b"\r\n", b"").strip() == f"<{url}>".encode()


def test_list_unsubscribe_too_long_or_not_ascii_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than a header line"):
        build_message(dataclasses.replace(ENV, unsubscribe_url="https://news.example.org/u/" + "b" * 1200), "t\n", "<p>h</p>")
    with pytest.raises(ValueError, match="printable ASCII"):
        build_message(dataclasses.replace(ENV, unsubscribe_url="https://news.example.org/ü"), "t\n", "<p>h</p>")


def test_headers_are_ascii_and_rfc2047_encoded() -> None:
    raw = _raw()
    head = _headers(raw)
    head.decode("ascii")  # raises if any non-ASCII byte is in the header block
    assert b"=?utf-8?" in head
    for word in ("张三".encode(), "Wöchentliche".encode(), "Ünïcode".encode()):
        assert word not in head


def test_unicode_round_trips_through_parser() -> None:
    msg = _parse(_raw())
    assert msg["Subject"] == ENV.subject
    assert msg["To"].addresses[0].display_name == "张三 Zhāng"
    assert msg["To"].addresses[0].addr_spec == "Ann@example.com"
    assert msg["From"].addresses[0].display_name == "Wöchentliche Rundschau"
    assert msg["From"].addresses[0].addr_spec == "weekly@news.example.org"


def test_list_headers_and_ids() -> None:
    msg = _parse(_raw())
    # A long value is folded after the colon (legal RFC 5322 folding); compare the unfolded value.
    assert str(msg["List-Unsubscribe"]).strip() == f"<{ENV.unsubscribe_url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "<weekly.news.example.org>"
    assert msg["Message-ID"] == ENV.message_id
    assert msg["Content-Language"] == "zh-Hans"
    assert msg["MIME-Version"] == "1.0"
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000", str(msg["Date"]))
    raw_head = _headers(_raw())
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw_head


def test_plain_ascii_names_are_not_encoded() -> None:
    env = dataclasses.replace(ENV, from_header="Weekly <weekly@news.example.org>", to_name="Ann", subject="Issue 3")
    head = _headers(_raw(env, "t\n", "<p>h</p>"))
    assert b"\r\nSubject: Issue 3\r\n" in head
    assert b"\r\nTo: Ann <Ann@example.com>\r\n" in head
    assert head.startswith(b"From: Weekly <weekly@news.example.org>\r\n")


@pytest.mark.parametrize(
    "field, value",
    [
        ("subject", "Hello\r\nBcc: victim@example.com"),
        ("subject", "Hello\nBcc: victim@example.com"),
        ("subject", "Hello\rBcc: victim@example.com"),
        ("to_name", "Ann\r\nBcc: victim@example.com"),
        ("to_address", "ann@example.com\r\nBcc: victim@example.com"),
        ("from_header", "W <w@example.org>\r\nBcc: victim@example.com"),
        ("unsubscribe_url", "https://n.example/u\r\nBcc: victim@example.com"),
        ("message_id", "<a@b>\nBcc: victim@example.com"),
        ("list_id", "l.example\x00"),
    ],
)
def test_header_injection_is_refused(field: str, value: str) -> None:
    with pytest.raises(HeaderInjection):
        build_message(dataclasses.replace(ENV, **{field: value}), "t\n", "<p>h</p>")


def test_parse_from() -> None:
    addr = parse_from("Weekly Review <weekly@newsletter.example.org>")
    assert (addr.display_name, addr.addr_spec) == ("Weekly Review", "weekly@newsletter.example.org")
    with pytest.raises(ValueError, match="one address"):
        parse_from("a@example.org, b@example.org")
    with pytest.raises(ValueError, match="one address"):
        parse_from("no address here")


def test_internationalised_domain_in_to_header() -> None:
    # normalise_address stores IDN domains in Unicode form ("bücher.de"), so such addresses reach build_message.
    raw = _raw(dataclasses.replace(ENV, to_address="ann@bücher.de", to_name="Ann"), "t\n", "<p>h</p>")
    head = _headers(raw)
    to_line = re.search(rb"\r\nTo: (.*?)\r\n(?! )", head).group(1)  # type: ignore[union-attr]
    assert b"=?" not in to_line.split(b"<", 1)[-1]  # no encoded-word in the address itself
    assert _parse(raw)["To"].addresses[0].domain in ("bücher.de", "xn--bcher-kva.de")


@pytest.mark.parametrize(
    "subject",
    [
        "Test <b>bold</b> & Bcc: x@example.net hi ünïcödé · Issue 4",  # the trial's: "ünïcödé· Issue 4" arrived
        "The quick brown fox jumps over the lazy dog near the river Zürich · Issue 4",
        "Names test — naïve café · Issue 7",
        "新闻联播一周要闻：" + "中国" * 60 + " · 第 1 期",
        "Café  two  spaces · Issue 9",
        "An editor typed =?utf-8?q?hi?= literally · Issue 3",
        "An editor typed =?utf-8?q?hi?= literally, in ASCII",
    ],
)
def test_subject_decodes_to_exactly_what_was_given(subject: str) -> None:
    """Regression (trial): the email package folded a long subject between two encoded-words, leaving the
    space before "·" outside them, and decoders drop white space between encoded-words (RFC 2047 §6.2); a
    literal "=?utf-8?q?hi?=" reached readers as "hi". Checked with the strict decoder and the modern parser."""
    from email.header import decode_header, make_header

    head = _headers(_raw(dataclasses.replace(ENV, subject=subject), "t\n", "<p>h</p>"))
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    folded = re.search(rb"\r\nSubject: (.*?)\r\n(?! )", head, re.S)
    assert folded is not None
    assert str(make_header(decode_header(folded.group(1).decode("ascii")))) == subject
    assert _parse(_raw(dataclasses.replace(ENV, subject=subject), "t\n", "<p>h</p>"))["Subject"] == subject
