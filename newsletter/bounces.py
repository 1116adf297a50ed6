"""Bounces: a signed VERP return path per delivery, and reading delivery status notifications (RFC 3464).

Every message goes out with the envelope sender (RFC 5321 §4.1.1.2 ``MAIL FROM``, which the receiving side
turns into ``Return-Path``) ``bounces+<delivery id>-<signature>@<mail domain>``. A DSN comes back to that
address, so the delivery is known without trusting anything in the DSN's body; a DSN whose return address
lost its local part is matched by the original Message-ID it quotes instead.

A hard bounce (``Action: failed`` with an RFC 3463 class 5 status) suppresses the address at once. A soft
bounce (``Action: delayed``, or a class 4 status) adds one to the subscriber's ``soft_bounces``, at most
once per delivery (an MTA that warns after 4 hours and gives up after 5 days reports one message twice);
at ``NEWSLETTER_SOFT_BOUNCE_LIMIT`` (default 3) the address is suppressed as well. Whenever the action is
``failed`` the delivery itself moves ``sent -> bounced``: the message was not delivered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mailbox
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import distinct, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.config import Settings, _int
from newsletter.dsn import COMPLAINT, HARD, IGNORED, SOFT, Dsn, NotADsn, parse_dsn
from newsletter.models import BounceEvent, Delivery, DeliveryStatus, Subscriber, utcnow
from newsletter.suppressions import mark_bounced, mark_complained, suppress
from newsletter.tokens import BadToken

VERP_PREFIX = "bounces+"
DEFAULT_SOFT_BOUNCE_LIMIT = 3

_VERP_RE = re.compile(r"bounces\+(0|[1-9][0-9]{0,18})-([a-z2-7]{16})", re.IGNORECASE)


# -- VERP -------------------------------------------------------------------------------------------
def _verp_mac(secret: str, delivery_id: int) -> str:
    # base32, lower-cased: MTAs may fold the case of a local part (Postfix does for local delivery) although
    # RFC 5321 §2.4 makes it case-sensitive, so the signature must survive that; base64 would not.
    digest = hmac.new(secret.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256).digest()[:10]
    return base64.b32encode(digest).decode("ascii").lower()


def verp_address(settings: Settings, delivery_id: int) -> str:
    """The envelope sender for one delivery: ``bounces+<id>-<mac>@<settings.mail_domain>``.

    The mac is the first 80 bits of HMAC-SHA256 (RFC 2104) over ``verp:<id>`` with ``settings.secret_key``,
    in lower-case base32. The local part is a Dot-string of atext only (RFC 5321 §4.1.2) and at most 44
    octets, well inside the 64 of RFC 5321 §4.5.3.1.1, so no relay needs to quote or truncate it.
    """
    return f"{VERP_PREFIX}{delivery_id}-{_verp_mac(settings.secret_key, delivery_id)}@{settings.mail_domain}"


def is_verp_address(address: str) -> bool:
    """True if ``address`` has our VERP local-part prefix (case-insensitive), signed correctly or not."""
    return address.strip().strip("<>").lower().startswith(VERP_PREFIX)


def parse_verp(settings: Settings, address: str) -> int:
    """The delivery id a VERP address made by `verp_address` stands for.

    The domain is not checked (a bounce may arrive through an alias domain); the signature is, and it
    is compared case-insensitively for the reason given in `verp_address`. Every key of
    ``settings.secret_keys`` is tried, so a bounce to a message sent before a key rotation still matches.

    Raises:
        BadToken: not a VERP address, or its signature was made with none of ``settings.secret_keys``.
    """
    local = address.strip().strip("<>").rpartition("@")[0]
    match = _VERP_RE.fullmatch(local)
    if match is None:
        raise BadToken(f"not a VERP address: {address!r}")
    delivery_id = int(match.group(1))
    if not any(hmac.compare_digest(match.group(2).lower(), _verp_mac(key, delivery_id)) for key in settings.secret_keys):
        raise BadToken(f"bad VERP signature: {address!r}")
    return delivery_id


def soft_bounce_window(env: Mapping[str, str] | None = None) -> timedelta:
    """``NEWSLETTER_SOFT_BOUNCE_DAYS`` (default 90, clamped to [1, 3650]): only soft bounces this recent
    count towards the limit, so a mailbox that was full once a year ago is not held against it
    (Mailman lets bounce scores go stale the same way)."""
    return timedelta(days=_int(dict(os.environ if env is None else env), "NEWSLETTER_SOFT_BOUNCE_DAYS", 90, 1, 3650))


def soft_bounce_limit(env: Mapping[str, str] | None = None) -> int:
    """``NEWSLETTER_SOFT_BOUNCE_LIMIT`` from ``env`` (default: ``os.environ``), clamped to [1, 100]; default 3."""
    return _int(dict(os.environ if env is None else env), "NEWSLETTER_SOFT_BOUNCE_LIMIT", DEFAULT_SOFT_BOUNCE_LIMIT, 1, 100)


# -- processing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    """A message left alone, named by its place in the mailbox (Maildir file name, or mbox position)."""

    key: str
    reason: str


@dataclass
class BounceReport:
    """Counts of one `process_bounces` run. Each message read lands in exactly one of: hard, soft,
    ignored, complaints, duplicates, unmatched, rejected, unparseable; ``suppressed`` and
    ``deliveries_bounced`` count effects of the hard, soft and complaint ones."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    ignored: int = 0  # success reports (delivered, relayed, expanded), feedback reports that are no complaint
    complaints: int = 0  # RFC 5965 abuse/fraud reports: the address is suppressed, the subscriber ``complained``
    duplicates: int = 0  # processed by an earlier run
    suppressed: int = 0  # addresses newly suppressed
    deliveries_bounced: int = 0  # deliveries moved sent -> bounced
    unmatched: list[Skipped] = field(default_factory=list)  # a DSN, but for no delivery of ours
    rejected: list[Skipped] = field(default_factory=list)  # a VERP address with a bad signature
    unparseable: list[Skipped] = field(default_factory=list)


def open_mailbox(path: Path) -> mailbox.Mailbox:
    """A Maildir (a folder with ``cur/``, ``new/``, ``tmp/``) or an mbox file, opened for reading.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder that is not a Maildir.
    """
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise ValueError(f"{path} is a folder but not a Maildir (needs cur/, new/ and tmp/)")
        return mailbox.Maildir(path, factory=None, create=False)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Maildir folder or mbox file")
    return mailbox.mbox(path, factory=None, create=False)


def _messages(box: mailbox.Mailbox) -> Iterator[tuple[str, bytes | OSError | KeyError]]:
    """``(label, raw bytes)`` per message in key order; a message that vanished or cannot be read is the error."""
    for key in sorted(box.iterkeys()):
        if isinstance(box, mailbox.Maildir):
            try:
                stored = box.get_message(key)
                label = f"{stored.get_subdir()}/{key}" + (f"{box.colon}{stored.get_info()}" if stored.get_info() else "")
            except (OSError, KeyError):
                label = str(key)
        else:
            label = f"message {key + 1}"  # 1-based, as mail readers number an mbox
        try:
            yield label, box.get_bytes(key)
        except (OSError, KeyError) as exc:
            yield label, exc


def _find_delivery(session: Session, settings: Settings, dsn: Dsn) -> tuple[Delivery | None, str | None]:
    """The delivery a DSN is about and, if it must be rejected, why. A signed VERP address wins; a VERP
    address with a bad signature rejects the DSN (it is forged, or mangled past trusting); without one,
    the quoted original Message-ID is looked up."""
    bad: list[str] = []
    for address in dsn.recipient_addresses:
        if not is_verp_address(address):
            continue
        try:
            return session.get(Delivery, parse_verp(settings, address)), None
        except BadToken as exc:
            bad.append(str(exc))
    if bad:
        return None, bad[0]
    if dsn.original_message_id:
        return session.scalar(select(Delivery).where(Delivery.message_id == dsn.original_message_id).limit(1)), None
    return None, None


def _apply(session: Session, dsn: Dsn, delivery: Delivery, soft_limit: int, report: BounceReport) -> None:
    """Record one DSN about ``delivery`` and act on it, in one transaction; commits."""
    mine = delivery.email.casefold()
    own = [r for r in dsn.recipients if mine in (r.final_recipient.casefold(), (r.original_recipient or "").casefold())]
    # Forwarding may change the final recipient: then every block is about our message.
    chosen = own or list(dsn.recipients)
    worst = next(r for kind in (COMPLAINT, HARD, SOFT, IGNORED) for r in chosen if r.kind == kind)
    detail = f"{worst.status} {worst.diagnostic or worst.action}".strip()
    seen_before = session.scalar(
        select(BounceEvent.id).where(BounceEvent.delivery_id == delivery.id, BounceEvent.kind.in_([HARD, SOFT])).limit(1)
    )
    session.add(
        BounceEvent(
            dsn_id=dsn.dsn_id, delivery_id=delivery.id, subscriber_id=delivery.subscriber_id, email=delivery.email,
            kind=worst.kind, action=worst.action[:16], status_code=worst.status, diagnostic=worst.diagnostic,
        )
    )  # fmt: skip
    session.flush()  # a concurrent run that took this DSN first makes this raise IntegrityError
    suppress_reason = None
    if worst.kind == COMPLAINT:
        # A reader who marked the message as spam: never mail them again (the delivery itself went out).
        report.complaints += 1
        report.suppressed += suppress(session, delivery.email, "complaint", detail)
        mark_complained(session, delivery.subscriber_id, delivery.email)
    elif worst.kind == HARD:
        report.hard += 1
        suppress_reason = "hard-bounce"
    elif worst.kind == SOFT:
        report.soft += 1
        if seen_before is None:
            session.execute(  # the lifetime tally shown to people
                update(Subscriber)
                .where(Subscriber.id == delivery.subscriber_id)
                .values(soft_bounces=Subscriber.soft_bounces + 1)
                .execution_options(synchronize_session=False)
            )
            # What decides: deliveries that soft-bounced within the window (this one included).
            count = session.scalar(
                select(func.count(distinct(BounceEvent.delivery_id))).where(
                    BounceEvent.subscriber_id == delivery.subscriber_id,
                    BounceEvent.kind == SOFT,
                    BounceEvent.created_at >= utcnow() - soft_bounce_window(),
                )
            )
            if count is not None and count >= soft_limit:
                suppress_reason, detail = "soft-bounce", f"{count} soft bounces; last: {detail}"
    else:
        report.ignored += 1
    if suppress_reason:
        report.suppressed += suppress(session, delivery.email, suppress_reason, detail)
        mark_bounced(session, delivery.subscriber_id, delivery.email)
    if worst.action == "failed":
        result = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status == DeliveryStatus.SENT)
            .values(status=DeliveryStatus.BOUNCED, last_error=detail[:2000], last_smtp_code=worst.smtp_code, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        report.deliveries_bounced += result.rowcount  # type: ignore[attr-defined]
    session.commit()


def process_bounces(session: Session, settings: Settings, path: Path, *, soft_limit: int | None = None) -> BounceReport:
    """Read every message in the Maildir folder or mbox file at ``path`` and act on the DSNs among them.

    One transaction per message. Reading the same mailbox again is safe: a DSN whose Message-ID was
    processed before counts as a duplicate and changes nothing. The mailbox is only read, never changed.
    Messages that are not DSNs, or are for no delivery of ours, or carry a forged VERP address, are
    listed in the report with their key and skipped (so a person can look); they never stop the run.
    ``soft_limit`` defaults to `soft_bounce_limit`.

    Raises:
        FileNotFoundError, ValueError: see `open_mailbox`.
    """
    limit = soft_bounce_limit() if soft_limit is None else soft_limit
    report = BounceReport()
    box = open_mailbox(path)
    try:
        for label, raw in _messages(box):
            report.messages += 1
            if isinstance(raw, Exception):
                report.unparseable.append(Skipped(label, f"cannot read: {raw}"))
                continue
            try:
                dsn = parse_dsn(raw)
            except NotADsn as exc:
                report.unparseable.append(Skipped(label, str(exc)))
                continue
            except Exception as exc:  # the email package on hostile input: report, never stop the run
                report.unparseable.append(Skipped(label, f"{type(exc).__name__}: {exc}"))
                continue
            if session.scalar(select(BounceEvent.id).where(BounceEvent.dsn_id == dsn.dsn_id)) is not None:
                report.duplicates += 1
                continue
            delivery, why = _find_delivery(session, settings, dsn)
            if why is not None:
                report.rejected.append(Skipped(label, why))
            elif delivery is None:
                wanted = f"recipients {', '.join(dsn.recipient_addresses) or '(none)'}, Message-ID {dsn.original_message_id or '(none)'}"
                report.unmatched.append(Skipped(label, f"no delivery of ours: {wanted}"))
            else:
                try:
                    _apply(session, dsn, delivery, limit, report)
                except IntegrityError:
                    session.rollback()
                    report.duplicates += 1
    finally:
        session.rollback()
        box.close()
    return report
