"""DKIM: every message signed once, after personalisation, verifiable with the published public key."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from newsletter.config import SettingsError, load_settings
from newsletter.delivery.mailers import OutboxMailer
from newsletter.delivery.send import send_batch
from newsletter.dkim import SIGNED_HEADERS, load_key, sign
from tests.conftest import unavailable
from tests.test_unit_delivery import _outbox_files, _publish


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh 2048-bit RSA key (PEM file) and its public key as published in DNS (base64 DER)."""
    if not shutil.which("openssl"):
        unavailable("openssl is not installed (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("dkim")
    pem = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(pem), "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    return pem, base64.b64encode(der).decode("ascii")


def _dns(public: str, selector: str = "nl2026", domain: str = "newsletter.example.org"):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{selector}._domainkey.{domain}.".encode()
        return f"v=DKIM1; k=rsa; p={public}".encode()

    return lookup


def test_sign_and_verify_with_the_public_key(key_pair: tuple[Path, str]) -> None:
    import dkim

    pem, public = key_pair
    key = load_key("nl2026", pem, "The Weekly Review <weekly@newsletter.example.org>")
    assert key.domain == "newsletter.example.org" and "PRIVATE" not in repr(key)
    message = (
        b"From: The Weekly Review <weekly@newsletter.example.org>\r\nTo: ann@example.com\r\nSubject: Week 3\r\n"
        b"List-Unsubscribe: <https://news.example.org/unsubscribe/1.2.abc>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Ann.\r\n"
    )
    signed = sign(message, key)
    assert signed.endswith(message) and signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert b" d=newsletter.example.org;" in signed and b" s=nl2026;" in signed
    assert dkim.verify(signed, dnsfunc=_dns(public))
    tampered = signed.replace(b"unsubscribe/1.2.abc", b"unsubscribe/6.6.evil")
    assert not dkim.verify(tampered, dnsfunc=_dns(public))
    assert b"list-unsubscribe" in SIGNED_HEADERS and b"list-unsubscribe-post" in SIGNED_HEADERS  # RFC 8058 §4


def test_every_sent_message_is_signed_after_personalisation(
    key_pair: tuple[Path, str], sqlite_url: str, make_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import dkim

    from newsletter.db import session_factory

    pem, public = key_pair
    settings = make_settings(sqlite_url, NEWSLETTER_DKIM_SELECTOR="nl2026", NEWSLETTER_DKIM_KEY_FILE=str(pem))
    assert settings.dkim is not None
    with session_factory(sqlite_url)() as session:
        _, rec = _publish(session, settings)
        for batch_issue, ids in rec.calls:
            send_batch(session, settings, batch_issue, ids, lambda: OutboxMailer(settings.outbox_dir))
    files = _outbox_files(settings.outbox_dir)
    assert len(files) == 4
    for path in files:
        raw = path.read_bytes()
        assert raw.startswith(b"Return-Path: <")  # the outbox records the envelope sender above the signature
        signed = raw.split(b"\r\n", 1)[1]
        assert signed.count(b"DKIM-Signature:") == 1
        assert dkim.verify(signed, dnsfunc=_dns(public)), path.name
        headers = signed.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")
        tags = headers.split(b"DKIM-Signature:", 1)[1].split(b"\r\n", 1)[0]
        assert b"list-unsubscribe : list-unsubscribe : list-unsubscribe-post" in tags


def test_notices_and_test_sends_are_signed_too(key_pair: tuple[Path, str], sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): with DKIM set only issue deliveries were signed: a confirmation request (the first
    message a reader gets from the list) and a test send (meant to show what readers get) went out unsigned."""
    import dkim

    from newsletter.db import session_factory
    from newsletter.models import Issue
    from newsletter.notices import deliver_notice
    from newsletter.testsend import send_test

    pem, public = key_pair
    settings = make_settings(sqlite_url, NEWSLETTER_DKIM_SELECTOR="nl2026", NEWSLETTER_DKIM_KEY_FILE=str(pem))
    deliver_notice(settings, "confirm", "ann@example.com", "Ann", "zh-Hant", confirm_url="https://news.example.org/confirm/x", hours=72)
    with session_factory(sqlite_url)() as session:
        _publish(session, settings)
        issue = session.query(Issue).one()
        send_test(session, settings, issue, "en", ["proof@example.org"], sent_by="trial")
    files = _outbox_files(settings.outbox_dir)
    assert len(files) == 2
    for path in files:
        signed = path.read_bytes().split(b"\r\n", 1)[1]  # below the outbox's Return-Path line
        assert signed.startswith(b"DKIM-Signature: ") and dkim.verify(signed, dnsfunc=_dns(public)), path.name


def test_no_signature_without_the_settings(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    assert make_settings(sqlite_url).dkim is None


def test_bad_key_settings_fail_at_start_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello\n")
    with pytest.raises(SettingsError, match=r"^NEWSLETTER_DKIM_KEY_FILE=.*not-a-key.pem: not a PEM RSA private key"):
        load_settings({"NEWSLETTER_DKIM_SELECTOR": "s1", "NEWSLETTER_DKIM_KEY_FILE": str(bad)})
    with pytest.raises(SettingsError, match=r"^NEWSLETTER_DKIM_KEY_FILE=.*missing.pem: cannot read the key: No such file"):
        load_settings({"NEWSLETTER_DKIM_SELECTOR": "s1", "NEWSLETTER_DKIM_KEY_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(SettingsError, match=r"^NEWSLETTER_DKIM_SELECTOR is not set"):
        load_settings({"NEWSLETTER_DKIM_KEY_FILE": str(bad)})
    from click.testing import CliRunner

    from newsletter.cli import main

    env = {"NEWSLETTER_HOME": str(tmp_path / "home"), "NEWSLETTER_DKIM_SELECTOR": "s1", "NEWSLETTER_DKIM_KEY_FILE": str(bad)}
    result = CliRunner().invoke(main, ["issue", "list"], env=env)
    assert result.exit_code == 2  # a setting that cannot be used: exit status 2
    assert result.output.strip().splitlines() == [
        f"error: NEWSLETTER_DKIM_KEY_FILE={bad}: not a PEM RSA private key (make one with: openssl genrsa -out dkim.pem 2048);"
        " expected a PEM RSA private key file"
    ]


def test_canonicalisation_equals_dkimpy_s() -> None:
    """Relaxed body and header canonicalisation (RFC 6376 §3.4.2, §3.4.4) byte for byte as dkimpy does it,
    on random CRLF-ended bodies and folded header fields full of white space."""
    import random

    from dkim.canonicalization import Relaxed

    from newsletter.dkim import relaxed_body, relaxed_header

    rng = random.Random(6376)
    pieces = [b" ", b"\t", b"a", b"\r\n", b"   ", b".", b"=20", b"\xc3\xa9"]
    for _ in range(5000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) + b"\r\n"
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body
        value = b"".join(rng.choice([b" ", b"\t", b"x", b"\r\n ", b"\r\n\t", b":"]) for _ in range(rng.randint(0, 20)))
        ((name, canon),) = Relaxed.canonicalize_headers([(b"X-Test ", value)])
        assert relaxed_header(b"X-Test :" + value) == name + b":" + canon.removesuffix(b"\r\n"), value


def test_signatures_survive_relaxed_changes_and_over_signing(key_pair: tuple[Path, str]) -> None:
    """dkimpy verifies a long message with folded fields and white-space runs; re-folding and trailing
    spaces (what relaxed allows) keep it valid, a second Subject added on the way or a changed word does not."""
    import dkim

    pem, public = key_pair
    key = load_key("nl2026", pem, "weekly@newsletter.example.org")
    message = (
        b"From: The Weekly Review <weekly@newsletter.example.org>\r\nTo: =?utf-8?q?Z=C3=A9?= <ze@example.com>\r\n"
        b"Subject: Week 3:\r\n  rates\t and  frogs\r\nDate: Tue, 01 Dec 2026 07:00:00 +0000\r\nMessage-ID: <1.2@newsletter.example.org>\r\n"
        b"List-Unsubscribe: <https://news.example.org/unsubscribe/1.2.abc>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"Hello Z=C3=A9,  the  week\tin review=\r\n continues here.\r\n" * 3000
        + b".leading dot\r\n\r\n\r\n"
    )
    signed = sign(message, key)
    assert dkim.verify(signed, dnsfunc=_dns(public))
    relaxed = (
        signed.replace(b"the  week", b"the week")
        .replace(b"continues here.\r\n", b"continues here.  \r\n")
        .replace(b"Subject: Week 3:\r\n  rates", b"Subject: Week 3: rates")
    )
    assert dkim.verify(relaxed, dnsfunc=_dns(public))
    assert not dkim.verify(signed.replace(b"frogs", b"toads"), dnsfunc=_dns(public))
    second_subject = signed.replace(b"\r\n\r\n", b"\r\nSubject: Win a prize\r\n\r\n", 1)
    assert not dkim.verify(second_subject, dnsfunc=_dns(public))  # over-signed (RFC 6376 §5.4.2)
