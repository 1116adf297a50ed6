"""The relay circuit breaker against a real SMTP server (aiosmtpd) on SQLite and PostgreSQL: a relay that
answers 550 5.1.1 to everyone suppresses nobody, and a normal relay's few dead addresses are suppressed.
Messages are counted at the receiving server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select

from newsletter import control, publishing
from newsletter.config import Settings
from newsletter.delivery import breaker
from newsletter.delivery.mailers import SmtpMailer
from newsletter.delivery.pool import ConnectionPool, LocalSlots
from newsletter.delivery.send import send_batch
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression, utcnow
from newsletter.suppressions import mark_bounced, suppress
from tests.smtp_server import SMTPServer

N = 20


def address(i: int) -> str:
    return f"reader{i:02d}@example.org"


class Batches:
    """An ``enqueue`` that keeps the batches for the test to send."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, issue_id: int, ids: list[int]) -> None:
        self.calls.append(list(ids))


def _publish(session, settings: Settings) -> tuple[int, Batches]:  # type: ignore[no-untyped-def]
    """An issue of one article to ``N`` active subscribers, planned; returns its id and its batches."""
    session.add(
        Article(external_id="e1", title="Grid security rules tightened", summary="Rules.", body_html="<p>Patch within 30 days.</p>",
                body_text="Utilities must patch control systems within 30 days.", lang="en", published_at=datetime(2026, 11, 16, tzinfo=UTC))
    )  # fmt: skip
    session.execute(insert(Subscriber), [{"email": address(i), "name": f"R{i}", "lang": "en", "topics": [], "attributes": {},
                                          "status": "active", "created_at": utcnow()} for i in range(N)])  # fmt: skip
    session.commit()
    issue = create_issue(session, list(session.scalars(select(Article))))
    session.commit()
    publishing.request_publish(session, settings, issue)
    publishing.render_editions(session, settings, issue.id)
    batches = Batches()
    publishing.plan_deliveries(session, settings, issue.id, batches)
    return issue.id, batches


def _send(session, settings: Settings, issue_id: int, batches: list[list[int]], url: str) -> None:  # type: ignore[no-untyped-def]
    for ids in batches:
        send_batch(session, settings, issue_id, ids, lambda: SmtpMailer(url, timeout=10))
    publishing.finish_if_done(session, issue_id)


def _issue(session, issue_id: int) -> Issue:  # type: ignore[no-untyped-def]
    session.expire_all()
    return session.get_one(Issue, issue_id)


def _suppressed(session) -> set[str]:  # type: ignore[no-untyped-def]
    return set(session.scalars(select(Suppression.email)))


def _bounced(session) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).where(Subscriber.status == SubscriberStatus.BOUNCED)) or 0


class Relay:
    """RCPT faults: 550 5.1.1 to everyone while ``broken``, else only to ``dead`` addresses."""

    def __init__(self, dead: set[str] = frozenset(), broken: bool = False) -> None:  # type: ignore[assignment]
        self.dead, self.broken = set(dead), broken

    def __call__(self, rcpt: str, attempt: int) -> str | None:
        if self.broken or rcpt in self.dead:
            return f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"
        return None


def test_a_relay_refusing_everyone_as_unknown_suppresses_nobody_and_pauses(
    session, db_url: str, make_settings: Callable[..., Settings]
) -> None:  # type: ignore[no-untyped-def]
    """Regression: a relay answering 550 5.1.1 to every recipient suppressed (and marked bounced) every
    address of a small list, and the auto-pause (50 failures) never fired under 50. Now the first 5
    refusals pause the issue, nothing is suppressed, and once the relay is fixed `resume` sends all 20,
    the held five included, each once."""
    settings = make_settings(db_url)  # the defaults: batches of 100, pause after the first 5, or 50
    issue_id, batches = _publish(session, settings)
    relay = Relay(broken=True)
    with SMTPServer(rcpt_fault=relay) as smtp:
        _send(session, settings, issue_id, batches.calls, smtp.url)
        issue = _issue(session, issue_id)
        assert issue.status == IssueStatus.PAUSED
        assert sum(smtp.recorder.attempts.values()) == 5 and smtp.recorder.messages == []  # the relay saw 5 recipients
        assert _suppressed(session) == set() and _bounced(session) == 0
        assert issue.error == (
            f"auto-paused: relay 127.0.0.1:{smtp.port} refused the first 5 recipients and accepted none (last error: 550 5.1.1 "
            f"<{address(4)}>: Recipient address rejected: User unknown in virtual mailbox table); no address was suppressed: "
            "those refused as unknown are held; check the relay (credentials, recipient verification), then "
            f"'newsletter issue resume {issue.number}' sends the held ones and the rest"
        )
        failed = session.scalars(select(Delivery.email).where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED))
        assert sorted(failed) == [address(i) for i in range(5)]  # the per-delivery outcome is recorded as before
        assert breaker.held_count(session, issue_id) == 5

        relay.broken = False  # the operator fixed the relay
        again = Batches()
        control.resume_issue(session, settings, issue, again)
        assert sorted(i for ids in again.calls for i in ids) == sorted(i for ids in batches.calls for i in ids)  # all 20
        _send(session, settings, issue_id, again.calls, smtp.url)
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}
    issue = _issue(session, issue_id)
    assert (issue.status, issue.error) == (IssueStatus.SENT, None)
    assert _suppressed(session) == set() and _bounced(session) == 0


def test_without_the_pause_the_issue_fails_saying_nothing_was_suppressed_and_publishing_again_sends_it(
    session, db_url: str, make_settings: Callable[..., Settings]
) -> None:  # type: ignore[no-untyped-def]
    """With the first-failures rule off, all 20 are refused: the issue ends failed with one line naming
    the relay, 20 of 20 refused as unknown, nothing suppressed, and what to do; publishing it again once
    the relay is fixed sends the 20 held deliveries (each once at the server)."""
    settings = make_settings(db_url, NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES="0", NEWSLETTER_BATCH_SIZE="7")
    issue_id, batches = _publish(session, settings)
    relay = Relay(broken=True)
    with SMTPServer(rcpt_fault=relay) as smtp:
        _send(session, settings, issue_id, batches.calls, smtp.url)
        issue = _issue(session, issue_id)
        assert issue.status == IssueStatus.FAILED
        assert issue.error == (
            f"every delivery failed ({N}): relay 127.0.0.1:{smtp.port} refused {N} of {N} recipients as unknown (550 5.1.1 "
            f"<{address(N - 1)}>: Recipient address rejected: User unknown in virtual mailbox table) and accepted 0: no address "
            f"was suppressed ({N} held), since a relay that refuses everyone says nothing about the addresses; check the relay "
            f"(credentials, recipient verification), then 'newsletter issue requeue {issue.number}' sends them again"
        )
        assert _suppressed(session) == set() and _bounced(session) == 0

        relay.broken = False
        publishing.request_publish(session, settings, issue)  # "fix the cause, then publish again"
        due = Batches()
        publishing.render_editions(session, settings, issue_id, due)  # this run's rendering: hands over the 20 held
        publishing.plan_deliveries(session, settings, issue_id, due)  # plans nothing new, hands over nothing twice
        assert sum(len(ids) for ids in due.calls) == N
        _send(session, settings, issue_id, due.calls, smtp.url)
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}
    assert _issue(session, issue_id).status == IssueStatus.SENT
    assert _suppressed(session) == set()


def test_a_normal_relay_rejecting_two_of_twenty_as_unknown_suppresses_exactly_those(
    session, db_url: str, make_settings: Callable[..., Settings]
) -> None:  # type: ignore[no-untyped-def]
    """No regression for a list with a few dead addresses: reader00 (refused before the relay accepted
    anything: held, then suppressed when the issue ends) and reader10 (refused after the relay accepted nine:
    suppressed at once, the relay having accepted nine) are suppressed and marked bounced; the other 18 arrive once; the issue is sent."""
    settings = make_settings(db_url)
    issue_id, batches = _publish(session, settings)
    dead = {address(0), address(10)}
    with SMTPServer(rcpt_fault=Relay(dead)) as smtp:
        for ids in batches.calls:
            send_batch(session, settings, issue_id, ids, lambda: SmtpMailer(smtp.url, timeout=10))
        assert _suppressed(session) == {address(10)}  # at once: the relay had accepted nine
        assert breaker.held_count(session, issue_id) == 1
        publishing.finish_if_done(session, issue_id)
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N) if address(i) not in dead}
    issue = _issue(session, issue_id)
    assert (issue.status, issue.error) == (IssueStatus.SENT, None)
    assert _suppressed(session) == dead
    assert set(session.scalars(select(Subscriber.email).where(Subscriber.status == SubscriberStatus.BOUNCED))) == dead
    rows = {d.email: d for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue_id))}
    assert {e for e, d in rows.items() if d.status == DeliveryStatus.FAILED} == dead
    assert all(rows[e].last_error.startswith("550 5.1.1") and rows[e].last_smtp_code == 550 for e in dead)
    assert breaker.held_count(session, issue_id) == 0
    reasons = set(session.scalars(select(Suppression.reason)))
    assert reasons == {"hard-bounce"}


def test_vouching_rule() -> None:
    """A relay's unknown-address refusals count only when it accepted more than it refused so."""
    assert not breaker.vouches(0, 1) and not breaker.vouches(0, 0)
    assert not breaker.vouches(2, 2) and breaker.vouches(3, 2) and breaker.vouches(18, 2)
    assert breaker.recorded_code("550 5.1.1 <a@b>: unknown") == "5.1.1"
    assert breaker.recorded_code("gave up after 8 attempts: 451 4.3.0 busy") is None
    assert breaker.refused_as_unknown("550 5.1.10 null MX") and not breaker.refused_as_unknown("554 5.7.1 denied")


@pytest.mark.parametrize("connections", [1, 3])
def test_the_breaker_pauses_a_pooled_batch_too(session, db_url: str, make_settings: Callable[..., Settings], connections: int) -> None:  # type: ignore[no-untyped-def]
    """The same rule on a process's connection pool: one pooled connection (the pipelined sender) and
    three sender threads (`?connections=3`): the batch stops within a few messages of the fifth refusal
    (measured: 5 and 12 of 20 recipients tried),
    nothing is suppressed."""
    settings = make_settings(db_url)
    issue_id, batches = _publish(session, settings)
    with SMTPServer(rcpt_fault=Relay(broken=True)) as smtp:
        pool = ConnectionPool(lambda: SmtpMailer(smtp.url, timeout=10), LocalSlots(connections), connections=connections)
        for ids in batches.calls:
            send_batch(session, settings, issue_id, ids, pool)
        pool.close_idle(older_than=0)
        tried = sum(smtp.recorder.attempts.values())
    issue = _issue(session, issue_id)
    assert issue.status == IssueStatus.PAUSED and "refused the first" in issue.error
    # Each sender has at most 2 messages unrecorded (see send_batch), and a group of outcomes may cross 5.
    assert 5 <= tried <= 5 + 4 * connections < N and smtp.recorder.messages == []
    assert _suppressed(session) == set() and breaker.held_count(session, issue_id) == tried


def test_suppressions_a_relay_refusing_everyone_made_can_be_released(session, db_url: str, make_settings: Callable[..., Settings]) -> None:  # type: ignore[no-untyped-def]
    """The way back for a list suppressed before the breaker: the 20 suppressions made from the issue's own
    refusals by a relay that accepted none are released (subscribers active again) and `requeue` sends the
    issue to all 20; a suppression of another kind (a DSN's, an unsubscription) is kept."""
    settings = make_settings(db_url, NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES="0")
    issue_id, batches = _publish(session, settings)
    relay = Relay(broken=True)
    with SMTPServer(rcpt_fault=relay) as smtp:
        _send(session, settings, issue_id, batches.calls, smtp.url)
        # What the sender did before the breaker: each refusal suppressed its address and bounced its reader.
        for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue_id)).all():
            reason = "unsubscribe" if d.email == address(3) else "hard-bounce"
            suppress(session, d.email, reason, f"{d.relay}: {d.last_error}")
            mark_bounced(session, d.subscriber_id, d.email)
        session.commit()
        assert len(_suppressed(session)) == N and _bounced(session) == N
        released = breaker.release_unvouched(session, issue_id)
        session.commit()
        assert released == [address(i) for i in range(N) if i != 3]
        assert _suppressed(session) == {address(3)} and _bounced(session) == 1
        relay.broken = False
        again = Batches()
        assert control.requeue_failed(session, settings, _issue(session, issue_id), again) == N - 1
        _send(session, settings, issue_id, again.calls, smtp.url)
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N) if i != 3}
    assert breaker.release_unvouched(session, issue_id) == []  # the relay vouches now: nothing more to release


def test_a_relay_that_turns_bad_mid_issue_is_reported_with_what_it_suppressed_and_can_be_undone(
    session, db_url: str, make_settings: Callable[..., Settings]
) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): a relay accepting 10 then refusing everyone as unknown got 9 addresses suppressed
    (it still vouched: accepted more than refused) and the issue's line said "no address was suppressed (1 held)"
    and advised `requeue`, after which `unsuppress` found the relay vouching (11 accepted) and released nothing."""
    settings = make_settings(db_url)
    issue_id, batches = _publish(session, settings)
    late = {address(i) for i in range(10, N)}
    relay = Relay(dead=late)
    with SMTPServer(rcpt_fault=relay) as smtp:
        _send(session, settings, issue_id, batches.calls, smtp.url)
        issue = _issue(session, issue_id)
        assert _suppressed(session) == late - {address(N - 1)} and breaker.held_count(session, issue_id) == 1
        assert "no address was suppressed" not in (issue.error or "")
        assert (
            f"and accepted 10: 1 held (not suppressed) and 9 suppressed while the relay still accepted mail; check the relay "
            f"(credentials, recipient verification); if it was at fault, first 'newsletter issue unsuppress {issue.number}' "
            f"releases the 9, then 'newsletter issue requeue {issue.number}' sends them all again"
        ) in (issue.error or "")

        relay.dead = set()  # the relay is fixed; the editor requeues first, as the trial did
        again = Batches()
        assert control.requeue_failed(session, settings, _issue(session, issue_id), again) == 1
        _send(session, settings, issue_id, again.calls, smtp.url)
        session.expire_all()
        assert breaker.release_unvouched(session, issue_id) == []  # 11 accepted vs 9 refused: the relay vouches now
        released = breaker.release_unvouched(session, issue_id, any_relay=True)  # the editor vouches instead
        session.commit()
        assert released == sorted(late - {address(N - 1)}) and _suppressed(session) == set() and _bounced(session) == 0
        again = Batches()
        assert control.requeue_failed(session, settings, _issue(session, issue_id), again) == 9
        _send(session, settings, issue_id, again.calls, smtp.url)
        assert smtp.recorder.recipients() == {address(i): 1 for i in range(N)}
