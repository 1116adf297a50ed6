"""Planning inside the database (newsletter.delivery.planning) selects and writes exactly what the Python
rules say: the audience of a segment (an evaluator of the rule written here in plain Python), the edition
of `edition_for` and the Message-ID of `tokens.message_id`, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from newsletter import publishing
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery.planning import hmac_pads, id_ranges, message_id_sql, plan_range, register_sqlite_functions
from newsletter.issues import create_issue
from newsletter.models import (
    LANGUAGES,
    Article,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from newsletter.segments import (
    And,
    AttributeExists,
    AttributeIn,
    Languages,
    Not,
    Or,
    Rule,
    SignedUp,
    Status,
    Topics,
    audience_conditions,
    edition_for,
    edition_sql,
    parse_segment,
)
from newsletter.tokens import message_id

SECRET, DOMAIN = "test-secret", "news.example.org"
LANGS = (*LANGUAGES, "fr", "")  # two languages no edition is written in
TOPICS = ("security", "economy", "安全", "Security", "sport")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# -- the rules in plain Python: the reference the SQL is compared with ------------------------------------
def _same_json(a: Any, b: Any) -> bool:
    # JSON equality as the segment docs define it: booleans are not numbers, 5 equals 5.0, strings exactly.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def matches(rule: Rule, sub: dict[str, Any]) -> bool:
    """Whether the subscriber (a dict of its columns) satisfies ``rule``."""
    match rule:
        case Languages(langs):
            return sub["lang"] in langs
        case Status(statuses):
            return sub["status"] in statuses
        case Topics(mode, topics):
            have = {t for t in sub["topics"] if isinstance(t, str)}
            return any(t in have for t in topics) if mode == "any" else all(t in have for t in topics)
        case AttributeIn(name, values):
            return name in sub["attributes"] and any(_same_json(sub["attributes"][name], v) for v in values)
        case AttributeExists(name, present):
            return (name in sub["attributes"]) == present
        case SignedUp(after, before):
            return (after is None or sub["created_at"] >= after) and (before is None or sub["created_at"] < before)
        case And(rules):
            return all(matches(r, sub) for r in rules)
        case Or(rules):
            return any(matches(r, sub) for r in rules)
        case Not(inner):
            return not matches(inner, sub)
    raise TypeError(rule)


def in_audience(rule: Rule, sub: dict[str, Any], suppressed: set[str]) -> bool:
    return sub["status"] == SubscriberStatus.ACTIVE and sub["email"] not in suppressed and matches(rule, sub)


SEGMENTS: list[dict[str, Any] | None] = [
    None,
    {"languages": ["en"]},
    {"languages": ["zh-Hans", "zh-Hant"]},
    {"topics": {"any": ["security", "安全"]}},
    {"topics": {"all": ["security", "economy"]}},
    {"topics": {"any": ["Security"]}, "languages": ["en", "zh-Hant"]},
    {"status": ["active"]},
    {"attributes": {"plan": "pro"}},
    {"attributes": {"seats": 5}},
    {"attributes": {"seats": {"in": ["5", True]}}},
    {"attributes": {"vip": True, "country": {"in": ["US", "CA"]}}},
    {"attributes": {"vip": {"exists": False}}},
    {"attributes": {"plan": {"exists": True}}},
    {"signed_up": {"after": "2026-01-20", "before": "2026-03-01T12:00:00+08:00"}},
    {"or": [{"languages": ["zh-Hant"]}, {"attributes": {"plan": "free"}}]},
    {"not": {"topics": {"any": ["sport"]}}},
    {"and": [{"not": {"languages": ["en"]}}, {"or": [{"topics": {"all": ["economy"]}}, {"attributes": {"seats": 5.0}}]}]},
]


def population(session: Session, n: int = 240, seed: int = 7) -> tuple[list[dict[str, Any]], set[str]]:
    """``n`` subscribers of every language, status, topic and attribute shape (seeded), a few suppressed
    and a few deleted (gaps in the ids). Returns their columns and the suppressed addresses."""
    rnd = random.Random(seed)
    values: list[Any] = ["pro", "free", 5, 5.0, "5", True, False, None, ["pro"], {"a": 1}, "US", "CA"]
    rows = []
    for i in range(n):
        attributes = {name: rnd.choice(values) for name in ("plan", "seats", "vip", "country") if rnd.random() < 0.6}
        rows.append({
            "email": f"s{i}@example.org", "name": f"S{i}", "lang": rnd.choice(LANGS),
            "topics": rnd.sample(TOPICS, rnd.randint(0, 3)), "attributes": attributes,
            "status": rnd.choice([SubscriberStatus.ACTIVE] * 4 + list(SubscriberStatus)),
            "created_at": EPOCH + timedelta(hours=rnd.randint(0, 24 * 100)),
        })  # fmt: skip
    session.add_all(Subscriber(**row) for row in rows)
    session.commit()
    suppressed = {f"s{i}@example.org" for i in range(0, n, 11)}
    session.add_all(Suppression(email=e, reason="bounce") for e in suppressed)
    gone = [f"s{i}@example.org" for i in range(5, n, 17)]
    session.execute(delete(Subscriber).where(Subscriber.email.in_(gone)))
    session.commit()
    subs = [
        {"id": s.id, "email": s.email, "lang": s.lang, "topics": s.topics, "attributes": s.attributes, "status": s.status,
         "created_at": s.created_at if s.created_at.tzinfo else s.created_at.replace(tzinfo=UTC)}
        for s in session.scalars(select(Subscriber).order_by(Subscriber.id))
    ]  # fmt: skip
    return subs, suppressed


def new_issue(session: Session, segment: dict[str, Any] | None = None) -> Issue:
    article = Article(external_id=f"a{random.random()}", title="T", summary="S", body_html="<p>x</p>", lang="en", published_at=EPOCH)
    session.add(article)
    session.flush()
    issue = create_issue(session, [article])
    issue.segment = segment
    session.commit()
    return issue


def planned(session: Session, issue_id: int) -> list[tuple[Any, ...]]:
    session.expire_all()
    return [
        (d.subscriber_id, d.email, d.lang, d.status, d.skip_reason, d.message_id, d.attempts, d.enqueued_at is not None)
        for d in session.scalars(select(Delivery).where(Delivery.issue_id == issue_id).order_by(Delivery.subscriber_id))
    ]


def expected(subs: list[dict[str, Any]], suppressed: set[str], rule: Rule, issue_id: int, editions: list[str]) -> list[tuple[Any, ...]]:
    rows = []
    for sub in subs:
        if in_audience(rule, sub, suppressed):
            edition = edition_for(sub["lang"], editions)
            status = DeliveryStatus.PENDING if edition else DeliveryStatus.SKIPPED
            mid = message_id(SECRET, issue_id, sub["id"], DOMAIN)
            rows.append((sub["id"], sub["email"], edition or sub["lang"], status, None if edition else "no-edition", mid, 0, bool(edition)))
    return rows


# -- tests ------------------------------------------------------------------------------------------------
def test_the_sql_audience_matches_the_python_rules(session: Session) -> None:
    subs, suppressed = population(session)
    editions = ["en", "zh-Hans", "zh-Hant"]
    sizes = []
    for segment in SEGMENTS:
        issue = new_issue(session, segment)
        rule = parse_segment(segment)
        now = utcnow()
        conditions = audience_conditions(rule, max_subscriber_id=10**9)
        for lo, hi in id_ranges(session, None, 37):
            plan_range(session, issue.id, conditions, editions, lo, hi, now, SECRET, DOMAIN)
        session.commit()
        want = expected(subs, suppressed, rule, issue.id, editions)
        assert planned(session, issue.id) == want, segment
        sizes.append(len(want))
    # The rules are not all trivially empty or everyone.
    assert min(sizes) > 0 and sizes.count(sizes[0]) == 2 and len(set(sizes)) > 10  # status: active is everyone


@pytest.mark.parametrize(
    "editions", [["en"], ["zh-Hans"], ["zh-Hant"], ["en", "zh-Hant"], ["zh-Hans", "zh-Hant"], ["en", "zh-Hans", "zh-Hant"]]
)
def test_editions_and_skips_match_edition_for(session: Session, editions: list[str]) -> None:
    subs, suppressed = population(session, n=60, seed=3)
    issue = new_issue(session)
    now = utcnow()
    for lo, hi in id_ranges(session, None, 1000):
        plan_range(session, issue.id, audience_conditions(None), editions, lo, hi, now, SECRET, DOMAIN)
    session.commit()
    assert planned(session, issue.id) == expected(subs, suppressed, And(()), issue.id, editions)


def test_edition_sql_agrees_with_edition_for_for_every_language(session: Session) -> None:
    for i, lang in enumerate(LANGS):
        session.add(Subscriber(email=f"l{i}@example.org", lang=lang))
    session.commit()
    for size in range(len(LANGUAGES) + 1):
        for editions in itertools.permutations(LANGUAGES, size):
            got = dict(session.execute(select(Subscriber.lang, edition_sql(list(editions)))).all())
            assert got == {lang: edition_for(lang, list(editions)) for lang in LANGS}, editions


@pytest.mark.parametrize("secret", ["test-secret", "clé secrète 秘密", "k" * 64, "long" * 40])
def test_message_ids_match_tokens(session: Session, secret: str) -> None:
    session.add_all(Subscriber(email=f"m{i}@example.org") for i in range(20))
    session.commit()
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        register_sqlite_functions(session, secret, DOMAIN)
    rows = session.execute(select(Subscriber.id, message_id_sql(dialect, secret, 123456, DOMAIN))).all()
    assert len(rows) == 20
    assert all(mid == message_id(secret, 123456, sid, DOMAIN) for sid, mid in rows)


def test_hmac_pads_are_rfc_2104() -> None:
    import hashlib
    import hmac

    for secret in ("", "k", "é" * 40, "x" * 200):
        inner, outer = hmac_pads(secret)
        msg = b"msgid:1:2"
        manual = hashlib.sha256(outer + hashlib.sha256(inner + msg).digest()).hexdigest()
        assert manual == hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def test_id_ranges_cover_every_id_once_in_chunks(session: Session) -> None:
    session.add_all(Subscriber(email=f"r{i}@example.org") for i in range(95))
    session.commit()
    session.execute(delete(Subscriber).where(Subscriber.email.in_([f"r{i}@example.org" for i in range(0, 95, 4)])))
    session.commit()
    ids = list(session.scalars(select(Subscriber.id).order_by(Subscriber.id)))
    ranges = list(id_ranges(session, ids[-3], 10))
    covered = [i for lo, hi in ranges for i in ids if i > lo and (hi is None or i <= hi) and i <= ids[-3]]
    assert covered == ids[:-2]
    assert all(sum(1 for i in ids if lo < i <= (hi or ids[-3])) <= 10 for lo, hi in ranges)
    assert ranges[-1][1] is None


def test_plan_deliveries_in_small_chunks_replans_nothing_and_enqueues_leftovers(session: Session, make_settings: Any, db_url: str) -> None:
    settings: Settings = make_settings(db_url, NEWSLETTER_PLAN_CHUNK="10", NEWSLETTER_BATCH_SIZE="7")
    subs, suppressed = population(session, n=120, seed=11)
    segment = {"or": [{"languages": ["en"]}, {"topics": {"any": ["security"]}}]}
    issue = new_issue(session, segment)
    publishing.request_publish(session, settings, issue)
    issue_id = issue.id
    publishing.render_editions(session, settings, issue_id)  # planning hands rows over once the editions are rendered
    batches: list[list[int]] = []
    assert publishing.plan_deliveries(session, settings, issue_id, lambda _i, ids: batches.append(list(ids))) == len(
        expected(subs, suppressed, parse_segment(segment), issue_id, ["en"])
    )
    rows = list(session.scalars(select(Delivery).where(Delivery.issue_id == issue_id).order_by(Delivery.id)))
    pending = [d.id for d in rows if d.status == DeliveryStatus.PENDING]
    assert [i for b in batches for i in b] == pending  # every pending row handed over once, in id order
    assert all(len(b) <= 7 for b in batches)
    assert [d.subscriber_id for d in rows] == sorted(d.subscriber_id for d in rows)  # ids follow subscribers
    assert session.get_one(Issue, issue_id).status == IssueStatus.SENDING
    # Rows that were never handed over (a broker outage) are enqueued by the next run, and only those.
    lost = pending[3:9]
    session.execute(update(Delivery).where(Delivery.id.in_(lost)).values(enqueued_at=None))
    session.execute(update(Issue).where(Issue.id == issue_id).values(status=IssueStatus.PUBLISHING))
    session.commit()
    again: list[int] = []
    assert publishing.plan_deliveries(session, settings, issue_id, lambda _i, ids: again.extend(ids)) == 0
    assert again == lost


def test_a_pause_while_planning_enqueues_is_kept(session: Session, make_settings: Any, db_url: str) -> None:
    settings: Settings = make_settings(db_url, NEWSLETTER_PLAN_CHUNK="10", NEWSLETTER_BATCH_SIZE="5")
    population(session, n=60, seed=5)
    issue = new_issue(session)
    publishing.request_publish(session, settings, issue)
    issue_id = issue.id
    publishing.render_editions(session, settings, issue_id)  # planning hands rows over once the editions are rendered
    pauser = session_factory(db_url)()  # another session, as the CLI's Ctrl-C handler or the web page would be

    def enqueue(_issue_id: int, ids: list[int]) -> None:
        pauser.execute(update(Issue).where(Issue.id == issue_id).values(status=IssueStatus.PAUSED))
        pauser.commit()

    publishing.plan_deliveries(session, settings, issue_id, enqueue)
    pauser.close()
    session.expire_all()
    assert session.get_one(Issue, issue_id).status == IssueStatus.PAUSED
