"""Test sends: an edition mailed to a few editors' addresses before publishing.

A test message goes through the configured mailer (SMTP relay or outbox) like a real one, but it is
marked as a test (``[TEST]`` subject prefix and an ``X-Newsletter-Test: yes`` header), carries a random
Message-ID and the From address as return path, and is never a delivery: the ledger, the issue's counts
and the suppression list are untouched. Each message is logged in ``test_sends``, which also bounds
how many test messages the whole service sends per hour (a stolen token cannot turn it into a spam cannon).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter import dkim
from newsletter.config import Settings
from newsletter.delivery.errors import DeliveryError
from newsletter.delivery.mailers import Mailer, open_mailer
from newsletter.delivery.ratelimit import with_rate_limit
from newsletter.issues import IssueError
from newsletter.mime import Envelope, HeaderInjection, ascii_address, build_message, parse_from, to_bytes
from newsletter.models import Issue, TestSend, utcnow
from newsletter.previews import preview_edition
from newsletter.subscribers import InvalidAddress, normalise_address

SUBJECT_PREFIX = "[TEST] "
TEST_HEADER = "X-Newsletter-Test"
MAX_RECIPIENTS = 10  # per test send
PER_HOUR = 30  # test messages per rolling hour, for the whole service


class TestSendLimited(IssueError):
    """Too many test messages in the last hour; ``retry_after`` is in seconds."""

    __test__ = False

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, "addresses")
        self.retry_after = retry_after


@dataclass
class TestSendResult:
    """What a test send did: the subject as sent, the addresses accepted, and per-address errors."""

    __test__ = False

    subject: str
    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _default_mailer(settings: Settings) -> Mailer:
    mailer = open_mailer(settings.smtp_urls, settings.outbox_dir, settings.smtp_timeout)
    return with_rate_limit(mailer, settings.smtp_urls[0] if settings.smtp_urls else None, settings.redis_url)


def split_addresses(values: Iterable[str]) -> list[str]:
    """Addresses from values that may each hold several, separated by commas or line breaks (a form's text
    area, a repeated or comma-separated ``--to``); blanks dropped. A comma never occurs in an address this
    service accepts (`normalise_address` refuses quoted local parts)."""
    return [a.strip() for value in values for a in value.replace(",", "\n").splitlines() if a.strip()]


def check_addresses(addresses: list[str]) -> list[str]:
    """Normalised, de-duplicated test addresses.

    Raises:
        IssueError: none, more than `MAX_RECIPIENTS`, or an invalid one (field ``addresses``).
    """
    if not addresses:
        raise IssueError("give at least one address to send the test to", "addresses")
    out: list[str] = []
    for raw in addresses:
        try:
            address = normalise_address(raw)
        except InvalidAddress as exc:
            raise IssueError(f"not a valid address: {exc}", "addresses") from exc
        if address not in out:
            out.append(address)
    if len(out) > MAX_RECIPIENTS:
        raise IssueError(f"a test goes to at most {MAX_RECIPIENTS} addresses, got {len(out)}", "addresses")
    return out


def _check_quota(session: Session, wanted: int) -> None:
    since = utcnow() - timedelta(hours=1)
    used, oldest = session.execute(select(func.count(), func.min(TestSend.created_at)).where(TestSend.created_at > since)).one()
    if used + wanted > PER_HOUR:
        retry = int((oldest + timedelta(hours=1) - utcnow()).total_seconds()) + 1 if oldest else 3600
        raise TestSendLimited(f"at most {PER_HOUR} test messages an hour ({used} sent in the last hour); try again later", max(retry, 1))


def send_test(
    session: Session,
    settings: Settings,
    issue: Issue,
    lang: str,
    addresses: list[str],
    sent_by: str,
    mailer: Mailer | None = None,
) -> TestSendResult:
    """Mail edition ``lang`` of ``issue`` to ``addresses`` as a test; commits the log rows.

    Works for an issue in any state (a draft is rendered from its current content). ``sent_by`` names
    who asked (``user:…``, ``token:…``, ``cli``). A relay refusing one address does not stop the others.

    Raises:
        IssueError: bad addresses or no such edition.
        TestSendLimited: the hourly quota would be exceeded (nothing was sent).
        RenderError: the edition does not render.
    """
    recipients = check_addresses(addresses)
    _check_quota(session, len(recipients))
    sender = parse_from(settings.from_address).addr_spec
    link = f"{settings.base_url}/unsubscribe/test-message"
    mailer = mailer or _default_mailer(settings)
    result: TestSendResult | None = None
    try:
        for address in recipients:
            preview = preview_edition(session, settings, issue, lang, email=address, links=link)
            result = result or TestSendResult(SUBJECT_PREFIX + preview.subject)
            envelope = Envelope(
                from_header=settings.from_header(lang),
                to_address=address,
                to_name="",
                subject=result.subject,
                message_id=f"<test.{uuid.uuid4().hex}@{settings.mail_domain}>",
                list_id=settings.list_id,
                unsubscribe_url=link,
                lang=lang,
            )
            error = None
            try:
                message = build_message(envelope, preview.text, preview.html)
                message[TEST_HEADER] = "yes"
                mailer.send(sender, ascii_address(address), dkim.signed(to_bytes(message), settings.dkim))  # as readers get it
                result.sent.append(address)
            except (DeliveryError, HeaderInjection) as exc:
                error = str(exc)
                result.failed[address] = error
            session.add(TestSend(issue_id=issue.id, lang=lang, email=address, sent_by=sent_by[:160], error=error))
            session.commit()
    finally:
        mailer.close()
    assert result is not None  # recipients is never empty
    return result
