"""The delivery ledger and send_batch on SQLite and PostgreSQL, through the real publish steps."""

from __future__ import annotations

import email
import email.policy
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import control, publishing
from newsletter.config import Settings
from newsletter.delivery import ledger
from newsletter.delivery.mailers import OutboxMailer
from newsletter.delivery.send import send_batch
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber, SubscriberStatus, Suppression
from newsletter.subscribers import unsubscribe
from newsletter.tokens import message_id, verify


class Recorder:
    """An ``enqueue`` that only records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, issue_id: int, ids: list[int]) -> None:
        self.calls.append((issue_id, list(ids)))

    @property
    def ids(self) -> list[int]:
        return [i for _, batch in self.calls for i in batch]


def _seed(session) -> None:  # type: ignore[no-untyped-def]
    day = datetime(2026, 1, 5, tzinfo=UTC)
    session.add_all([
        Article(external_id="e1", title="Central bank raises interest rates", summary="Rates up.", body_html="<p>x</p>",
                body_text="The central bank raised interest rates to fight inflation.", lang="en", published_at=day),
        Article(external_id="e2", title="Inflation slows as rates bite", summary="Slower.", body_html="<p>x</p>",
                body_text="Higher interest rates have begun to slow inflation.", lang="en", published_at=day - timedelta(days=3)),
        Article(external_id="e3", title="Football team wins final", summary="Win.", body_html="<p>x</p>",
                body_text="The football team celebrated a dramatic win.", lang="en", published_at=day - timedelta(days=4)),
        Article(external_id="e4", title="Frog species found", summary="Frog.", body_html="<p>x</p>",
                body_text="Biologists discovered a tiny frog in the rainforest.", lang="en", published_at=day - timedelta(days=5)),
        Article(external_id="z1", title="央行宣布加息", summary="中央银行宣布加息。", body_html="<p>x</p>",
                body_text="中央银行宣布提高利率，以应对通货膨胀。", lang="zh-Hans", published_at=day),
    ])  # fmt: skip
    session.add_all([
        Subscriber(email="ann@example.com", name="O'Brien & <Co>", lang="en"),
        Subscriber(email="bob@example.com", name="张三", lang="zh-Hans"),
        Subscriber(email="cat@example.com", name="陳", lang="zh-Hant"),
        Subscriber(email="dan@example.com", name="Dan", lang="en"),
        Subscriber(email="gone@example.com", name="Gone", lang="en", status=SubscriberStatus.UNSUBSCRIBED),
        Subscriber(email="pend@example.com", name="Pending", lang="en", status=SubscriberStatus.PENDING),
        Subscriber(email="supp@example.com", name="Suppressed", lang="en"),
    ])  # fmt: skip
    session.add(Suppression(email="supp@example.com", reason="bounce"))
    session.commit()


def _publish(session, settings: Settings, readers: int = 0) -> tuple[int, Recorder]:  # type: ignore[no-untyped-def]
    """Seed (and ``readers`` more English readers), create issue 1 with e1 and z1, and run the publish steps up to planning."""
    _seed(session)
    if readers:
        session.add_all([Subscriber(email=f"reader{i:03d}@example.com", name=f"Reader {i}", lang="en") for i in range(readers)])
        session.commit()
    articles = list(session.scalars(select(Article).where(Article.external_id.in_(["e1", "z1"])).order_by(Article.external_id)))
    issue = create_issue(session, articles)
    session.commit()
    issue_id = issue.id
    publishing.request_publish(session, settings, issue)
    publishing.attach_related(session, settings, issue_id)
    publishing.render_editions(session, settings, issue_id)
    rec = Recorder()
    publishing.plan_deliveries(session, settings, issue_id, rec)
    return issue_id, rec


def _deliveries(session, issue_id: int) -> list[Delivery]:  # type: ignore[no-untyped-def]
    session.expire_all()
    return list(session.scalars(select(Delivery).where(Delivery.issue_id == issue_id).order_by(Delivery.subscriber_id)))


def _outbox_files(outbox: Path) -> list[Path]:
    return sorted((outbox / "new").glob("*.eml")) if (outbox / "new").is_dir() else []


@pytest.fixture
def settings(db_url: str, make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(db_url, NEWSLETTER_BATCH_SIZE="2")


def test_plan_one_delivery_per_active_subscriber(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    rows = _deliveries(session, issue_id)
    assert [(d.email, d.lang, d.status) for d in rows] == [
        ("ann@example.com", "en", DeliveryStatus.PENDING),
        ("bob@example.com", "zh-Hans", DeliveryStatus.PENDING),
        ("cat@example.com", "zh-Hant", DeliveryStatus.PENDING),
        ("dan@example.com", "en", DeliveryStatus.PENDING),
    ]
    assert all(d.attempts == 0 and d.enqueued_at is not None for d in rows)
    assert [d.message_id for d in rows] == [message_id(settings.secret_key, issue_id, d.subscriber_id, settings.mail_domain) for d in rows]
    # batch size 2: ids handed over in order, two per call
    assert [len(b) for _, b in rec.calls] == [2, 2]
    assert rec.ids == [d.id for d in rows]
    assert {i for i, _ in rec.calls} == {issue_id}
    issue = session.get(Issue, issue_id)
    assert issue.status == IssueStatus.SENDING
    assert issue.audience_max_subscriber_id == session.scalar(select(func.max(Subscriber.id)))
    assert sorted(e.lang for e in issue.editions) == ["en", "zh-Hans", "zh-Hant"]
    assert all(e.html and e.text and e.subject for e in issue.editions)


def test_replanning_adds_no_rows_and_enqueues_nothing(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    issue_id, _ = _publish(session, settings)
    before = [(d.id, d.enqueued_at) for d in _deliveries(session, issue_id)]
    rec2 = Recorder()
    publishing.plan_deliveries(session, settings, issue_id, rec2)
    assert rec2.calls == []
    assert [(d.id, d.enqueued_at) for d in _deliveries(session, issue_id)] == before
    assert session.scalar(select(func.count()).select_from(Delivery)) == 4


def test_replanning_reports_zero_planned(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    issue_id, _ = _publish(session, settings)
    assert publishing.plan_deliveries(session, settings, issue_id, Recorder()) == 0


def test_claim_twice_returns_ids_once(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    ids = rec.ids
    first = ledger.claim(session, issue_id, ids, lease_seconds=300)
    second = ledger.claim(session, issue_id, ids, lease_seconds=300)
    assert [c.id for c in first] == sorted(ids)
    assert second == []
    rows = _deliveries(session, issue_id)
    assert all(d.status == DeliveryStatus.SENDING and d.attempts == 1 and d.first_attempt_at is not None for d in rows)
    # claims for another issue id never match
    assert ledger.claim(session, issue_id + 1000, ids, lease_seconds=300) == []


def test_expired_lease_can_be_reclaimed_and_fences_the_old_claim(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    did = rec.ids[0]
    t0 = datetime.now(UTC)
    (old,) = ledger.claim(session, issue_id, [did], lease_seconds=10, now=t0)
    assert ledger.claim(session, issue_id, [did], lease_seconds=10, now=t0 + timedelta(seconds=5)) == []
    (new,) = ledger.claim(session, issue_id, [did], lease_seconds=10, now=t0 + timedelta(seconds=11))
    assert new.lease != old.lease
    assert ledger.mark_sent(session, old, "relay-a") is False  # fenced out
    assert ledger.mark_sent(session, new, "relay-b") is True
    assert ledger.mark_sent(session, new, "relay-b") is False  # already final
    session.expire_all()
    d = session.get(Delivery, did)
    assert (d.status, d.relay, d.attempts, d.claimed_until) == (DeliveryStatus.SENT, "relay-b", 2, None)


def test_send_batch_writes_one_eml_per_delivery_and_is_idempotent(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "outbox-test"
    factory = lambda: OutboxMailer(outbox)  # noqa: E731

    total: Counter[str] = Counter()
    for _, batch in rec.calls:
        total.update(send_batch(session, settings, issue_id, batch, factory).outcomes)
    assert +total == Counter({"sent": 4})
    files = _outbox_files(outbox)
    assert len(files) == 4

    rows = _deliveries(session, issue_id)
    assert all(d.status == DeliveryStatus.SENT and d.sent_at is not None and d.attempts == 1 for d in rows)
    assert {d.relay for d in rows} == {f"outbox:{outbox}"}

    parsed = {
        str(m["To"].addresses[0].addr_spec): m
        for m in (email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files)
    }
    assert sorted(parsed) == ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"]
    by_email = {d.email: d for d in rows}
    for addr, msg in parsed.items():
        assert msg["Message-ID"] == by_email[addr].message_id
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = str(msg["List-Unsubscribe"]).strip()[1:-1]
        assert url.startswith("https://news.example.org/unsubscribe/")
        assert verify(settings.secret_key, "unsubscribe", url.rsplit("/", 1)[1]) == (by_email[addr].subscriber_id, issue_id)
        body_html = msg.get_body(("html",)).get_content()
        body_text = msg.get_body(("plain",)).get_content()
        assert "@@NL_" not in body_html and "@@NL_" not in body_text
        assert url in body_text
    ann = parsed["ann@example.com"]
    assert "Hello O&#x27;Brien &amp; &lt;Co&gt;," in ann.get_body(("html",)).get_content()
    assert "Hello O'Brien & <Co>," in ann.get_body(("plain",)).get_content()
    assert ann["Content-Language"] == "en"
    assert parsed["bob@example.com"]["Subject"] == "本周要闻 · 第 1 期"
    assert parsed["cat@example.com"]["Subject"] == "本週要聞 · 第 1 期"
    assert "中央銀行宣佈加息" in parsed["cat@example.com"].get_body(("plain",)).get_content()

    # Running the same batches again sends nothing.
    again: Counter[str] = Counter()
    for _, batch in rec.calls:
        again.update(send_batch(session, settings, issue_id, batch, factory).outcomes)
    assert +again == Counter({"busy": 4})
    assert len(_outbox_files(outbox)) == 4
    assert publishing.finish_if_done(session, issue_id) is True
    assert session.get(Issue, issue_id).status == IssueStatus.SENT


def test_unsubscribed_after_planning_is_skipped(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    dan = session.scalar(select(Subscriber).where(Subscriber.email == "dan@example.com"))
    unsubscribe(session, dan.id, source="one-click")
    outbox = tmp_path / "outbox-skip"

    result = send_batch(session, settings, issue_id, rec.ids, lambda: OutboxMailer(outbox))
    assert +result.outcomes == Counter({"sent": 3, "skipped:unsubscribed": 1})
    assert len(_outbox_files(outbox)) == 3
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    skipped = rows["dan@example.com"]
    assert (skipped.status, skipped.skip_reason, skipped.attempts, skipped.sent_at) == (DeliveryStatus.SKIPPED, "unsubscribed", 0, None)
    assert ledger.count_open(session, issue_id) == 0
    assert ledger.counts(session, issue_id) == {("sent", "en"): 1, ("sent", "zh-Hans"): 1, ("sent", "zh-Hant"): 1, ("skipped", "en"): 1}


def test_suppressed_after_planning_is_skipped(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    session.add(Suppression(email="ann@example.com", reason="complaint"))
    session.commit()
    result = send_batch(session, settings, issue_id, rec.ids, lambda: OutboxMailer(tmp_path / "ob"))
    assert +result.outcomes == Counter({"sent": 3, "skipped:suppressed": 1})
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    assert (rows["ann@example.com"].status, rows["ann@example.com"].skip_reason) == (DeliveryStatus.SKIPPED, "suppressed")


def test_paused_or_left_topic_after_planning_is_skipped(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _seed(session)
    for s in session.scalars(select(Subscriber)):
        s.topics = ["economy"]
    articles = list(session.scalars(select(Article).where(Article.external_id.in_(["e1", "z1"])).order_by(Article.external_id)))
    issue = create_issue(session, articles)
    issue.segment = {"topics": {"any": ["economy"]}}
    session.commit()
    issue_id = issue.id
    publishing.request_publish(session, settings, issue)
    publishing.attach_related(session, settings, issue_id)
    publishing.render_editions(session, settings, issue_id)
    rec = Recorder()
    publishing.plan_deliveries(session, settings, issue_id, rec)
    ann = session.scalar(select(Subscriber).where(Subscriber.email == "ann@example.com"))
    dan = session.scalar(select(Subscriber).where(Subscriber.email == "dan@example.com"))
    ann.paused, dan.topics = True, ["policy"]  # after planning: Ann pauses, Dan leaves the issue's topic
    session.commit()
    result = send_batch(session, settings, issue_id, rec.ids, lambda: OutboxMailer(tmp_path / "ob"))
    assert +result.outcomes == Counter({"sent": 2, "skipped:paused": 1, "skipped:left-topic": 1})
    rows = {d.email: d.skip_reason for d in _deliveries(session, issue_id)}
    assert (rows["ann@example.com"], rows["dan@example.com"], rows["bob@example.com"]) == ("paused", "left-topic", None)


def test_send_batch_refuses_issue_not_sending(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    issue = session.get(Issue, issue_id)
    issue.status = IssueStatus.FAILED
    session.commit()
    result = send_batch(session, settings, issue_id, rec.ids, lambda: OutboxMailer(tmp_path / "ob"))
    assert +result.outcomes == Counter({"issue-not-sending": 4})
    assert _outbox_files(tmp_path / "ob") == []
    assert all(d.status == DeliveryStatus.PENDING and d.attempts == 0 for d in _deliveries(session, issue_id))


class RefusingMailer:
    """A real `Mailer` that refuses some recipients the way a relay would (SMTP replies)."""

    name = "refusing:25"

    def __init__(self, replies: dict[str, tuple[int, str]], outbox: Path) -> None:
        self.replies, self.outbox = replies, OutboxMailer(outbox)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        from newsletter.delivery.errors import classify_reply

        if recipient in self.replies:
            code, text = self.replies[recipient]
            raise classify_reply(code, text, self.name)
        self.outbox.send(sender, recipient, message)

    def close(self) -> None:
        self.outbox.close()


def test_temporary_failure_defers_and_permanent_failure_fails(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    replies = {"ann@example.com": (451, "4.7.1 Greylisted, try later"), "bob@example.com": (550, "5.1.1 User unknown")}
    outbox = tmp_path / "ob"
    before = datetime.now(UTC)
    result = send_batch(session, settings, issue_id, rec.ids, lambda: RefusingMailer(replies, outbox))
    assert +result.outcomes == Counter({"sent": 2, "deferred": 1, "failed": 1})
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    ann, bob = rows["ann@example.com"], rows["bob@example.com"]
    assert (ann.status, ann.last_smtp_code, ann.relay, ann.attempts) == (DeliveryStatus.DEFERRED, 451, "refusing:25", 1)
    assert ann.last_error.startswith("451 ") and ann.last_error.endswith("4.7.1 Greylisted, try later")
    # first retry: uniform(0, base=60 s) after the failure
    assert before <= ann.next_attempt_at <= datetime.now(UTC) + timedelta(seconds=60)
    assert (bob.status, bob.last_smtp_code, bob.next_attempt_at) == (DeliveryStatus.FAILED, 550, None)
    assert "5.1.1 User unknown" in bob.last_error

    # The deferred row is not claimable before its time, and is afterwards; the failed one never is.
    assert ledger.claim(session, issue_id, [ann.id, bob.id], 300, now=ann.next_attempt_at - timedelta(seconds=1)) == []
    claims = ledger.claim(session, issue_id, [ann.id, bob.id], 300, now=ann.next_attempt_at + timedelta(seconds=1))
    assert [c.id for c in claims] == [ann.id]
    session.expire_all()
    assert session.get(Delivery, ann.id).attempts == 2


def test_cancel_skips_what_was_not_sent_and_stops_sending(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    first, rest = rec.calls[0][1], rec.calls[1][1]
    outbox = tmp_path / "cancel-outbox"
    send_batch(session, settings, issue_id, first, lambda: OutboxMailer(outbox))
    skipped = control.cancel_issue(session, session.get_one(Issue, issue_id))
    assert skipped == 2
    assert send_batch(session, settings, issue_id, rest, lambda: OutboxMailer(outbox)).outcomes == Counter({"issue-not-sending": 2})
    states = Counter((d.status, d.skip_reason) for d in _deliveries(session, issue_id))
    assert states == Counter({(DeliveryStatus.SENT, None): 2, (DeliveryStatus.SKIPPED, "cancelled"): 2})
    from newsletter import reports

    assert reports.report(session, session.get_one(Issue, issue_id)).skip_reasons == {"cancelled": 2}
    assert len(_outbox_files(outbox)) == 2
    with pytest.raises(publishing.IssueError, match="cannot be cancelled"):
        control.cancel_issue(session, session.get_one(Issue, issue_id))


def test_pause_then_resume_enqueues_only_what_is_left(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "pause-outbox"
    send_batch(session, settings, issue_id, rec.calls[0][1], lambda: OutboxMailer(outbox))
    issue = session.get_one(Issue, issue_id)
    control.pause_issue(session, issue)
    # A batch that arrives while paused claims nothing.
    assert send_batch(session, settings, issue_id, rec.calls[1][1], lambda: OutboxMailer(outbox)).outcomes == Counter(
        {"issue-not-sending": 2}
    )
    again = Recorder()
    assert control.resume_issue(session, settings, issue, again) == 1
    assert sorted(again.ids) == sorted(rec.calls[1][1])  # only the unsent two
    for _, batch in again.calls:
        send_batch(session, settings, issue_id, batch, lambda: OutboxMailer(outbox))
    publishing.finish_if_done(session, issue_id)
    assert session.get_one(Issue, issue_id).status == IssueStatus.SENT
    assert len(_outbox_files(outbox)) == 4
    with pytest.raises(publishing.IssueError, match="not paused"):
        control.resume_issue(session, settings, issue, again)


def test_resume_makes_deferred_deliveries_due_now(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression: after the relay was fixed, `issue resume` waited out the backoff the old 451 had set
    (3 minutes for 26 messages in a trial); resuming now makes deferred deliveries due at once."""
    issue_id, rec = _publish(session, settings)
    issue = session.get_one(Issue, issue_id)
    control.pause_issue(session, issue)
    later = datetime.now(UTC) + timedelta(hours=1)
    deferred = rec.calls[0][1]
    for delivery in _deliveries(session, issue_id):
        if delivery.id in deferred:
            delivery.status, delivery.next_attempt_at, delivery.attempts = DeliveryStatus.DEFERRED, later, 1
    session.commit()
    again = Recorder()
    control.resume_issue(session, settings, issue, again)
    outbox = tmp_path / "resume-now"
    for _, batch in again.calls:
        send_batch(session, settings, issue_id, batch, lambda: OutboxMailer(outbox))
    states = Counter(d.status for d in _deliveries(session, issue_id))
    assert states == Counter({DeliveryStatus.SENT: 4})
    assert len(_outbox_files(outbox)) == 4


def test_requeue_gives_failed_deliveries_another_round(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "rq"
    replies = {"ann@example.com": (554, "5.7.1 relay misconfigured"), "bob@example.com": (550, "5.1.1 User unknown")}
    send_batch(session, settings, issue_id, rec.ids, lambda: RefusingMailer(replies, outbox))
    publishing.finish_if_done(session, issue_id)
    issue = session.get_one(Issue, issue_id)
    assert issue.status == IssueStatus.SENT
    # 550 5.1.1 says bob's mailbox does not exist: suppressed at once, like a hard bounce; 5.7.1 says nothing
    # final about ann's address.
    assert session.scalar(select(Suppression.reason).where(Suppression.email == "bob@example.com")) == "hard-bounce"
    assert session.scalar(select(Suppression.id).where(Suppression.email == "ann@example.com")) is None
    assert session.scalar(select(Subscriber.status).where(Subscriber.email == "bob@example.com")) == SubscriberStatus.BOUNCED
    again = Recorder()
    assert control.requeue_failed(session, settings, issue, again) == 1
    ann = next(d for d in _deliveries(session, issue_id) if d.email == "ann@example.com")
    assert again.ids == [ann.id] and (ann.status, ann.attempts) == (DeliveryStatus.PENDING, 0)
    assert session.get_one(Issue, issue_id).status == IssueStatus.SENDING
    send_batch(session, settings, issue_id, again.ids, lambda: OutboxMailer(outbox))
    publishing.finish_if_done(session, issue_id)
    states = Counter(d.status for d in _deliveries(session, issue_id))
    assert states == Counter({DeliveryStatus.SENT: 3, DeliveryStatus.FAILED: 1})
    assert session.get_one(Issue, issue_id).status == IssueStatus.SENT


def test_sweeper_skips_what_a_cancel_could_not_reach(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from newsletter import sweeper

    issue_id, rec = _publish(session, settings)
    in_flight = ledger.claim(session, issue_id, rec.calls[0][1], 300)  # a worker holds these at the cancel
    assert control.cancel_issue(session, session.get_one(Issue, issue_id)) == 2
    # The worker's relay answered 451: the claims come back deferred after the cancel.
    for c in in_flight:
        assert ledger.mark_deferred(session, c, datetime.now(UTC), "451 try later", 451, "relay:25")
    result = sweeper.sweep(session, settings, Recorder())
    assert result.cancelled_leftovers == 2 and result.enqueued == {}
    assert Counter((d.status, d.skip_reason) for d in _deliveries(session, issue_id)) == Counter({(DeliveryStatus.SKIPPED, "cancelled"): 4})


def test_a_relay_slower_than_the_lease_keeps_the_claims_and_sends_each_once(session, db_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each message takes 1.5 leases on the wire. The claims stay ours throughout (renewed by the
    batch's LeaseKeeper), so another worker trying to take them, as the sweeper's re-enqueue would,
    gets nothing, and no delivery is claimed (attempted) twice."""
    import time

    from newsletter.db import session_factory
    from newsletter.models import utcnow

    settings = make_settings(db_url, NEWSLETTER_LEASE_SECONDS="1")
    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "slow"
    other = session_factory(db_url)()
    taken: list[int] = []
    leases_seen: list[bool] = []

    class SlowRelay(OutboxMailer):
        def send(self, sender: str, recipient: str, message: bytes) -> None:
            for _ in range(6):  # 1.5 s, trying to take the claims over every 0.25 s
                time.sleep(0.25)
                taken.extend(c.id for c in ledger.claim(other, issue_id, rec.ids[:2], 60))
                other.expire_all()
                row = other.scalar(select(Delivery).where(Delivery.email == recipient))
                leases_seen.append(row.status == DeliveryStatus.SENDING and row.claimed_until > utcnow())
            super().send(sender, recipient, message)

    result = send_batch(session, settings, issue_id, rec.ids[:2], lambda: SlowRelay(outbox))
    other.close()
    assert taken == [] and all(leases_seen) and len(leases_seen) == 12
    assert +result.outcomes == Counter({"sent": 2})
    assert len(_outbox_files(outbox)) == 2
    sent = [d for d in _deliveries(session, issue_id) if d.id in rec.ids[:2]]
    assert [(d.status, d.attempts) for d in sent] == [(DeliveryStatus.SENT, 1)] * 2


def test_a_claim_taken_over_is_not_sent_by_its_old_holder(session, db_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A takeover needs an expired lease; here a worker whose clock runs a minute ahead sees the
    claims as expired and takes them while the first message is on the wire. The old holder's
    keeper finds out at its next renewal, and the batch sends none of the taken deliveries."""
    import time

    from newsletter.db import session_factory
    from newsletter.models import utcnow

    settings = make_settings(db_url, NEWSLETTER_LEASE_SECONDS="2")
    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "taken"
    other = session_factory(db_url)()
    taken: list[int] = []

    class SlowRelay(OutboxMailer):
        def send(self, sender: str, recipient: str, message: bytes) -> None:
            if not taken:
                taken.extend(c.id for c in ledger.claim(other, issue_id, rec.ids[1:], 60, now=utcnow() + timedelta(minutes=1)))
                time.sleep(1.2)  # longer than two renewal intervals
            super().send(sender, recipient, message)

    result = send_batch(session, settings, issue_id, rec.ids, lambda: SlowRelay(outbox))
    other.close()
    assert sorted(taken) == sorted(rec.ids[1:])
    assert +result.outcomes == Counter({"sent": 1, "lost": 3})
    assert len(_outbox_files(outbox)) == 1
    # The new holder's token fences the old one out of recording anything for them.
    stale = ledger.Claim(id=rec.ids[1], token="0" * 32, lease=datetime.now(UTC))
    assert ledger.mark_sent(session, stale, "relay:25") is False


def test_the_lease_keeper_renews_and_says_when_a_claim_is_no_longer_safe(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import sessionmaker

    issue_id, rec = _publish(session, settings)
    claims = ledger.claim(session, issue_id, rec.ids, 10)
    now = [0.0]
    keeper = ledger.LeaseKeeper(sessionmaker(bind=session.get_bind()), claims, 10, clock=lambda: now[0])
    assert keeper.interval == 2.5 and all(keeper.holds(c.id) for c in claims)
    now[0] = 5.1  # no renewal for half a lease: not safe to start a send any more
    assert not keeper.holds(claims[0].id) and not keeper.lost(claims[0].id)
    before = _deliveries(session, issue_id)[0].claimed_until
    keeper.renew_now()
    assert keeper.holds(claims[0].id) and _deliveries(session, issue_id)[0].claimed_until > before
    keeper.done(claims[0].id)
    assert keeper.lost(claims[0].id)  # finished ids are not renewed any more
    ledger.claim(session, issue_id, [claims[1].id], 10, now=datetime.now(UTC) + timedelta(seconds=60))  # taken over
    keeper.renew_now()
    assert keeper.lost(claims[1].id) and keeper.holds(claims[2].id)


def test_a_delivery_is_never_claimed_more_than_max_attempts_times(session, db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    from newsletter import sweeper

    settings = make_settings(db_url, NEWSLETTER_MAX_ATTEMPTS="3", NEWSLETTER_LEASE_SECONDS="10")
    issue_id, rec = _publish(session, settings)
    did = rec.ids[0]
    t = datetime.now(UTC)
    for attempt in range(3):  # each claim's worker dies; the lease runs out; it is claimed again
        assert [c.id for c in ledger.claim(session, issue_id, [did], 10, now=t + timedelta(seconds=20 * attempt), max_attempts=3)] == [did]
    later = t + timedelta(seconds=100)
    assert ledger.claim(session, issue_id, [did], 10, now=later, max_attempts=3) == []
    recorder = Recorder()
    result = sweeper.sweep(session, settings, recorder, now=later)
    assert result.exhausted == 1 and did not in recorder.ids
    row = next(d for d in _deliveries(session, issue_id) if d.id == did)
    assert (row.status, row.attempts) == (DeliveryStatus.FAILED, 3)
    assert row.last_error.startswith("gave up after 3 attempts: the last claim ran out")


def test_an_accepted_message_is_recorded_after_the_database_dropped_the_connection(pg_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The relay says 250; then PostgreSQL kills every connection of the database (as a restart does).
    The outcome is written again on a fresh connection: recorded once, sent once."""
    from sqlalchemy import create_engine, text

    from newsletter.db import session_factory
    from tests.conftest import PG_ADMIN_URL

    settings = make_settings(pg_url)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = pg_url.rsplit("/", 1)[1]
    outbox = tmp_path / "drop"
    with session_factory(pg_url)() as session:
        issue_id, rec = _publish(session, settings)

        class DroppingRelay(OutboxMailer):
            def send(self, sender: str, recipient: str, message: bytes) -> None:
                super().send(sender, recipient, message)
                with admin.connect() as conn:  # after the relay accepted: every connection of the database dies
                    conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})

        result = send_batch(session, settings, issue_id, rec.ids, lambda: DroppingRelay(outbox))
        assert +result.outcomes == Counter({"sent": 4})
        assert len(_outbox_files(outbox)) == 4
        assert all(d.status == DeliveryStatus.SENT and d.attempts == 1 for d in _deliveries(session, issue_id))
    admin.dispose()


def test_the_sweeper_leaves_a_rate_limited_backlog_in_the_queue_while_the_issue_moves(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """Pending rows enqueued longer than a lease ago are re-enqueued only when their issue stopped
    moving (the broker lost them), not while a slow relay works through the queue (issue 6, point 12)."""
    from sqlalchemy import update

    from newsletter import sweeper

    issue_id, rec = _publish(session, settings)
    lease = sweeper.stall_seconds(settings)  # the stall window
    long_ago = datetime.now(UTC) - timedelta(seconds=lease * 2)  # planned and enqueued two windows ago
    session.execute(update(Delivery).where(Delivery.issue_id == issue_id).values(enqueued_at=long_ago, updated_at=long_ago))
    session.commit()
    (first,) = ledger.claim(session, issue_id, rec.ids[:1], lease)
    assert ledger.mark_sent(session, first, "relay:25")  # the relay works through the queue, slowly...
    moving = Recorder()
    result = sweeper.sweep(session, settings, moving)
    assert result.enqueued == {} and moving.calls == []  # ... so the backlog stays where it is
    stalled = Recorder()
    result = sweeper.sweep(session, settings, stalled, now=datetime.now(UTC) + timedelta(seconds=lease * 1.5))
    assert sorted(stalled.ids) == sorted(rec.ids[1:])  # nothing moved for a lease: the messages were lost


def test_the_sweeper_hands_a_dead_worker_s_claims_out_once_their_lease_ran_out(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """A batch enqueued and claimed, then its worker died: the sweep after the lease ran out enqueues it again
    (a lease, not the stall window of 5 leases after its enqueue), and the sweeps after that do not, while that
    task waits in the queue."""
    from newsletter import sweeper

    issue_id, rec = _publish(session, settings)  # planned and enqueued
    t0 = datetime.now(UTC)
    lease = settings.lease_seconds
    assert len(ledger.claim(session, issue_id, rec.ids, lease, now=t0)) == len(rec.ids)  # then its worker died
    assert sweeper.sweep(session, settings, Recorder(), now=t0 + timedelta(seconds=lease - 1)).enqueued == {}
    expired = t0 + timedelta(seconds=lease + 1)
    first = Recorder()
    assert sweeper.sweep(session, settings, first, now=expired).enqueued == {issue_id: 2}  # batches of 2
    assert sorted(first.ids) == sorted(rec.ids)
    for seconds in (1, lease, sweeper.stall_seconds(settings) - 1):
        again = Recorder()
        sweeper.sweep(session, settings, again, now=expired + timedelta(seconds=seconds))
        assert again.calls == [], seconds


def test_auto_pause_holds_back_the_rest_even_when_the_issue_would_finish_between_sweeps(
    session, db_url: str, make_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A relay refusing everything: the batch applies the auto-pause rule itself, so the issue stops
    after a few failures although no sweep runs before the batch ends; and an issue whose every
    delivery failed ends ``failed``, not ``sent``."""
    from sqlalchemy import insert

    from newsletter.models import utcnow

    # The threshold rule alone (the first-failures rule has its own test in tests/test_relay_breaker.py).
    settings = make_settings(
        db_url, NEWSLETTER_PAUSE_AFTER_FAILURES="5", NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES="0", NEWSLETTER_BATCH_SIZE="100"
    )
    _seed(session)
    session.execute(insert(Subscriber), [{"email": f"more{i}@example.org", "name": "", "lang": "en", "topics": [], "attributes": {},
                                          "status": "active", "created_at": utcnow()} for i in range(20)])  # fmt: skip
    session.commit()
    issue = create_issue(session, list(session.scalars(select(Article).where(Article.external_id == "e1"))))
    session.commit()
    publishing.request_publish(session, settings, issue)
    publishing.attach_related(session, settings, issue.id)
    publishing.render_editions(session, settings, issue.id)
    rec = Recorder()
    publishing.plan_deliveries(session, settings, issue.id, rec)

    class RefuseAll(RefusingMailer):
        def send(self, sender: str, recipient: str, message: bytes) -> None:
            from newsletter.delivery.errors import classify_reply

            raise classify_reply(554, "5.7.1 Relay access denied", self.name)

    issue = session.get_one(Issue, issue.id)  # planning streams the audience and expunges what it read
    result = send_batch(session, settings, issue.id, rec.ids, lambda: RefuseAll({}, tmp_path / "ob"))
    assert publishing.finish_if_done(session, issue.id) is False
    session.refresh(issue)
    assert issue.status == IssueStatus.PAUSED and issue.error.startswith("auto-paused: 10 failed vs 0 sent")
    assert result.outcomes["failed"] == 10 and result.outcomes["released"] == len(rec.ids) - 10

    # Below the threshold the issue runs to its end, and an issue nobody received ends failed.
    quiet = make_settings(db_url, NEWSLETTER_PAUSE_AFTER_FAILURES="0")
    control.resume_issue(session, quiet, issue, Recorder())
    send_batch(session, quiet, issue.id, rec.ids, lambda: RefuseAll({}, tmp_path / "ob"))
    assert publishing.finish_if_done(session, issue.id) is True
    session.refresh(issue)
    assert issue.status == IssueStatus.FAILED
    assert issue.error == f"every delivery failed ({len(rec.ids)}); last error: 554 5.7.1 Relay access denied"


def test_sweeper_auto_pauses_an_issue_its_relay_refuses(session, db_url: str, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from newsletter import sweeper

    settings = make_settings(
        db_url, NEWSLETTER_PAUSE_AFTER_FAILURES="2", NEWSLETTER_PAUSE_AFTER_FIRST_FAILURES="0", NEWSLETTER_BATCH_SIZE="2"
    )
    issue_id, rec = _publish(session, settings)
    refused = {e: (554, "5.7.1 Relay access denied") for e in ("ann@example.com", "bob@example.com", "cat@example.com")}
    send_batch(session, settings, issue_id, rec.ids, lambda: RefusingMailer(refused, tmp_path / "ob"))
    result = sweeper.sweep(session, settings, Recorder())
    issue = session.get_one(Issue, issue_id)
    session.refresh(issue)
    assert result.auto_paused == [issue_id] and issue.status == IssueStatus.PAUSED
    assert issue.error == "auto-paused: 3 failed vs 1 sent; last error: 554 5.7.1 Relay access denied"
    # Below the threshold (or with it off) nothing is paused.
    assert sweeper.auto_pause_failing(session, make_settings(db_url, NEWSLETTER_PAUSE_AFTER_FAILURES="0")) == []


def test_sweeper_restarts_a_pipeline_whose_worker_died(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from newsletter import sweeper

    _seed(session)
    article = session.scalar(select(Article).where(Article.external_id == "e1"))
    issue = create_issue(session, [article])
    session.commit()
    publishing.request_publish(session, settings, issue)  # enqueued; then its worker died before any step ran
    started: list[int] = []
    now = datetime.now(UTC)
    # Within the stall window (5 leases) of the last heartbeat, nothing happens; after it, the pipeline is enqueued once.
    stall = sweeper.stall_seconds(settings)
    assert stall == 5 * settings.lease_seconds
    for seconds in (10, settings.lease_seconds + 1, stall - 1):  # a step may take minutes without a heartbeat
        assert sweeper.sweep(session, settings, Recorder(), now=now + timedelta(seconds=seconds), start=started.append).restarted == []
    later = now + timedelta(seconds=stall + 1)
    assert sweeper.sweep(session, settings, Recorder(), now=later, start=started.append).restarted == [issue.id]
    assert sweeper.sweep(session, settings, Recorder(), now=later, start=started.append).restarted == []
    assert started == [issue.id]
    # A step that makes progress keeps it from being restarted.
    publishing.attach_related(session, settings, issue.id)
    assert sweeper.restart_stalled_pipelines(session, datetime.now(UTC), stall, started.append) == []


class LendingSource:
    """A `MailerSource`: lends up to ``connections`` mailers at once, each checking before every send
    how many messages it had accepted are still not recorded as sent (read on its own connection)."""

    def __init__(self, connections: int, make, url: str) -> None:  # type: ignore[no-untyped-def]
        from newsletter.db import session_factory

        self.connections, self.make, self.sessions = connections, make, session_factory(url)
        self.lent = self.most_lent = 0
        self.most_unrecorded = 0
        self.lock = threading.Lock()

    def get(self, wait: bool):  # type: ignore[no-untyped-def]
        with self.lock:
            if self.lent >= self.connections:
                return None
            self.lent += 1
            self.most_lent = max(self.most_lent, self.lent)
        return _Checked(self, self.make())

    def unrecorded(self, emails: list[str]) -> int:
        with self.sessions() as s:
            return (
                s.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.email.in_(emails), Delivery.status == DeliveryStatus.SENDING)
                )
                or 0
            )


class _Checked:
    def __init__(self, source: LendingSource, inner) -> None:  # type: ignore[no-untyped-def]
        self.source, self.inner, self.name, self.accepted = source, inner, inner.name, list[str]()

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        n = self.source.unrecorded(self.accepted)
        with self.source.lock:
            self.source.most_unrecorded = max(self.source.most_unrecorded, n)
        self.inner.send(sender, recipient, message)
        self.accepted.append(recipient)

    def close(self) -> None:
        self.inner.close()
        with self.source.lock:
            self.source.lent -= 1


@pytest.mark.parametrize("connections", [1, 3])
def test_send_batch_with_a_mailer_source_records_every_outcome(
    session, settings: Settings, tmp_path: Path, db_url: str, connections: int
) -> None:  # type: ignore[no-untyped-def]
    """The pooled path (one connection: one thread, records read one message later; more: sender threads,
    grouped and pipelined ledger writes): same outcomes as one
    connection, and before each send a connection has at most 1 earlier accepted message unrecorded
    (so at most 2 once this one is accepted)."""
    issue_id, rec = _publish(session, settings)
    dan = session.scalar(select(Subscriber).where(Subscriber.email == "dan@example.com"))
    unsubscribe(session, dan.id, source="one-click")
    replies = {"bob@example.com": (451, "4.7.1 Greylisted, try later")}
    source = LendingSource(connections, lambda: RefusingMailer(replies, tmp_path / "ob"), db_url)
    result = send_batch(session, settings, issue_id, rec.ids, source)
    assert +result.outcomes == Counter({"sent": 2, "deferred": 1, "skipped:unsubscribed": 1})
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    assert [rows[e].status for e in ("ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com")] == [
        DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.SENT, DeliveryStatus.SKIPPED,
    ]  # fmt: skip
    assert all(rows[e].sent_at is not None and rows[e].relay == "refusing:25" for e in ("ann@example.com", "cat@example.com"))
    assert rows["dan@example.com"].attempts == 0 and rows["bob@example.com"].attempts == 1
    assert len(_outbox_files(tmp_path / "ob")) == 2
    assert source.most_unrecorded <= 1
    assert source.lent == 0  # every mailer given back
    assert 1 <= source.most_lent <= connections
    # Redelivered: nothing is claimed or sent again.
    assert +send_batch(session, settings, issue_id, rec.ids, source).outcomes == Counter({"busy": 4})


def test_a_sender_thread_s_unexpected_error_reaches_the_task(session, settings: Settings, tmp_path: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """An error that is not a relay's answer (a bug, a broken connection pool) stops the pooled batch and
    is raised to the task; what no sender took is handed back (pending), nothing is left waiting."""
    issue_id, rec = _publish(session, settings)

    class Broken(RefusingMailer):
        def send(self, sender: str, recipient: str, message: bytes) -> None:
            raise RuntimeError("pool broke")

    source = LendingSource(1, lambda: Broken({}, tmp_path / "ob"), db_url)
    with pytest.raises(RuntimeError, match="pool broke"):
        send_batch(session, settings, issue_id, rec.ids, source)
    states = Counter(d.status for d in _deliveries(session, issue_id))
    assert states == Counter({DeliveryStatus.PENDING: 3, DeliveryStatus.SENDING: 1})  # the one in hand runs out and is swept
    assert source.lent == 0


def test_an_issue_with_open_deliveries_is_not_counted_after_every_batch(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression (bench/publish.py at 100,000 subscribers: PostgreSQL's CPU per message grew 4.5x over 10,000):
    every send batch asked `finish_if_done`, which counted all of the issue's deliveries by state. While any
    delivery is open, the answer must come from one EXISTS on the (issue_id, status) index, with no GROUP BY."""
    from sqlalchemy import event

    issue_id, rec = _publish(session, settings)
    statements: list[str] = []
    engine = session.get_bind()

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert publishing.finish_if_done(session, issue_id) is False  # four deliveries still pending
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("EXISTS" in s.upper() for s in statements), statements
    assert not any("GROUP BY" in s.upper() for s in statements), statements

    send_batch(session, settings, issue_id, rec.ids, lambda: OutboxMailer(tmp_path / "ob"))
    assert publishing.finish_if_done(session, issue_id) is True  # and once none is open, it ends the issue
    assert session.get(Issue, issue_id).status == IssueStatus.SENT


def test_an_edition_rendered_again_is_sent_as_rendered_again(session, settings: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A worker keeps each edition's message template between batches (keyed by the edition's ``rendered_at``,
    so a batch reads no HTML): an edition rendered again after a batch went out is sent in its new form."""
    from newsletter.models import Edition

    issue_id, rec = _publish(session, settings)
    outbox = tmp_path / "outbox-rerender"
    first, rest = rec.ids[:1], rec.ids[1:]
    assert send_batch(session, settings, issue_id, first, lambda: OutboxMailer(outbox)).outcomes["sent"] == 1
    for edition in session.scalars(select(Edition).where(Edition.issue_id == issue_id)):
        edition.subject = f"Rendered again · {edition.lang}"
        edition.text = "Second rendering.\n" + edition.text
        edition.rendered_at = datetime.now(UTC)
    session.commit()
    assert send_batch(session, settings, issue_id, rest, lambda: OutboxMailer(outbox)).outcomes["sent"] == 3
    messages = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in _outbox_files(outbox)]
    again = [m for m in messages if m["Subject"].startswith("Rendered again")]
    assert len(again) == 3 and len(messages) == 4
    dan = next(m for m in again if "dan@example.com" in str(m["To"]))
    assert dan.get_body(("plain",)).get_content().startswith("Second rendering.")


def test_a_dead_pool_process_s_claims_are_ended_by_its_mark_and_no_one_else_s(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """A worker's main process that saw its pool process die ends that process's leases (tokens beginning with
    its mark), so the redelivered batch takes them over at once; claims of any other process stay held, and
    the dead holder's token records nothing after the takeover."""
    issue_id, rec = _publish(session, settings)
    a, b, c, d = rec.ids
    secret = b"worker secret 16"
    dead, alive = ledger.holder_mark(secret, 4242), ledger.holder_mark(secret, 4243)
    assert dead != alive != ledger.holder_mark(b"other worker 16b", 4242) and len(dead) == ledger.HOLDER_MARK_LENGTH
    try:
        ledger.set_holder(dead)
        held = ledger.claim(session, issue_id, [a, b], lease_seconds=300)
        ledger.set_holder(alive)
        others = ledger.claim(session, issue_id, [c], lease_seconds=300)
    finally:
        ledger.set_holder("")
    assert all(len(x.token) == ledger.TOKEN_LENGTH for x in held + others)
    assert held[0].token.startswith(dead) and others[0].token.startswith(alive)
    assert ledger.mark_sent(session, held[0], "relay-a")  # recorded before the kill
    # Busy until the main process ends the dead one's leases: then taken over at once, by another token.
    assert ledger.claim(session, issue_id, [a, b, c], lease_seconds=300) == []
    assert ledger.expire_claims_of(session, [a, b, c, d], dead) == 1  # b only: a is sent, c is alive's, d unclaimed
    assert ledger.expire_claims_of(session, [a, b, c, d], dead) == 0  # already ended
    assert ledger.expire_claims_of(session, [b], "") == 0  # no mark: nothing to name
    (taken,) = ledger.claim(session, issue_id, [a, b, c], lease_seconds=300)
    assert taken.id == b and taken.token != held[1].token
    assert ledger.mark_sent(session, held[1], "relay-a") is False  # the dead holder's late record is fenced out
    assert ledger.renew(session, others, 300) == {c}  # the living one's claim is untouched
    with pytest.raises(ValueError):
        ledger.set_holder("not hex!")


def test_outcome_writer_records_like_mark_sent_many_and_only_under_the_current_claim(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """The batch's writer (on PostgreSQL: prepared statements sent by psycopg itself, not SQLAlchemy's Core) leaves
    the same rows as `ledger.mark_sent_many`, one id or several per statement, and records nothing under a stale token."""
    issue_id, rec = _publish(session, settings)
    a, b, c, d = rec.ids
    t0 = datetime.now(UTC)
    (stale,) = ledger.claim(session, issue_id, [a], lease_seconds=10, now=t0 - timedelta(seconds=60))
    # The stale claim ran out and was taken over (with a short lease: on PostgreSQL a lease is taken over only
    # once the server has been up that long, ledger._expired, and the shared one may have just started).
    (current,) = ledger.claim(session, issue_id, [a], lease_seconds=10)
    pair = ledger.claim(session, issue_id, [b, c], lease_seconds=300)
    (reference,) = ledger.claim(session, issue_id, [d], lease_seconds=300)
    writer = ledger.OutcomeWriter(session.get_bind().engine)
    try:
        assert writer.sent([stale], "relay-a") == set()
        assert writer.sent([current], "relay-a") == {a}
        assert writer.sent(pair, "relay-a") == {b, c}
        assert writer.sent(pair, "relay-a") == set()  # already final
    finally:
        writer.close()
    assert ledger.mark_sent_many(session, [reference], "relay-a") == {d}
    rows = {r.id: r for r in _deliveries(session, issue_id)}
    shape = {i: (r.status, r.relay, r.claimed_until, r.last_error, r.sent_at is not None, r.attempts) for i, r in rows.items()}
    assert shape[a] == (DeliveryStatus.SENT, "relay-a", None, None, True, 2)
    assert shape[b] == shape[c] == shape[d] == (DeliveryStatus.SENT, "relay-a", None, None, True, 1)
    assert all(r.updated_at >= r.sent_at - timedelta(seconds=1) for r in rows.values())


def test_outcome_writer_reads_the_issue_status_a_batch_checks(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """A concurrent batch checks for a pause or cancel on its writer's connection (on PostgreSQL a prepared
    statement sent by psycopg itself): it must see the issue's current status, as an `IssueStatus`."""
    issue_id, _ = _publish(session, settings)
    writer = ledger.OutcomeWriter(session.get_bind().engine)
    try:
        assert writer.issue_status(issue_id) is IssueStatus.SENDING
        control.pause_issue(session, session.get_one(Issue, issue_id))
        assert writer.issue_status(issue_id) is IssueStatus.PAUSED
        assert writer.issue_status(issue_id + 1000) is None
    finally:
        writer.close()


def test_outcome_writer_begun_records_match_sent_and_survive_a_broken_connection(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """`OutcomeWriter.begin_sent` / `end_sent` (on PostgreSQL the UPDATE goes out through libpq and its reply is
    read later, the path of a batch on one pooled connection) leave the same rows as `sent`, record nothing under
    a stale token, refuse other use of the writer while a reply is unread, and when the held connection died
    record the message on a fresh one."""
    from sqlalchemy import text

    issue_id, rec = _publish(session, settings)
    a, b, c, d = rec.ids
    t0 = datetime.now(UTC)
    (stale,) = ledger.claim(session, issue_id, [a], lease_seconds=10, now=t0 - timedelta(seconds=60))
    (current,) = ledger.claim(session, issue_id, [a], lease_seconds=10)  # short: see the test above
    others = ledger.claim(session, issue_id, [b, c, d], lease_seconds=300)
    engine = session.get_bind().engine
    writer = ledger.OutcomeWriter(engine)
    try:
        assert writer.end_sent() == set()  # nothing begun
        writer.begin_sent(stale, "relay-b")
        with pytest.raises(RuntimeError, match="end_sent"):
            writer.issue_status(issue_id)
        assert writer.end_sent() == set()
        writer.begin_sent(current, "relay-b")
        assert writer.end_sent() == {a}
        writer.begin_sent(others[0], "relay-b")
        assert writer.end_sent() == {b}
        writer.begin_sent(others[0], "relay-b")
        assert writer.end_sent() == set()  # already final
        if engine.dialect.name == "postgresql":  # the held connection dies between two messages
            pid = writer._conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
            session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.commit()
        writer.begin_sent(others[1], "relay-b")
        assert writer.end_sent() == {c}
        writer.begin_sent(others[2], "relay-b")
        assert writer.end_sent() == {d}
    finally:
        writer.close()
    rows = {r.id: r for r in _deliveries(session, issue_id)}
    shape = {i: (r.status, r.relay, r.claimed_until, r.last_error, r.sent_at is not None, r.attempts) for i, r in rows.items()}
    assert shape[a] == (DeliveryStatus.SENT, "relay-b", None, None, True, 2)
    assert shape[b] == shape[c] == shape[d] == (DeliveryStatus.SENT, "relay-b", None, None, True, 1)
    assert all(r.updated_at >= r.sent_at - timedelta(seconds=1) for r in rows.values())
    assert all(abs(r.sent_at - datetime.now(UTC)) < timedelta(minutes=5) for r in rows.values())  # written as UTC


def test_one_pooled_connection_sends_on_the_batch_s_own_thread(session, settings: Settings, tmp_path: Path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """With one connection (no ``?connections=``, each worker process's default) the batch sends and records in
    its own thread: no sender thread and no handoff per message (the previous way cost ~15% of the process's CPU
    per message, bench/send_path.py). Every outcome is still recorded and the bound of 1 unrecorded message
    before a send holds."""
    issue_id, rec = _publish(session, settings)
    threads: set[int] = set()

    class Watching(RefusingMailer):
        def send(self, sender: str, recipient: str, message: bytes) -> None:
            threads.add(threading.get_ident())
            super().send(sender, recipient, message)

    source = LendingSource(1, lambda: Watching({}, tmp_path / "ob"), db_url)
    result = send_batch(session, settings, issue_id, rec.ids, source)
    assert +result.outcomes == Counter({"sent": 4})
    assert threads == {threading.get_ident()}
    assert source.most_unrecorded <= 1 and source.lent == 0
    assert {d.status for d in _deliveries(session, issue_id)} == {DeliveryStatus.SENT}


def test_one_pooled_connection_pipelines_each_envelope_and_records_each_message_by_its_own_reply(  # type: ignore[no-untyped-def]
    session, settings: Settings
) -> None:
    """A batch on one pooled SMTP connection sends each next message's MAIL/RCPT/DATA behind the current body (RFC
    2920 §3.1). A refused next recipient fails that delivery alone, a 452 to a body defers that one alone, and a
    connection lost between a body's reply and the next envelope's replies sends the next message once on a new
    connection; the relay receives each accepted message once."""
    from aiosmtpd.controller import Controller

    from newsletter.delivery.mailers import SmtpMailer
    from newsletter.delivery.pool import ConnectionPool, LocalSlots
    from tests.smtp_server import Recorder, free_port
    from tests.test_unit_mailers import _DroppingHandler

    issue_id, rec = _publish(session, settings)
    recorder, port = Recorder(), free_port()
    handler = _DroppingHandler(
        recorder,
        {"dan@example.com"},  # dan's envelope goes out behind cat's refused body, and the connection drops there
        rcpt_fault=lambda addr, attempt: "550 5.7.1 not for you" if addr == "bob@example.com" else None,
        data_fault=lambda addr, attempt: "452 4.3.1 full" if addr == "cat@example.com" else None,
    )
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        pool = ConnectionPool(lambda: SmtpMailer(f"smtp://127.0.0.1:{port}"), LocalSlots(1), 1)
        result = send_batch(session, settings, issue_id, sorted(rec.ids), pool)
        pool.close_idle()
    finally:
        controller.stop()
    assert +result.outcomes == Counter({"sent": 2, "failed": 1, "deferred": 1})
    assert handler.drop_at_rcpt == set() and pool.opened == 1
    rows = {d.email: d for d in _deliveries(session, issue_id)}
    assert {
        e: (r.status, r.last_smtp_code)
        for e, r in rows.items()
        if e in ("ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com")
    } == {
        "ann@example.com": (DeliveryStatus.SENT, None),
        "bob@example.com": (DeliveryStatus.FAILED, 550),
        "cat@example.com": (DeliveryStatus.DEFERRED, 452),
        "dan@example.com": (DeliveryStatus.SENT, None),
    }
    assert sorted(recorder.recipients().elements()) == ["ann@example.com", "dan@example.com"]


def test_a_pause_mid_batch_stops_a_pooled_connection_at_the_check_without_a_status_round_trip(  # type: ignore[no-untyped-def]
    session, settings: Settings, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The editor pauses while the 5th message is at the relay: the batch on one pooled connection stops at the
    check before its 11th message (`STATUS_CHECK_EVERY`), the 10th (whose envelope may be out already) sent, the
    rest handed back. On PostgreSQL the status came with the 8th message's record (one statement), so the check
    read nothing on its own; elsewhere it reads the status itself."""
    from aiosmtpd.controller import Controller

    from newsletter.db import session_factory
    from newsletter.delivery.mailers import SmtpMailer
    from newsletter.delivery.pool import ConnectionPool, LocalSlots
    from newsletter.delivery.send import STATUS_CHECK_EVERY
    from tests.smtp_server import Handler, free_port
    from tests.smtp_server import Recorder as Received

    issue_id, _ = _publish(session, settings, readers=26)
    readers = sorted(i for i, e in session.execute(select(Delivery.id, Delivery.email).where(Delivery.email.like("reader%"))))
    assert len(readers) == 26 and STATUS_CHECK_EVERY == 10
    others = session_factory(db_url)

    def pause_at_the_fifth(address: str, attempt: int) -> None:
        if address == "reader004@example.com":
            with others() as s:
                control.pause_issue(s, s.get_one(Issue, issue_id))
        return None

    reads: list[int] = []
    read_status = ledger.OutcomeWriter.issue_status
    monkeypatch.setattr(ledger.OutcomeWriter, "issue_status", lambda self, i: reads.append(i) or read_status(self, i))
    received, port = Received(), free_port()
    controller = Controller(Handler(received, data_fault=pause_at_the_fifth), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        pool = ConnectionPool(lambda: SmtpMailer(f"smtp://127.0.0.1:{port}"), LocalSlots(1), 1)
        result = send_batch(session, settings, issue_id, readers, pool)
        pool.close_idle()
    finally:
        controller.stop()
    assert +result.outcomes == Counter({"sent": 10, "released": 16})
    assert sorted(received.recipients().elements()) == [f"reader{i:03d}@example.com" for i in range(10)]
    assert reads == ([] if db_url.startswith("postgresql") else [issue_id])
    states = Counter(d.status for d in _deliveries(session, issue_id) if d.email.startswith("reader"))
    assert states == Counter({DeliveryStatus.SENT: 10, DeliveryStatus.PENDING: 16})


def test_outcome_writer_reads_the_issue_status_with_a_begun_record(session, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """`OutcomeWriter.begin_sent(..., status_of=issue)`: on PostgreSQL the same statement records the message and
    reads the issue's status (also when the claim was taken over, and None for an issue that is gone), given
    once by `taken_status`; elsewhere nothing is read (the batch then reads the status itself)."""
    issue_id, rec = _publish(session, settings)
    a, b, c, _ = rec.ids
    t0 = datetime.now(UTC)
    (stale,) = ledger.claim(session, issue_id, [a], lease_seconds=10, now=t0 - timedelta(seconds=60))
    ledger.claim(session, issue_id, [a], lease_seconds=300)  # taken over
    held = ledger.claim(session, issue_id, [b, c], lease_seconds=300)
    postgres = session.get_bind().dialect.name == "postgresql"
    writer = ledger.OutcomeWriter(session.get_bind().engine)
    try:
        writer.begin_sent(held[0], "relay-c", status_of=issue_id)
        assert writer.end_sent() == {b}
        assert writer.taken_status() == ((IssueStatus.SENDING,) if postgres else None)
        assert writer.taken_status() is None  # once
        control.pause_issue(session, session.get_one(Issue, issue_id))
        writer.begin_sent(stale, "relay-c", status_of=issue_id)
        assert writer.end_sent() == set()
        assert writer.taken_status() == ((IssueStatus.PAUSED,) if postgres else None)
        writer.begin_sent(held[1], "relay-c", status_of=issue_id + 1000)
        assert writer.end_sent() == {c}
        assert writer.taken_status() == ((None,) if postgres else None)
    finally:
        writer.close()
    rows = {r.id: r.status for r in _deliveries(session, issue_id)}
    assert (rows[a], rows[b], rows[c]) == (DeliveryStatus.SENDING, DeliveryStatus.SENT, DeliveryStatus.SENT)


def test_sender_threads_pipeline_each_envelope_and_record_each_message_by_its_own_reply(  # type: ignore[no-untyped-def]
    session, settings: Settings
) -> None:
    """``?connections=2``: each sender thread sends its next message's envelope behind its current body; a refused
    recipient and a refused body are those messages' outcomes alone, and every accepted message arrives once."""
    from aiosmtpd.controller import Controller

    from newsletter.delivery.mailers import SmtpMailer
    from newsletter.delivery.pool import ConnectionPool, LocalSlots
    from tests.smtp_server import Handler, free_port
    from tests.smtp_server import Recorder as Received

    issue_id, rec = _publish(session, settings, readers=20)
    received, port = Received(), free_port()
    handler = Handler(
        received,
        rcpt_fault=lambda addr, attempt: "550 5.7.1 not for you" if addr in ("bob@example.com", "reader007@example.com") else None,
        data_fault=lambda addr, attempt: "452 4.3.1 full" if addr in ("cat@example.com", "reader011@example.com") else None,
    )
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        pool = ConnectionPool(lambda: SmtpMailer(f"smtp://127.0.0.1:{port}"), LocalSlots(2), 2)
        result = send_batch(session, settings, issue_id, sorted(rec.ids), pool)
        pool.close_idle()
    finally:
        controller.stop()
    refused = {"bob@example.com", "reader007@example.com", "cat@example.com", "reader011@example.com"}
    assert +result.outcomes == Counter({"sent": 20, "failed": 2, "deferred": 2})
    rows = {d.email: d for d in _deliveries(session, issue_id) if d.status != DeliveryStatus.SKIPPED}
    assert {e: r.last_smtp_code for e, r in rows.items() if e in refused} == {
        "bob@example.com": 550, "reader007@example.com": 550, "cat@example.com": 452, "reader011@example.com": 452
    }  # fmt: skip
    assert sorted(received.recipients().elements()) == sorted(set(rows) - refused)
