"""The relay circuit breaker: a relay's "no such user" counts against an address only while that relay
shows that it accepts mail.

A relay that answers ``550 5.1.1`` to every recipient (wrong credentials mapped to a restricted domain,
recipient verification broken, a misconfigured smarthost) says nothing about the recipients: taking its
word would suppress the whole list. So a dead-address refusal (`suppressions.DEAD_ADDRESS_CODES`) is
recorded at once (the delivery is ``failed`` with the relay's reply, as any permanent failure), but the
address is suppressed only when the same relay accepted more of the issue's messages than it refused as
unknown (`vouches`). Otherwise the delivery is *held*: failed, its address left unsuppressed, decided when
the issue finishes (`settle_held`), sent again by `issue resume`, `issue requeue` or publishing a failed
issue again (`reopen_held`).

A held delivery is not a state of its own (no migration): it is a failed delivery whose recorded reply
carries a dead-address code and whose address has no suppression.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, literal, select, update
from sqlalchemy.orm import Session

from newsletter import logs
from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.suppressions import is_dead_address, mark_bounced, suppress

log = logging.getLogger(__name__)

# ``last_error`` as `ledger.mark_failed` writes a relay's reply: "550 5.1.1 <x>: user unknown" (the basic
# code, then the RFC 3463 enhanced code that opens the reply text, see `errors.classify_reply`).
_RECORDED_CODE = re.compile(r"^(?:\d{3} )?([245]\.\d{1,3}\.\d{1,3})\b")
_PERMANENT = (Delivery.last_smtp_code >= 500, Delivery.last_smtp_code < 600)
ACCEPTED_STATES = (DeliveryStatus.SENT, DeliveryStatus.BOUNCED)  # the relay took the message (a DSN came later)


def recorded_code(last_error: str | None) -> str | None:
    """The RFC 3463 enhanced code of a recorded relay reply (``"550 5.1.1 …"`` -> ``"5.1.1"``), else None."""
    match = _RECORDED_CODE.match(last_error or "")
    return match.group(1) if match else None


def refused_as_unknown(last_error: str | None) -> bool:
    """Whether a recorded failure is a dead-address refusal (RFC 3463 §3.2, `suppressions.is_dead_address`)."""
    return is_dead_address(recorded_code(last_error))


def vouches(accepted: int, refused_unknown: int) -> bool:
    """Whether a relay's dead-address refusals may be taken as the addresses' own: it accepted messages of
    the issue, and the addresses it refused as unknown are a minority of those it was given (fewer than
    it accepted). A relay that accepted nothing (or refuses as many as it takes) is refusing everyone."""
    return accepted > refused_unknown


@dataclass
class RelayTally:
    """One relay's final outcomes for one issue: messages it ``accepted`` (sent or later bounced),
    permanent failures (``failed``), those refused as unknown (``refused_unknown``), of which ``held``
    are not suppressed, and the latest such reply (``last``)."""

    relay: str
    accepted: int = 0
    failed: int = 0
    refused_unknown: int = 0
    held: int = 0
    last: str = ""

    @property
    def attempted(self) -> int:
        """Recipients this relay gave a final answer for."""
        return self.accepted + self.failed

    @property
    def vouches(self) -> bool:
        """See `vouches`."""
        return vouches(self.accepted, self.refused_unknown)

    def refused_line(self) -> str:
        """``relay R refused N of M recipients as unknown (last reply) and accepted A``."""
        return (
            f"relay {self.relay} refused {self.refused_unknown} of {self.attempted} recipients as unknown ({self.last}) "
            f"and accepted {self.accepted}"
        )


def relay_vouches_now(session: Session, issue_id: int, relay: str) -> bool:
    """`vouches` for ``relay`` on the issue's deliveries as recorded now (the refusal in hand included).

    Cheap enough for every dead-address refusal: the failed rows of the issue on that relay (few while the
    relay vouches; a relay that refuses everyone is paused after a few, `sweeper.pause_if_failing`), and
    at most one accepted row more than the refusals (a LIMIT, not a count of the whole issue).
    """
    errors = session.scalars(
        select(Delivery.last_error).where(
            Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED, Delivery.relay == relay, *_PERMANENT
        )
    ).all()
    refused = sum(1 for e in errors if refused_as_unknown(e))
    some_accepted = (
        select(literal(1))
        .where(Delivery.issue_id == issue_id, Delivery.status.in_(ACCEPTED_STATES), Delivery.relay == relay)
        .limit(refused + 1)
        .subquery()
    )
    accepted = session.scalar(select(func.count()).select_from(some_accepted)) or 0
    return vouches(accepted, refused)


def _held_rows(session: Session, issue_id: int) -> list[Any]:
    rows = session.execute(
        select(Delivery.id, Delivery.subscriber_id, Delivery.email, Delivery.relay, Delivery.last_error)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.FAILED,
            *_PERMANENT,
            ~exists().where(Suppression.email == Delivery.email),
        )
        .order_by(Delivery.id)
    ).all()
    return [r for r in rows if refused_as_unknown(r.last_error)]


def held_count(session: Session, issue_id: int) -> int:
    """The issue's held deliveries: failed as unknown addresses by a relay that did not vouch, unsuppressed."""
    return len(_held_rows(session, issue_id))


def tallies(session: Session, issue_id: int) -> dict[str, RelayTally]:
    """`RelayTally` per relay of the issue (relays that gave at least one final answer)."""
    out: dict[str, RelayTally] = {}
    for relay, status, n in session.execute(
        select(Delivery.relay, Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id, Delivery.relay.is_not(None), Delivery.status.in_([*ACCEPTED_STATES, DeliveryStatus.FAILED]))
        .group_by(Delivery.relay, Delivery.status)
    ):
        tally = out.setdefault(relay, RelayTally(relay))
        if status == DeliveryStatus.FAILED:
            tally.failed += n
        else:
            tally.accepted += n
    suppressed = exists().where(Suppression.email == Delivery.email)
    for relay, last_error, is_suppressed in session.execute(
        select(Delivery.relay, Delivery.last_error, suppressed)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED, Delivery.relay.is_not(None), *_PERMANENT)
        .order_by(Delivery.updated_at)
    ):
        if refused_as_unknown(last_error):
            tally = out[relay]
            tally.refused_unknown += 1
            tally.held += 0 if is_suppressed else 1
            tally.last = last_error
    return out


def settle_held(session: Session, issue_id: int) -> list[RelayTally]:
    """Decide the issue's held deliveries once every delivery is final: on a relay that vouches (see
    `vouches`, over the whole issue now) each held address is suppressed (``hard-bounce``) and its
    subscriber marked bounced, as it would have been at once; on one that does not, nothing is
    suppressed. Does not commit. Returns the tallies of the relays whose held deliveries stay held."""
    held = _held_rows(session, issue_id)
    if not held:
        return []
    by_relay = tallies(session, issue_id)
    kept: dict[str, RelayTally] = {}
    for row in held:
        tally = by_relay[row.relay]
        if tally.vouches:
            suppress(session, row.email, "hard-bounce", f"{row.relay}: {row.last_error}")
            mark_bounced(session, row.subscriber_id, row.email)
        else:
            kept[row.relay] = tally
    if settled := len(held) - sum(t.held for t in kept.values()):
        log.info(
            "%s: %s held dead addresses suppressed at the end of the issue",
            logs.issue_name(session, issue_id),
            settled,
            extra={"issue_id": issue_id},
        )
    return list(kept.values())


def reopen_held(session: Session, issue_id: int, enqueued_at: datetime | None) -> list[int]:
    """Make the issue's held deliveries pending again with their attempts reset (the relay, not the
    address, refused them; `issue resume` and publishing a failed issue again send them). ``enqueued_at``:
    when the caller hands them to the send queue (None: the sweeper enqueues them). Does not commit.
    Returns their ids in id order."""
    ids = [r.id for r in _held_rows(session, issue_id)]
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.status == DeliveryStatus.FAILED)
            .values(
                status=DeliveryStatus.PENDING,
                attempts=0,
                first_attempt_at=None,
                next_attempt_at=None,
                enqueued_at=enqueued_at,
                updated_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
    return ids


def held_message(kept: list[RelayTally], number: int, command: str) -> str:
    """One line for ``Issue.error``: which relay refused how many as unknown, how many of those are held
    (not suppressed) and how many it got suppressed while it still accepted mail (a relay that turned bad
    mid-issue: `issue unsuppress` releases them, before a requeue changes the tally), and the command
    (``resume``, ``requeue``) that sends the held deliveries again."""
    held = sum(t.held for t in kept)
    suppressed = sum(t.refused_unknown - t.held for t in kept)
    lines = "; ".join(t.refused_line() for t in kept)
    if not suppressed:
        return (
            f"{lines}: no address was suppressed ({held} held), since a relay that refuses everyone says nothing about "
            f"the addresses; check the relay (credentials, recipient verification), then "
            f"'newsletter issue {command} {number}' sends them again"
        )
    return (
        f"{lines}: {held} held (not suppressed) and {suppressed} suppressed while the relay still accepted mail; "
        f"check the relay (credentials, recipient verification); if it was at fault, first "
        f"'newsletter issue unsuppress {number}' releases the {suppressed}, then 'newsletter issue {command} {number}' "
        f"sends them all again"
    )


def release_unvouched(session: Session, issue_id: int, *, any_relay: bool = False) -> list[str]:
    """Undo the suppressions the issue's refusals made on the word of a relay that does not vouch by the
    issue's final tally (it refused as many as it accepted, or more): the way back for a list a relay
    that refused everyone got suppressed (before this breaker, or while the relay turned bad). Only a
    suppression made from that very refusal goes (reason ``hard-bounce``, detail ``"<relay>: <reply>"``
    as `send` writes it), never one from a DSN, a complaint or an unsubscription; its subscriber, if
    still ``bounced`` at that address, is ``active`` again. With ``any_relay`` the editor vouches instead: the
    refusals of every relay of the issue are released whatever its tally (a relay that turned bad after
    accepting most of the list, or one whose tally a requeue changed). A dead address is refused again on
    the next send. Does not commit. Returns the addresses released.
    """
    released = []
    for r in _relay_suppressions(session, issue_id, any_relay):
        session.execute(delete(Suppression).where(Suppression.email == r.email))
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == r.subscriber_id, Subscriber.email == r.email, Subscriber.status == SubscriberStatus.BOUNCED)
            .values(status=SubscriberStatus.ACTIVE)
            .execution_options(synchronize_session=False)
        )
        released.append(r.email)
    return released


def relay_suppressed_count(session: Session, issue_id: int) -> int:
    """How many of the issue's failed deliveries are suppressed on a relay's own "no such user" in this
    issue (what ``release_unvouched(any_relay=True)`` would release); reads only."""
    return len(_relay_suppressions(session, issue_id, any_relay=True))


def _relay_suppressions(session: Session, issue_id: int, any_relay: bool) -> list[Any]:
    relays = {relay for relay, tally in tallies(session, issue_id).items() if any_relay or not tally.vouches}
    if not relays:
        return []
    rows = session.execute(
        select(Delivery.subscriber_id, Delivery.email, Delivery.relay, Delivery.last_error, Suppression.detail)
        .join(Suppression, Suppression.email == Delivery.email)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.relay.in_(relays),
            *_PERMANENT,
            Suppression.reason == "hard-bounce",
        )
        .order_by(Delivery.id)
    ).all()
    return [r for r in rows if refused_as_unknown(r.last_error) and r.detail == f"{r.relay}: {r.last_error}"[:2000]]
