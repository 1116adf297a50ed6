"""The bulk paths of the imports keep every rule of the row-by-row ones: erased addresses refused, every
bad address named (the memoised domain check does not hide repeats), defaults of new rows, updates merged."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.erasure import erase_subscriber
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.subscribers import import_subscribers, unsubscribe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subs.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_erased_suppressed_address_is_refused_on_every_row(session: Session, tmp_path: Path) -> None:
    first = import_subscribers(session, write(tmp_path, "email,name\ngone@example.org,Gone\nstay@example.org,Stay\n"))
    assert first.created == 2
    gone = session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.org"))
    assert gone is not None
    unsubscribe(session, gone.id)
    assert erase_subscriber(session, gone.id)
    again = "email,name,lang\ngone@example.org,A\nnew@example.org,New,zh-TW\ngone@EXAMPLE.org,B\n"
    report = import_subscribers(session, write(tmp_path, again))
    assert report.created == 1 and report.merged == 0
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 4"]
    assert all("erased on its owner's request" in e for e in report.errors)
    assert session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.org")) is None
    new = session.scalar(select(Subscriber).where(Subscriber.email == "new@example.org"))
    assert new is not None and (new.lang, new.status, new.topics, new.attributes) == ("zh-Hant", SubscriberStatus.ACTIVE, [], {})
    assert new.confirmed_at is not None and new.soft_bounces == 0


def test_every_row_with_a_bad_domain_is_named_and_good_domains_normalised(session: Session, tmp_path: Path) -> None:
    rows = ["email", "a@bad_domain.example", "b@bad_domain.example", "c@Good.Example", "d@GOOD.example", "e@bad_domain.example"]
    report = import_subscribers(session, write(tmp_path, "\n".join(rows) + "\n"))
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 3", "line 6"]
    assert sorted(session.scalars(select(Subscriber.email))) == ["c@good.example", "d@good.example"]


def test_new_and_existing_rows_in_one_chunk(session: Session, tmp_path: Path) -> None:
    import_subscribers(session, write(tmp_path, "email,name,plan,signed_up\nold@example.org,Old,free,2026-01-02\n"))
    text = "email,name,plan,country\nold@example.org,Old,pro,US\nfresh@example.org,Fresh,,CA\nfresh@EXAMPLE.ORG,Fresher,pro,\n"
    report = import_subscribers(session, write(tmp_path, text))
    assert (report.created, report.updated, report.merged, report.errors) == (1, 1, 1, [])
    old = session.scalar(select(Subscriber).where(Subscriber.email == "old@example.org"))
    assert old is not None and old.attributes == {"plan": "pro", "country": "US"} and old.created_at.year == 2026
    fresh = session.scalar(select(Subscriber).where(Subscriber.email == "fresh@example.org"))
    assert fresh is not None and fresh.name == "Fresher" and fresh.attributes == {"country": "CA", "plan": "pro"}
