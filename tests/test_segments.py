"""Segments: the JSON rule format, its SQL on SQLite and PostgreSQL, the audience invariants, `segment preview`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.cli import main
from newsletter.db import session_factory
from newsletter.models import Subscriber, SubscriberStatus, Suppression
from newsletter.segments import (
    MAX_DEPTH,
    And,
    AttributeExists,
    AttributeIn,
    Languages,
    Not,
    Or,
    SegmentError,
    SignedUp,
    Status,
    Topics,
    audience,
    count_audience,
    edition_for,
    parse_segment,
    stream_audience,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# fmt: off
# Active, unsuppressed subscribers: the only ones any rule may select.
ACTIVE = {
    "ann": dict(lang="en", topics=["security", "economy"], attributes={"plan": "pro", "country": "US", "seats": 5, "vip": True}, created_at=at("2026-01-15T00:00:00")),
    "bob": dict(lang="en", topics=["economy"], attributes={"plan": "free", "country": "CA", "seats": "5", "vip": False}, created_at=at("2026-03-01T09:00:00")),
    "li": dict(lang="zh-Hans", topics=["安全", "security"], attributes={"plan": "pro", "country": "CN", "seats": 5.0}, created_at=at("2026-05-31T23:00:00")),
    "chen": dict(lang="zh-Hant", topics=[], attributes={"plan": None, "tags": ["pro"]}, created_at=at("2026-06-01T00:00:00")),
}
# Never selected, whatever the rule: they match every topic/language rule above so a leak would show.
EXCLUDED = {
    "pending": dict(lang="en", status=SubscriberStatus.PENDING),
    "unsub": dict(lang="en", status=SubscriberStatus.UNSUBSCRIBED),
    "bounced": dict(lang="zh-Hans", status=SubscriberStatus.BOUNCED),
    "complained": dict(lang="zh-Hant", status=SubscriberStatus.COMPLAINED),
    "suppressed": dict(lang="en"),  # active, but its address is in the suppressions table
}
EVERYONE = set(ACTIVE)
# fmt: on


def add(session: Session, name: str, **fields: Any) -> Subscriber:
    values: dict[str, Any] = dict(
        email=f"{name}@example.org", lang="en", topics=["security", "economy", "安全"],
        attributes={"plan": "pro", "country": "US", "seats": 5, "vip": True}, status=SubscriberStatus.ACTIVE,
    )  # fmt: skip
    values.update(fields)
    subscriber = Subscriber(**values)
    session.add(subscriber)
    session.commit()
    return subscriber


@pytest.fixture
def people(session: Session) -> Session:
    for name, fields in {**ACTIVE, **EXCLUDED}.items():
        add(session, name, **fields)
    session.add(Suppression(email="suppressed@example.org", reason="complaint"))
    session.commit()
    return session


def names(session: Session, rule: Any, **kw: Any) -> set[str]:
    found = {s.email.split("@")[0] for s in session.scalars(audience(rule, **kw))}
    assert count_audience(session, rule, **kw) == len(found)
    return found


# fmt: off
RULES: list[tuple[Any, set[str]]] = [
    # everyone (the existing forms keep working)
    (None, EVERYONE),
    ({}, EVERYONE),
    # languages
    ({"languages": ["en"]}, {"ann", "bob"}),
    ({"languages": ["zh-Hans", "zh-Hant"]}, {"li", "chen"}),
    # topics
    ({"topics": {"any": ["security"]}}, {"ann", "li"}),
    ({"topics": {"any": ["安全", "economy"]}}, {"ann", "bob", "li"}),
    ({"topics": {"all": ["security", "economy"]}}, {"ann"}),
    ({"topics": {"all": ["security"]}}, {"ann", "li"}),
    ({"topics": {"any": ["Security"]}}, set()),  # topics match exactly
    ({"topics": {"any": ["economy"], "all": ["security"]}}, {"ann"}),
    # status may only narrow
    ({"status": ["active"]}, EVERYONE),
    # attributes: equality keeps the JSON type apart ("5" is not 5, true is not 1, a list is not its element)
    ({"attributes": {"plan": "pro"}}, {"ann", "li"}),
    ({"attributes": {"seats": 5}}, {"ann", "li"}),  # 5.0 == 5 as numbers
    ({"attributes": {"seats": "5"}}, {"bob"}),
    ({"attributes": {"vip": True}}, {"ann"}),
    ({"attributes": {"vip": False}}, {"bob"}),
    ({"attributes": {"seats": 1}}, set()),
    ({"attributes": {"tags": "pro"}}, set()),
    ({"attributes": {"country": {"in": ["US", "CA"]}}}, {"ann", "bob"}),
    ({"attributes": {"seats": {"in": [5, "x"]}}}, {"ann", "li"}),
    ({"attributes": {"plan": "pro", "country": "CN"}}, {"li"}),
    ({"attributes": {"vip": {"exists": True}}}, {"ann", "bob"}),
    ({"attributes": {"plan": {"exists": True}}}, EVERYONE),  # chen's plan is null: present
    ({"attributes": {"vip": {"exists": False}}}, {"li", "chen"}),
    ({"attributes": {"no-such_key": {"exists": False}}}, EVERYONE),
    # signed_up: after <= created_at < before, in UTC
    ({"signed_up": {"after": "2026-01-15"}}, EVERYONE),
    ({"signed_up": {"after": "2026-01-15T00:00:01Z"}}, {"bob", "li", "chen"}),
    ({"signed_up": {"before": "2026-06-01"}}, {"ann", "bob", "li"}),
    ({"signed_up": {"before": "2026-06-01T08:00:00+08:00"}}, {"ann", "bob", "li"}),
    ({"signed_up": {"after": "2026-02-01", "before": "2026-06-01"}}, {"bob", "li"}),
    # combinators
    ({"and": [{"languages": ["en"]}, {"topics": {"any": ["security"]}}]}, {"ann"}),
    ({"or": [{"languages": ["zh-Hant"]}, {"attributes": {"country": "CA"}}]}, {"bob", "chen"}),
    ({"not": {"languages": ["en"]}}, {"li", "chen"}),  # not: never brings back the excluded
    ({"not": {"status": ["active"]}}, set()),
    ({"not": {"topics": {"any": ["security"]}}}, {"bob", "chen"}),
    ({"not": {"or": [{"languages": ["en"]}, {"attributes": {"vip": {"exists": True}}}]}}, {"li", "chen"}),
    ({"or": [{}, {"languages": ["en"]}]}, EVERYONE),
    ({"languages": ["en", "zh-Hans"], "or": [{"topics": {"any": ["security"]}}, {"signed_up": {"after": "2026-03-01"}}], "not": {"attributes": {"plan": "free"}}}, {"ann", "li"}),
]
# fmt: on


@pytest.mark.parametrize(("rule", "expected"), RULES, ids=[json.dumps(r, ensure_ascii=False) for r, _ in RULES])
def test_rule_selects(people: Session, rule: Any, expected: set[str]) -> None:
    assert names(people, rule) == expected


def test_rules_of_one_shape_with_other_values_on_one_engine(people: Session) -> None:
    # The compiled SQL is cached per statement shape: values must still be bound afresh each time.
    for _ in range(2):
        for rule, expected in RULES:
            assert names(people, rule) == expected, rule


def test_excluded_subscribers_are_never_selected(people: Session) -> None:
    widest = {"or": [{}, {"not": {}}, {"languages": ["en", "zh-Hans", "zh-Hant"]}, {"not": {"languages": ["en"]}}]}
    assert names(people, widest) == EVERYONE
    for name in ("ann", "bob"):
        people.add(Suppression(email=f"{name}@example.org", reason="unsubscribe"))
    li = people.scalars(select(Subscriber).where(Subscriber.email == "li@example.org")).one()
    li.status = SubscriberStatus.BOUNCED
    people.commit()
    assert names(people, widest) == {"chen"}


def test_the_audience_is_frozen_at_publish(people: Session) -> None:
    frozen = max(people.scalars(select(Subscriber.id)))
    late = add(people, "late", lang="en", topics=["security"])
    assert late.id > frozen
    assert "late" in names(people, {"topics": {"any": ["security"]}})
    assert names(people, {"topics": {"any": ["security"]}}, max_subscriber_id=frozen) == {"ann", "li"}
    chunks = list(stream_audience(people, {"languages": ["en", "zh-Hans"]}, max_subscriber_id=frozen, chunk=1))
    assert [[s.email for s in c] for c in chunks] == [["ann@example.org"], ["bob@example.org"], ["li@example.org"]]
    everyone = [s.email.split("@")[0] for c in stream_audience(people, None, max_subscriber_id=None, chunk=2) for s in c]
    assert everyone == ["ann", "bob", "li", "chen", "late"]  # id order


def test_a_parsed_rule_is_accepted_too(people: Session) -> None:
    rule = parse_segment({"languages": ["en"]})
    assert names(people, rule) == {"ann", "bob"}
    assert [s.email for c in stream_audience(people, rule, max_subscriber_id=None) for s in c] == ["ann@example.org", "bob@example.org"]


def test_an_invalid_rule_fails_before_any_query(session: Session) -> None:
    with pytest.raises(SegmentError, match="unknown language 'fr'"):
        audience({"languages": ["fr"]})
    with pytest.raises(SegmentError, match="'bounced' subscribers are never mailed"):
        count_audience(session, {"status": ["bounced"]})
    with pytest.raises(SegmentError, match="unknown key 'lang'"):
        next(stream_audience(session, {"lang": "en"}, max_subscriber_id=None))


# -- parsing ----------------------------------------------------------------------------------------
def test_parse_builds_typed_rules() -> None:
    assert parse_segment(None) == And(())
    assert parse_segment({"languages": ["en", "en"]}) == Languages(("en",))
    assert parse_segment({
        "topics": {"all": ["b"], "any": ["a"]},
        "status": ["active"],
        "attributes": {"plan": "pro", "country": {"in": ["US", 1, True]}, "vip": {"exists": False}},
        "signed_up": {"after": "2026-01-01", "before": "2026-06-01T08:00:00+08:00"},
        "or": [{"languages": ["zh-Hans"]}, {"not": {"languages": ["en"]}}],
    }) == And((
        Topics("any", ("a",)), Topics("all", ("b",)),
        Status((SubscriberStatus.ACTIVE,)),
        AttributeIn("plan", ("pro",)), AttributeIn("country", ("US", 1, True)), AttributeExists("vip", False),
        SignedUp(at("2026-01-01T00:00:00"), at("2026-06-01T00:00:00")),
        Or((Languages(("zh-Hans",)), Not(Languages(("en",))))),
    ))  # fmt: skip


WIDEN = "subscribers are never mailed: a rule may narrow the audience to 'active', never widen it"
# fmt: off
INVALID: list[tuple[Any, str]] = [
    ([], "segment: must be a JSON object, got an empty list"),
    (["en"], "segment: must be a JSON object, got a list"),
    ("en", "segment: must be a JSON object, got a string"),
    ({"langs": ["en"]}, "segment: unknown key 'langs' (expected one of: and, attributes, languages, not, or, signed_up, status, topics)"),
    ({"languages": "en"}, 'segment.languages: must be a non-empty list of non-empty strings, got "en"'),
    ({"languages": []}, "segment.languages: must be a non-empty list of non-empty strings, got []"),
    ({"languages": ["en", ""]}, 'segment.languages: must be a non-empty list of non-empty strings, got ["en", ""]'),
    ({"languages": ["fr"]}, "segment.languages: unknown language 'fr' (use en, zh-Hans, zh-Hant)"),
    ({"languages": ["zh-CN"]}, "segment.languages: unknown language 'zh-CN' (use en, zh-Hans, zh-Hant)"),
    ({"topics": ["security"]}, 'segment.topics: must be an object like {"any": [...]} or {"all": [...]}, got a list'),
    ({"topics": {}}, 'segment.topics: must be an object like {"any": [...]} or {"all": [...]}, got an empty object'),
    ({"topics": {"none": ["x"]}}, "segment.topics: unknown key 'none' (expected 'any' and/or 'all')"),
    ({"topics": {"any": []}}, "segment.topics.any: must be a non-empty list of non-empty strings, got []"),
    ({"topics": {"all": [1]}}, "segment.topics.all: must be a non-empty list of non-empty strings, got [1]"),
    ({"status": ["unsubscribed"]}, f"segment.status: 'unsubscribed' {WIDEN}"),
    ({"status": ["active", "bounced"]}, f"segment.status: 'bounced' {WIDEN}"),
    ({"status": ["complained"]}, f"segment.status: 'complained' {WIDEN}"),
    ({"status": ["active", "pending"]}, f"segment.status: 'pending' {WIDEN}"),
    ({"status": ["gone"]}, "segment.status: unknown status 'gone' (the only one a rule may select is 'active')"),
    ({"status": "active"}, 'segment.status: must be a non-empty list of non-empty strings, got "active"'),
    ({"attributes": {}}, "segment.attributes: must be a non-empty object of attribute conditions, got an empty object"),
    ({"attributes": ["plan"]}, "segment.attributes: must be a non-empty object of attribute conditions, got a list"),
    ({"attributes": {"plan": ["pro", "free"]}}, 'segment.attributes.plan: a list is ambiguous here; to match one of several values use {"in": [...]}'),
    ({"attributes": {"plan": None}}, 'segment.attributes.plan: must be a string, number or boolean, got null (use {"exists": ...} for presence)'),
    ({"attributes": {"plan": {"eq": "pro"}}}, "segment.attributes.plan: expected a value, {\"in\": [...]} or {\"exists\": true|false}, got keys ['eq']"),
    ({"attributes": {"plan": {"in": ["a"], "exists": True}}}, "segment.attributes.plan: expected a value, {\"in\": [...]} or {\"exists\": true|false}, got keys ['exists', 'in']"),
    ({"attributes": {"plan": {"in": []}}}, "segment.attributes.plan.in: must be a non-empty list of strings, numbers or booleans, got an empty list"),
    ({"attributes": {"plan": {"in": "pro"}}}, "segment.attributes.plan.in: must be a non-empty list of strings, numbers or booleans, got a string"),
    ({"attributes": {"plan": {"in": [{"a": 1}]}}}, 'segment.attributes.plan.in: must be a string, number or boolean, got an object (use {"exists": ...} for presence)'),
    ({"attributes": {"vip": {"exists": "yes"}}}, "segment.attributes.vip.exists: must be true or false, got a string"),
    ({"attributes": {"score": float("nan")}}, "segment.attributes.score: nan is not a JSON number"),
    ({"attributes": {"a.b": 1}}, "segment.attributes.a.b: attribute names are 1-64 letters, digits, '_' or '-', starting with a letter or '_'"),
    ({"attributes": {'x"]': 1}}, "segment.attributes.x\"]: attribute names are 1-64 letters, digits, '_' or '-', starting with a letter or '_'"),
    ({"signed_up": "2026-01-01"}, 'segment.signed_up: must be an object like {"after": "2026-01-01", "before": "2026-06-01"}, got a string'),
    ({"signed_up": {"since": "2026-01-01"}}, "segment.signed_up: unknown key 'since' (expected 'after' and/or 'before')"),
    ({"signed_up": {"after": "2026-13-01"}}, "segment.signed_up.after: must be an ISO 8601 date or date-time such as '2026-01-01', got \"2026-13-01\""),
    ({"signed_up": {"before": 2026}}, "segment.signed_up.before: must be an ISO 8601 date or date-time such as '2026-01-01', got 2026"),
    ({"signed_up": {"after": "2026-06-01", "before": "2026-01-01"}}, "segment.signed_up: 'after' (2026-06-01) must be earlier than 'before' (2026-01-01)"),
    ({"signed_up": {"after": "2026-06-01", "before": "2026-06-01T08:00:00+08:00"}}, "segment.signed_up: 'after' (2026-06-01) must be earlier than 'before' (2026-06-01T08:00:00+08:00)"),
    ({"or": []}, "segment.or: must be a non-empty list of rules, got an empty list"),
    ({"and": {"languages": ["en"]}}, "segment.and: must be a non-empty list of rules, got an object"),
    ({"or": [{"languages": ["en"]}, "zh-Hans"]}, "segment.or[1]: must be a JSON object, got a string"),
    ({"or": [{"languages": ["en"]}, {"status": ["bounced"]}]}, f"segment.or[1].status: 'bounced' {WIDEN}"),
    ({"not": {"status": ["unsubscribed"]}}, f"segment.not.status: 'unsubscribed' {WIDEN}"),
    ({"and": [{"not": {"colour": "red"}}]}, "segment.and[0].not: unknown key 'colour' (expected one of: and, attributes, languages, not, or, signed_up, status, topics)"),
    ({"not": None}, "segment.not: must be a JSON object, got null"),
]
# fmt: on


@pytest.mark.parametrize(("rule", "message"), INVALID, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(INVALID)])
def test_invalid_rules_are_named(rule: Any, message: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse_segment(rule)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == message.split(": ")[0]


def test_nesting_is_limited() -> None:
    rule: dict[str, Any] = {"languages": ["en"]}
    for _ in range(MAX_DEPTH):
        rule = {"not": rule}
    assert parse_segment(rule) is not None
    with pytest.raises(SegmentError, match=f"nested more than {MAX_DEPTH} deep"):
        parse_segment({"not": rule})


def test_edition_for_falls_back() -> None:
    assert edition_for("zh-Hant", ["en", "zh-Hans"]) == "zh-Hans"
    assert edition_for("zh-Hans", ["en"]) == "en"
    assert edition_for("en", ["zh-Hans"]) is None


# -- newsletter segment preview ---------------------------------------------------------------------
@pytest.fixture
def cli_db(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    for key in ("REDIS_URL", "SMTP_URL", "NEWSLETTER_OUTBOX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NEWSLETTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "segment-test-secret")
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "https://news.example.org")
    monkeypatch.chdir(tmp_path)
    with session_factory(sqlite_url)() as session:
        yield session  # type: ignore[misc]


def preview(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["segment", "preview", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_preview_prints_the_count_and_a_sample(cli_db: Session) -> None:
    for i in range(12):
        add(cli_db, f"en{i:02}", lang="en", topics=["security", "economy"] if i % 2 else [])
    add(cli_db, "li", lang="zh-Hans", topics=["安全"])
    add(cli_db, "gone", lang="en", status=SubscriberStatus.UNSUBSCRIBED)

    code, out = preview('{"languages": ["en"]}')
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "12 subscribers in the audience"
    assert lines[1] == "  en00@example.org  en       -"
    assert lines[2] == "  en01@example.org  en       security, economy"
    assert len(lines) == 1 + 10 + 1 and lines[-1] == "  ... and 2 more"

    code, out = preview('{"topics": {"any": ["安全"]}}')
    assert code == 0 and out == "1 subscriber in the audience\n  li@example.org  zh-Hans  安全\n"


def test_preview_reads_a_rule_file(cli_db: Session, tmp_path: Path) -> None:
    add(cli_db, "ann", lang="en", attributes={"plan": "pro"})
    add(cli_db, "bob", lang="en", attributes={"plan": "free"})
    (tmp_path / "rule.json").write_text('{"attributes": {"plan": {"in": ["pro"]}}}', encoding="utf-8")
    code, out = preview("@rule.json")
    assert code == 0, out
    assert out.splitlines()[0] == "1 subscriber in the audience" and "ann@example.org" in out and "bob@" not in out


def test_preview_of_nobody(cli_db: Session) -> None:
    code, out = preview("{}")
    assert (code, out) == (0, "0 subscribers in the audience: no active, unsuppressed subscribers\n")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('{"status": ["bounced"]}', f"Invalid value for RULE: segment.status: 'bounced' {WIDEN}"),
        ('{"languages": ["en"]', "Invalid value for RULE: RULE is not valid JSON: Expecting ',' delimiter: line 1 column 21 (char 20)"),
        ('{"languages": ["en"], "languages": ["zh-Hans"]}', "Invalid value for RULE: RULE is not valid JSON: duplicate key 'languages'"),
        ('["en"]', "Invalid value for RULE: segment: must be a JSON object, got a list"),
        ("@missing.json", "Invalid value for RULE: cannot read missing.json: No such file or directory"),
    ],
)
def test_preview_rejects_bad_rules(cli_db: Session, rule: str, message: str) -> None:
    code, out = preview(rule)
    assert code == 2
    assert out.splitlines()[-1] == f"Error: {message}"


def test_preview_on_an_unmigrated_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "segment-test-secret")
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "https://news.example.org")
    code, out = preview("{}")
    assert code == 1
    assert "cannot query the database (no such table: subscribers); has 'newsletter db upgrade' been run?" in out


def test_segment_commands_have_help(cli_db: Session) -> None:
    for args in (["--help"], ["segment", "--help"], ["segment", "preview", "--help"]):
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0 and "Usage:" in result.output, args
    out = CliRunner().invoke(main, ["segment", "preview", "--help"]).output
    assert '"topics":     {"any": ["security"]}' in out and "@FILE" in out
    assert "segment" in CliRunner().invoke(main, ["--help"]).output
