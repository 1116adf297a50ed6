"""Bounce handling on SQLite and PostgreSQL: VERP return paths, DSNs (RFC 3464) read from Maildir and mbox.

Deliveries come from the real publish steps and `send_batch` with a recording mailer, so the VERP address a
DSN comes back to is the one the sender really used. DSNs are built as Postfix sends them: multipart/report;
report-type=delivery-status with a text/plain notice, a message/delivery-status part and a
text/rfc822-headers part quoting the original headers.
"""

from __future__ import annotations

import base64
import mailbox
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from newsletter import publishing
from newsletter.bounces import BounceReport, Skipped, parse_dsn, parse_verp, process_bounces, soft_bounce_limit, verp_address
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.db import alembic_config, get_engine, upgrade
from newsletter.delivery import ledger
from newsletter.delivery.send import send_batch
from newsletter.issues import create_issue
from newsletter.models import Article, BounceEvent, Delivery, DeliveryStatus, Subscriber, SubscriberStatus, Suppression
from newsletter.tokens import BadToken

DOMAIN = "newsletter.example.org"  # the domain of the default NEWSLETTER_FROM


class RecordingMailer:
    """A mailer that keeps what it was given: envelope sender, recipient and message bytes."""

    name = "recorder"

    def __init__(self, sent: list[tuple[str, str, bytes]]) -> None:
        self.sent = sent

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        self.sent.append((sender, recipient, message))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Sent:
    """One delivery as it left: its id, the envelope sender used, and the message's header block."""

    delivery_id: int
    sender: str
    headers: str
    message_id: str


@pytest.fixture
def settings(db_url: str, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("NEWSLETTER_SOFT_BOUNCE_LIMIT", raising=False)
    return make_settings(db_url)


def _seed(session, emails: list[str]) -> None:  # type: ignore[no-untyped-def]
    session.add(
        Article(external_id="e1", title="Grid security rules tightened", summary="Rules.", body_html="<p>Patch within 30 days.</p>",
                body_text="Utilities must patch control systems within 30 days.", lang="en",
                published_at=datetime(2026, 11, 16, tzinfo=UTC))
    )  # fmt: skip
    session.add_all(Subscriber(email=e, name=e.split("@")[0].title(), lang="en") for e in emails)
    session.commit()


def _publish_and_send(session, settings: Settings) -> dict[str, Sent]:  # type: ignore[no-untyped-def]
    """Create, publish and send one more issue of article e1 to every active subscriber; ``{email: Sent}``."""
    issue = create_issue(session, list(session.scalars(select(Article))))
    session.commit()
    publishing.request_publish(session, settings, issue)
    publishing.render_editions(session, settings, issue.id)
    batches: list[list[int]] = []
    publishing.plan_deliveries(session, settings, issue.id, lambda _issue_id, ids: batches.append(list(ids)))
    recorded: list[tuple[str, str, bytes]] = []
    for ids in batches:
        assert +send_batch(session, settings, issue.id, ids, lambda: RecordingMailer(recorded)).outcomes == {"sent": len(ids)}
    rows = {d.email: d for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue.id))}
    return {
        recipient: Sent(rows[recipient].id, sender, message.split(b"\r\n\r\n", 1)[0].decode("ascii"), rows[recipient].message_id)
        for sender, recipient, message in recorded
    }


def make_dsn(
    sent: Sent | None,
    recipient: str,
    *,
    dsn_id: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str | None = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    to: str | None = None,
    headers: str | None = None,
) -> bytes:
    """A Postfix-style DSN for the message ``sent`` to ``recipient``, delivered to ``to`` (default: its VERP
    address, as the bounce mailbox's local delivery agent writes Delivered-To and X-Original-To)."""
    to = to or (sent.sender if sent else f"bounces@{DOMAIN}")
    report = MIMEMultipart("report", report_type="delivery-status", boundary="3F1A2B4C5D.1764496800/mx.example.net")
    for name, value in [
        ("Return-Path", "<>"),
        ("X-Original-To", to),
        ("Delivered-To", to),
        ("Date", "Mon, 30 Nov 2026 10:00:00 +0000 (UTC)"),
        ("From", "MAILER-DAEMON@mx.example.net (Mail Delivery System)"),
        ("Subject", "Undelivered Mail Returned to Sender" if action == "failed" else "Delayed Mail (still being retried)"),
        ("To", to),
        ("Auto-Submitted", "auto-replied"),
        ("Message-Id", dsn_id),
    ]:
        report[name] = value
    notice = MIMEText(f"This is the mail system at host mx.example.net.\n\nI'm sorry to have to inform you that your message could not\n"
                      f"be delivered to one or more recipients.\n\n<{recipient}>: host mx.example.com said: ...\n", "plain", "us-ascii")  # fmt: skip
    notice["Content-Description"] = "Notification"
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_message["X-Postfix-Queue-ID"] = "3F1A2B4C5D"
    per_message["X-Postfix-Sender"] = f"rfc822; {sent.sender if sent else to}"
    per_message["Arrival-Date"] = "Mon, 30 Nov 2026 09:59:58 +0000 (UTC)"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Original-Recipient"] = f"rfc822;{recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Remote-MTA"] = "dns; mx.example.com"
    if diagnostic:
        per_recipient["Diagnostic-Code"] = diagnostic.format(rcpt=recipient)
    status_part = Message()
    status_part["Content-Description"] = "Delivery report"
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload([per_message, per_recipient])
    quoted = MIMEText((headers if headers is not None else sent.headers if sent else "Subject: ?") + "\n", "rfc822-headers", "us-ascii")
    quoted["Content-Description"] = "Undelivered Message Headers"
    for part in (notice, status_part, quoted):
        report.attach(part)
    return report.as_bytes()


def to_maildir(path: Path, *messages: bytes) -> list[str]:
    """Deliver ``messages`` into a Maildir's new/ and return their labels (``new/<key>``)."""
    box = mailbox.Maildir(path, create=True)
    keys = [box.add(m) for m in messages]
    box.close()
    return [f"new/{k}" for k in keys]


def to_mbox(path: Path, *messages: bytes) -> None:
    box = mailbox.mbox(path)
    for m in messages:
        box.add(m)
    box.flush()
    box.close()


def _delivery(session, delivery_id: int) -> Delivery:  # type: ignore[no-untyped-def]
    session.expire_all()
    return session.get_one(Delivery, delivery_id)


def _subscriber(session, address: str) -> Subscriber:  # type: ignore[no-untyped-def]
    session.expire_all()
    return session.scalars(select(Subscriber).where(Subscriber.email == address)).one()


def _suppressions(session) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s.email: s.reason for s in session.scalars(select(Suppression))}


# -- VERP -------------------------------------------------------------------------------------------
def test_verp_address_shape_and_round_trip(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("sqlite://")
    address = verp_address(settings, 42)
    local, _, domain = address.rpartition("@")
    assert domain == DOMAIN
    assert local.startswith("bounces+42-") and len(local) == len("bounces+42-") + 16 and len(local) <= 64
    assert set(local) <= set("abcdefghijklmnopqrstuvwxyz0123456789+-")  # RFC 5321 atext, no quoting needed
    assert verp_address(settings, 42) == address  # deterministic
    assert parse_verp(settings, address) == 42
    assert parse_verp(settings, f"<{address}>") == 42
    assert parse_verp(settings, address.upper()) == 42  # survives an MTA folding the local part's case
    assert parse_verp(settings, verp_address(settings, 10**12)) == 10**12
    assert len(verp_address(settings, 10**18).rpartition("@")[0]) <= 64


def test_forged_verp_tokens_are_rejected(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("sqlite://")
    other = make_settings("sqlite://", NEWSLETTER_SECRET_KEY="someone-else")
    mac = verp_address(settings, 42).split("-", 1)[1].split("@")[0]
    flipped = ("b" if mac[0] == "a" else "a") + mac[1:]
    for forged in (
        f"bounces+43-{mac}@{DOMAIN}",  # another delivery with this delivery's signature
        f"bounces+042-{mac}@{DOMAIN}",
        f"bounces+42-{flipped}@{DOMAIN}",
        verp_address(other, 42),  # signed with another secret
        f"bounces+42@{DOMAIN}",
        f"bounces@{DOMAIN}",
        f"weekly@{DOMAIN}",
        "",
    ):
        with pytest.raises(BadToken):
            parse_verp(settings, forged)


def test_soft_bounce_limit_from_environment() -> None:
    assert soft_bounce_limit({}) == 3
    assert soft_bounce_limit({"NEWSLETTER_SOFT_BOUNCE_LIMIT": "5"}) == 5
    assert soft_bounce_limit({"NEWSLETTER_SOFT_BOUNCE_LIMIT": "0"}) == 1  # clamped, with a warning
    with pytest.raises(ValueError, match="NEWSLETTER_SOFT_BOUNCE_LIMIT"):
        soft_bounce_limit({"NEWSLETTER_SOFT_BOUNCE_LIMIT": "many"})


def test_send_batch_uses_the_verp_return_path(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    sent = _publish_and_send(session, settings)
    assert sorted(sent) == ["ann@example.com", "bob@example.com"]
    for s in sent.values():
        assert s.sender == verp_address(settings, s.delivery_id)
        assert parse_verp(settings, s.sender) == s.delivery_id
        assert "From: The Weekly Review <weekly@newsletter.example.org>" in s.headers  # the From header is unchanged


# -- DSN parsing ------------------------------------------------------------------------------------
def test_parse_dsn_reads_postfix_and_encoded_variants() -> None:
    sent = Sent(7, f"bounces+7-aaaaaaaaaaaaaaaa@{DOMAIN}", "Message-ID: <issue1.2.abc@newsletter.example.org>\nSubject: Hi", "")
    dsn = parse_dsn(make_dsn(sent, "ann@example.com", dsn_id="<dsn1@mx.example.net>"))
    assert dsn.dsn_id == "<dsn1@mx.example.net>"
    assert dsn.recipient_addresses == (sent.sender, sent.sender, sent.sender)  # X-Original-To, Delivered-To, To
    assert dsn.original_message_id == "<issue1.2.abc@newsletter.example.org>"
    (rcpt,) = dsn.recipients
    assert (rcpt.final_recipient, rcpt.original_recipient, rcpt.action, rcpt.status, rcpt.kind, rcpt.smtp_code) == (
        "ann@example.com", "ann@example.com", "failed", "5.1.1", "hard", 550)  # fmt: skip
    assert rcpt.diagnostic == "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in virtual mailbox table"

    # The same report with its delivery-status part base64-encoded, and as message/global-delivery-status (RFC 6533).
    fields = b"Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; bob@example.com\nAction: delayed\nStatus: 4.4.1 (timeout)\n"
    for part_headers, body in (
        (b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n", base64.encodebytes(fields)),
        (b"Content-Type: message/global-delivery-status\n", fields),
    ):
        raw = (b"Message-Id: <dsn2@mx.example.net>\nMIME-Version: 1.0\n"
               b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
               b"--b\nContent-Type: text/plain\n\nDelayed.\n--b\n" + part_headers + b"\n" + body + b"\n--b--\n")  # fmt: skip
        (rcpt,) = parse_dsn(raw).recipients
        assert (rcpt.final_recipient, rcpt.action, rcpt.status, rcpt.kind, rcpt.smtp_code) == (
            "bob@example.com",
            "delayed",
            "4.4.1",
            "soft",
            None,
        )


# -- processing -------------------------------------------------------------------------------------
def test_hard_bounce_suppresses_and_marks_the_delivery(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    sent = _publish_and_send(session, settings)
    ann, bob = sent["ann@example.com"], sent["bob@example.com"]
    to_maildir(
        tmp_path / "bounces",
        make_dsn(ann, "ann@example.com", dsn_id="<20261130100000.3F1A2B4C5D@mx.example.net>"),
        make_dsn(bob, "bob@example.com", dsn_id="<20261130100001.77@mx.example.net>", action="relayed", status="2.0.0", diagnostic=None),
    )
    report = process_bounces(session, settings, tmp_path / "bounces")
    assert report == BounceReport(messages=2, hard=1, ignored=1, suppressed=1, deliveries_bounced=1)

    d = _delivery(session, ann.delivery_id)
    assert (d.status, d.last_smtp_code) == (DeliveryStatus.BOUNCED, 550)
    assert d.last_error == "5.1.1 550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
    assert _subscriber(session, "ann@example.com").status == SubscriberStatus.BOUNCED
    assert _suppressions(session) == {"ann@example.com": "hard-bounce"}
    # The relayed report changes nothing for bob.
    assert _delivery(session, bob.delivery_id).status == DeliveryStatus.SENT
    assert (_subscriber(session, "bob@example.com").status, _subscriber(session, "bob@example.com").soft_bounces) == (
        SubscriberStatus.ACTIVE,
        0,
    )
    events = {e.email: (e.kind, e.action, e.status_code, e.delivery_id) for e in session.scalars(select(BounceEvent))}
    assert events == {
        "ann@example.com": ("hard", "failed", "5.1.1", ann.delivery_id),
        "bob@example.com": ("ignored", "relayed", "2.0.0", bob.delivery_id),
    }
    # bounced is a final state: the issue has nothing open and reports it.
    issue_id = d.issue_id
    assert ledger.count_open(session, issue_id) == 0
    assert ledger.counts(session, issue_id) == {("bounced", "en"): 1, ("sent", "en"): 1}


def test_soft_bounces_suppress_only_at_the_limit(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    issues = [_publish_and_send(session, settings)["ann@example.com"] for _ in range(3)]
    box = tmp_path / "bounces.mbox"
    to_mbox(
        box,
        # Issue 1: delayed, and warned about twice by the same MTA: one soft bounce, not two.
        make_dsn(issues[0], "ann@example.com", dsn_id="<d1@mx.example.net>", action="delayed", status="4.4.1",
                 diagnostic="smtp; 421 4.4.1 Connection timed out"),
        make_dsn(issues[0], "ann@example.com", dsn_id="<d2@mx.example.net>", action="delayed", status="4.4.1",
                 diagnostic="smtp; 421 4.4.1 Connection timed out"),
        # Issue 2: given up after the queue lifetime with a class 4 status: soft for the address, but the message bounced.
        make_dsn(issues[1], "ann@example.com", dsn_id="<d3@mx.example.net>", action="failed", status="4.4.7",
                 diagnostic="X-Postfix; delivery temporarily suspended: connect to mx.example.com[192.0.2.1]:25: Connection timed out"),
    )  # fmt: skip
    report = process_bounces(session, settings, box)
    assert report == BounceReport(messages=3, soft=3, deliveries_bounced=1)
    ann = _subscriber(session, "ann@example.com")
    assert (ann.soft_bounces, ann.status) == (2, SubscriberStatus.ACTIVE)
    assert _suppressions(session) == {}
    assert [_delivery(session, s.delivery_id).status for s in issues] == [DeliveryStatus.SENT, DeliveryStatus.BOUNCED, DeliveryStatus.SENT]
    assert _delivery(session, issues[1].delivery_id).last_smtp_code is None  # the diagnostic carries no SMTP reply

    # Issue 3 soft-bounces too: the third soft bounce reaches the limit (default 3) and suppresses.
    to_mbox(box, make_dsn(issues[2], "ann@example.com", dsn_id="<d4@mx.example.net>", action="delayed", status="4.2.2",
                          diagnostic="smtp; 452 4.2.2 Mailbox full"))  # fmt: skip
    report = process_bounces(session, settings, box)
    assert report == BounceReport(messages=4, duplicates=3, soft=1, suppressed=1)
    ann = _subscriber(session, "ann@example.com")
    assert (ann.soft_bounces, ann.status) == (3, SubscriberStatus.BOUNCED)
    assert _suppressions(session) == {"ann@example.com": "soft-bounce"}
    assert session.scalars(select(Suppression.detail)).one() == "3 soft bounces; last: 4.2.2 452 4.2.2 Mailbox full"
    assert _delivery(session, issues[2].delivery_id).status == DeliveryStatus.SENT  # delayed, not (yet) bounced
    assert _subscriber(session, "bob@example.com").soft_bounces == 0


def test_soft_limit_can_be_set(session, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com"])
    ann = _publish_and_send(session, settings)["ann@example.com"]
    to_maildir(tmp_path / "b", make_dsn(ann, "ann@example.com", dsn_id="<s1@mx>", action="delayed", status="4.2.2"))
    monkeypatch.setenv("NEWSLETTER_SOFT_BOUNCE_LIMIT", "1")
    assert process_bounces(session, settings, tmp_path / "b") == BounceReport(messages=1, soft=1, suppressed=1)
    assert _suppressions(session) == {"ann@example.com": "soft-bounce"}


def test_processing_the_same_mailbox_twice_counts_once(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    sent = _publish_and_send(session, settings)
    to_maildir(
        tmp_path / "bounces",
        make_dsn(sent["ann@example.com"], "ann@example.com", dsn_id="<h1@mx.example.net>"),
        make_dsn(sent["bob@example.com"], "bob@example.com", dsn_id="<s1@mx.example.net>", action="delayed", status="4.7.1",
                 diagnostic="smtp; 450 4.7.1 Greylisted, try again later"),
    )  # fmt: skip
    first = process_bounces(session, settings, tmp_path / "bounces")
    assert first == BounceReport(messages=2, hard=1, soft=1, suppressed=1, deliveries_bounced=1)
    second = process_bounces(session, settings, tmp_path / "bounces")
    assert second == BounceReport(messages=2, duplicates=2)
    assert _subscriber(session, "bob@example.com").soft_bounces == 1
    assert _suppressions(session) == {"ann@example.com": "hard-bounce"}
    assert session.scalar(select(func.count()).select_from(BounceEvent)) == 2


def test_forged_verp_token_is_rejected(session, settings: Settings, tmp_path: Path, make_settings: Callable[..., Settings]) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    sent = _publish_and_send(session, settings)
    ann, bob = sent["ann@example.com"], sent["bob@example.com"]
    # ann's real headers (and Message-ID) quoted, but sent to bob's delivery id with ann's signature: forged.
    forged_id = ann.sender.replace(f"+{ann.delivery_id}-", f"+{bob.delivery_id}-")
    other_secret = verp_address(make_settings("sqlite://", NEWSLETTER_SECRET_KEY="attacker"), bob.delivery_id)
    labels = to_maildir(
        tmp_path / "bounces",
        make_dsn(ann, "ann@example.com", dsn_id="<f1@evil.example>", to=forged_id),
        make_dsn(bob, "bob@example.com", dsn_id="<f2@evil.example>", to=other_secret),
    )
    report = process_bounces(session, settings, tmp_path / "bounces")
    assert report == BounceReport(
        messages=2,
        rejected=sorted([Skipped(labels[0], f"bad VERP signature: {forged_id!r}"), Skipped(labels[1], f"bad VERP signature: {other_secret!r}")],
                        key=lambda s: s.key),
    )  # fmt: skip
    assert _suppressions(session) == {}
    assert {_delivery(session, s.delivery_id).status for s in sent.values()} == {DeliveryStatus.SENT}
    assert session.scalar(select(func.count()).select_from(BounceEvent)) == 0


def test_dsn_without_verp_is_matched_by_the_quoted_message_id(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com"])
    ann = _publish_and_send(session, settings)["ann@example.com"]
    stranger = "Message-ID: <issue9.9.0000000000000000@newsletter.example.org>\nSubject: not ours"
    labels = to_maildir(
        tmp_path / "bounces",
        make_dsn(ann, "ann@example.com", dsn_id="<m1@mx>", to=f"bounces@{DOMAIN}"),  # an alias dropped the extension
        make_dsn(None, "zed@example.com", dsn_id="<m2@mx>", headers=stranger),
    )
    report = process_bounces(session, settings, tmp_path / "bounces")
    unmatched = Skipped(labels[1], f"no delivery of ours: recipients bounces@{DOMAIN}, bounces@{DOMAIN}, bounces@{DOMAIN}, "
                                   "Message-ID <issue9.9.0000000000000000@newsletter.example.org>")  # fmt: skip
    assert report == BounceReport(messages=2, hard=1, suppressed=1, deliveries_bounced=1, unmatched=[unmatched])
    assert _delivery(session, ann.delivery_id).status == DeliveryStatus.BOUNCED


def test_non_dsn_messages_are_reported_and_skipped(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com"])
    ann = _publish_and_send(session, settings)["ann@example.com"]
    vacation = (f"From: Ann <ann@example.com>\nTo: {ann.sender}\nSubject: Out of office\nMessage-ID: <ooo@example.com>\n\n"
                "I am on holiday until Monday.\n").encode()  # fmt: skip
    no_status = make_dsn(ann, "ann@example.com", dsn_id="<broken@mx>").replace(b"Status: 5.1.1\n", b"")
    labels = to_maildir(tmp_path / "bounces", vacation, no_status, b"\x00\xff\xfe not a mail message at all",
                        make_dsn(ann, "ann@example.com", dsn_id="<ok@mx>"))  # fmt: skip
    report = process_bounces(session, settings, tmp_path / "bounces")
    expected = {
        labels[0]: "no message/delivery-status or message/feedback-report part (Content-Type: text/plain)",
        labels[1]: "no per-recipient block with Final-Recipient, Action and Status",
        labels[2]: "no message/delivery-status or message/feedback-report part (Content-Type: text/plain)",
    }
    assert {s.key: s.reason for s in report.unparseable} == expected
    assert [s.key for s in report.unparseable] == sorted(expected)
    assert (report.messages, report.hard, report.suppressed, report.rejected, report.unmatched) == (4, 1, 1, [], [])


def test_missing_or_wrong_path_is_an_error(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError):
        process_bounces(session, settings, tmp_path / "nope")
    (tmp_path / "plain-folder").mkdir()
    with pytest.raises(ValueError, match="not a Maildir"):
        process_bounces(session, settings, tmp_path / "plain-folder")
    (tmp_path / "empty.mbox").write_bytes(b"")
    assert process_bounces(session, settings, tmp_path / "empty.mbox") == BounceReport()


def test_migration_downgrade_maps_bounced_back_to_sent(db_url: str, session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    _seed(session, ["ann@example.com"])
    ann = _publish_and_send(session, settings)["ann@example.com"]
    session.execute(text("UPDATE deliveries SET status = 'bounced'"))
    session.commit()
    session.close()
    command.downgrade(alembic_config(db_url), "0001")
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT status FROM deliveries WHERE id = :i"), {"i": ann.delivery_id}).scalar() == "sent"
        assert conn.execute(text("SELECT count(*) FROM subscribers")).scalar() == 1  # kept across the column drop
    upgrade(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT soft_bounces FROM subscribers")).scalar() == 0


# -- command line -----------------------------------------------------------------------------------
def test_bounces_process_command(db_url: str, session, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _seed(session, ["ann@example.com", "bob@example.com"])
    sent = _publish_and_send(session, settings)
    labels = to_maildir(
        tmp_path / "bounces",
        make_dsn(sent["ann@example.com"], "ann@example.com", dsn_id="<c1@mx>"),
        b"Subject: hello\n\nnot a bounce\n",
    )
    env = {"NEWSLETTER_HOME": str(tmp_path / "home"), "DATABASE_URL": db_url, "NEWSLETTER_SECRET_KEY": "test-secret",
           "NEWSLETTER_BASE_URL": "https://news.example.org"}  # fmt: skip
    for key in ("REDIS_URL", "SMTP_URL", "NEWSLETTER_OUTBOX", "NEWSLETTER_FROM", "NEWSLETTER_SOFT_BOUNCE_LIMIT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    for args in (["bounces", "--help"], ["bounces", "process", "--help"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "Usage:" in result.output, result.output

    result = CliRunner().invoke(main, ["bounces", "process", str(tmp_path / "bounces")])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "2 messages: 1 hard, 0 soft, 0 complaints, 0 ignored, 0 already processed, 0 unmatched, 0 rejected, 1 without a delivery report; "
        "1 address suppressed, 1 delivery marked bounced\n"
    )
    assert (
        result.stderr
        == f"not a delivery report: {tmp_path / 'bounces'}: {labels[1]}: no message/delivery-status or message/feedback-report part (Content-Type: text/plain)\n"
    )
    assert _suppressions(session) == {"ann@example.com": "hard-bounce"}

    again = CliRunner().invoke(main, ["bounces", "process", str(tmp_path / "bounces")])
    assert again.exit_code == 0 and "2 messages: 0 hard, 0 soft, 0 complaints, 0 ignored, 1 already processed" in again.stdout

    to_maildir(tmp_path / "one", b"Subject: hello again\n\nnot a bounce either\n")
    one = CliRunner().invoke(main, ["bounces", "process", str(tmp_path / "one")])
    assert one.stdout.startswith("1 message: 0 hard, "), one.stdout  # not "1 messages"

    missing = CliRunner().invoke(main, ["bounces", "process", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "folder").mkdir()
    not_maildir = CliRunner().invoke(main, ["bounces", "process", str(tmp_path / "folder")])
    assert not_maildir.exit_code == 1 and "not a Maildir" in not_maildir.output


def test_old_soft_bounces_fall_out_of_the_window(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy import update as sql_update

    from newsletter.models import BounceEvent, utcnow

    _seed(session, ["ann@example.com"])
    sent = [_publish_and_send(session, settings)["ann@example.com"] for _ in range(3)]
    box = tmp_path / "w.mbox"
    to_mbox(box, *(make_dsn(s, "ann@example.com", dsn_id=f"<w{i}@mx>", action="delayed", status="4.2.2") for i, s in enumerate(sent[:2])))
    assert process_bounces(session, settings, box).soft == 2
    # Those two were a long time ago (past the default 90 days).
    session.execute(sql_update(BounceEvent).values(created_at=utcnow() - timedelta(days=200)))
    session.commit()
    box2 = tmp_path / "w2.mbox"
    to_mbox(box2, make_dsn(sent[2], "ann@example.com", dsn_id="<w9@mx>", action="delayed", status="4.2.2"))
    assert process_bounces(session, settings, box2) == BounceReport(messages=1, soft=1)  # 1 recent of 3: not suppressed
    assert (_subscriber(session, "ann@example.com").soft_bounces, _suppressions(session)) == (3, {})


def make_arf(sent: Sent, *, report_id: str, feedback_type: str = "abuse", rcpt: str | None = None) -> bytes:
    """A feedback-loop report (RFC 5965 ARF, as Yahoo's or Microsoft's JMRP send them) quoting ``sent``'s
    headers; ``rcpt`` the Original-Rcpt-To (left out when None: FBLs often redact it)."""
    report = MIMEMultipart("report", report_type="feedback-report", boundary="arf-boundary-1")
    for name, value in [("From", "feedback@fbl.example.net"), ("To", f"fbl@{DOMAIN}"), ("Subject", "FW: complaint"),
                        ("Message-ID", report_id), ("Date", "Mon, 30 Nov 2026 10:00:00 +0000")]:  # fmt: skip
        report[name] = value
    report.attach(MIMEText("This is an email abuse report for an email message received.\n", "plain", "us-ascii"))
    fields = Message()
    for name, value in [("Feedback-Type", feedback_type), ("User-Agent", "FBL/1.0"), ("Version", "1")]:
        fields[name] = value
    if rcpt is not None:
        fields["Original-Rcpt-To"] = rcpt
    feedback = Message()
    feedback["Content-Type"] = "message/feedback-report"
    feedback.set_payload([fields])
    report.attach(feedback)
    quoted = MIMEText(sent.headers + "\n", "rfc822-headers", "us-ascii")
    report.attach(quoted)
    return report.as_bytes()


def test_feedback_loop_complaints_suppress_and_mark_the_subscriber(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): a spam complaint (RFC 5965 abuse report from a mailbox provider's feedback loop)
    was "not a delivery report": nothing set a subscriber `complained` or suppressed the address, so the
    reader who marked the list as spam kept getting it. Matched by the quoted Message-ID (the recipient is
    often redacted); a not-spam report changes nothing; a second run counts the report once."""
    _seed(session, ["ann@example.com", "bob@example.com", "cy@example.com"])
    sent = _publish_and_send(session, settings)
    to_maildir(
        tmp_path / "fbl",
        make_arf(sent["ann@example.com"], report_id="<arf1@fbl>"),  # redacted recipient
        make_arf(sent["bob@example.com"], report_id="<arf2@fbl>", feedback_type="fraud", rcpt="bob@example.com"),
        make_arf(sent["cy@example.com"], report_id="<arf3@fbl>", feedback_type="not-spam", rcpt="cy@example.com"),
    )
    report = process_bounces(session, settings, tmp_path / "fbl")
    assert report == BounceReport(messages=3, complaints=2, ignored=1, suppressed=2)
    assert _suppressions(session) == {"ann@example.com": "complaint", "bob@example.com": "complaint"}
    assert [_subscriber(session, a).status for a in ("ann@example.com", "bob@example.com", "cy@example.com")] == [
        SubscriberStatus.COMPLAINED,
        SubscriberStatus.COMPLAINED,
        SubscriberStatus.ACTIVE,
    ]
    assert _delivery(session, sent["ann@example.com"].delivery_id).status == DeliveryStatus.SENT  # it was delivered
    assert process_bounces(session, settings, tmp_path / "fbl") == BounceReport(messages=3, duplicates=3)
    assert "ann@example.com" not in _publish_and_send(session, settings)  # the next issue leaves them out
