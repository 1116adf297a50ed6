"""PostgreSQL's plans for a send batch: every statement reads the batch's rows by primary key, so the work per
batch does not grow with the issue or the subscriber list.

Regression (bench/publish.py: PostgreSQL's CPU per message at 100,000 subscribers was 3x its cost at 10,000): the
claim's ``issue_id = ? AND (status = 'pending' OR …)`` matched the (issue_id, status) index, and on a table not yet
analysed since planning PostgreSQL read every pending row of the issue through it and filtered them by id (85 ms
per claim at 20,000); the read of the claimed rows joined the subscribers and hashed the whole subscriber table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from newsletter import publishing
from newsletter.config import Settings
from newsletter.db import session_factory
from newsletter.delivery.mailers import OutboxMailer
from newsletter.delivery.send import send_batch
from newsletter.issues import create_issue
from newsletter.models import Article, Delivery, DeliveryStatus

SUBSCRIBERS = 20000
BATCH = 100


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _planned(session: Session, settings: Settings, article: Article) -> tuple[int, list[int]]:
    """A new issue of ``article`` taken through the publish steps up to planning (nothing enqueued):
    ``(issue id, delivery ids in id order)``."""
    issue = create_issue(session, [article])
    session.commit()
    publishing.request_publish(session, settings, issue)
    publishing.attach_related(session, settings, issue.id)
    publishing.render_editions(session, settings, issue.id)
    publishing.plan_deliveries(session, settings, issue.id, lambda *_: None)
    return issue.id, list(session.scalars(select(Delivery.id).where(Delivery.issue_id == issue.id).order_by(Delivery.id)))


@pytest.mark.parametrize("analysed", [False, True], ids=["deliveries-never-analysed", "analysed-before-planning"])
def test_a_send_batch_reads_its_rows_by_primary_key(pg_url: str, make_settings: Any, tmp_path: Path, analysed: bool) -> None:
    settings = make_settings(pg_url)
    with session_factory(pg_url)() as session:
        conn = session.connection()
        conn.execute(text("ALTER TABLE deliveries SET (autovacuum_enabled = false)"))  # the statistics stay as the case sets them
        conn.execute(text("ALTER TABLE subscribers SET (autovacuum_enabled = false)"))
        conn.execute(
            text(
                "INSERT INTO subscribers (email, name, lang, topics, attributes, status, created_at, paused) "
                "SELECT 'reader' || g || '@example.com', 'Reader ' || g, 'en', '[]', '{}', 'active', now(), false "
                "FROM generate_series(1, :n) g"
            ),
            {"n": SUBSCRIBERS},
        )
        article = Article(
            external_id="a1", title="T", summary="S", body_html="<p>x</p>", lang="en", published_at=datetime(2026, 1, 5, tzinfo=UTC)
        )
        session.add(article)
        session.commit()
        # The subscriber list is old and analysed; the deliveries are new: never analysed, or analysed before
        # this issue was planned (earlier issues all sent: no pending row in the statistics).
        session.execute(text("ANALYZE" if analysed else "ANALYZE subscribers"))
        session.commit()
        issue_id, ids = _planned(session, settings, article)
        assert len(ids) == SUBSCRIBERS
        # Half the issue is sent, as in the middle of a publish.
        session.execute(text("UPDATE deliveries SET status = 'sent', sent_at = now() WHERE id <= :last"), {"last": ids[SUBSCRIBERS // 2]})
        session.commit()

        statements: list[tuple[str, Any]] = []
        engine = session.get_bind()

        def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            statements.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", record)
        try:
            batch = ids[SUBSCRIBERS // 2 + 1 : SUBSCRIBERS // 2 + 1 + BATCH]
            result = send_batch(session, settings, issue_id, batch, lambda: OutboxMailer(tmp_path / "outbox"))
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert result.outcomes["sent"] == BATCH
        assert session.scalar(select(Delivery.status).where(Delivery.id == batch[-1])) == DeliveryStatus.SENT

        checked = 0
        for statement, parameters in statements:
            if not any(f"{table}." in statement for table in ("deliveries", "subscribers")):
                continue
            plan = session.connection().exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
            session.rollback()
            nodes = list(_nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]))
            for node in nodes:
                where = f"{node['Node Type']} on {node.get('Relation Name')} via {node.get('Index Name')}:\n{statement}"
                assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") in ("deliveries", "subscribers")), where
                if "Index Name" in node:  # also a bitmap index scan, which names no table
                    assert node["Index Name"] in ("deliveries_pkey", "subscribers_pkey"), where
            checked += 1
        assert checked >= 3  # the claim, the subscribers' rows, the outcomes


def test_the_sent_update_s_generic_plan_reads_by_primary_key(pg_url: str, make_settings: Any) -> None:
    """Regression (profile of bench/publish.py): the sent UPDATE is a prepared statement, and PostgreSQL runs a
    prepared statement with its generic plan once that looks no dearer. Written as ``status = 'sending' AND
    claim_token = $4 AND id = $5``, with statistics taken before the claims (no row in ``sending``), the generic
    plan read the rows through the (status, next_attempt_at) index: every row in ``sending`` and each one's dead
    versions per message. The test of state and token is now a CASE, which only the primary key can serve."""
    from newsletter.delivery import ledger

    settings = make_settings(pg_url)
    with session_factory(pg_url)() as session:
        conn = session.connection()
        conn.execute(text("ALTER TABLE deliveries SET (autovacuum_enabled = false)"))
        conn.execute(
            text(
                "INSERT INTO subscribers (email, name, lang, topics, attributes, status, created_at, paused) "
                "SELECT 'reader' || g || '@example.com', 'Reader ' || g, 'en', '[]', '{}', 'active', now(), false "
                "FROM generate_series(1, 3000) g"
            )
        )
        article = Article(
            external_id="a1", title="T", summary="S", body_html="<p>x</p>", lang="en", published_at=datetime(2026, 1, 5, tzinfo=UTC)
        )
        session.add(article)
        session.commit()
        issue_id, ids = _planned(session, settings, article)
        session.execute(text("ANALYZE deliveries"))  # every row pending
        session.commit()
        ids = ids[:200]
        claims = ledger.claim(session, issue_id, ids, lease_seconds=300)
        assert len(claims) == 200

        numbered = {"%(at)s": "$1", "%(now)s": "$2", "%(relay)s": "$3", "%(token)s": "$4", "%(id)s": "$5", "%(ids)s": "$5"}
        forms = {"one": (ledger._SENT_ONE_PQ, str(claims[0].id)), "many": (ledger._SENT_MANY, "{" + f"{claims[1].id},{claims[2].id}" + "}")}
        driver = session.connection().connection.driver_connection
        for name, (statement, ids_value) in forms.items():
            for placeholder, number in numbered.items():
                statement = statement.replace(placeholder, number)
            driver.execute("SET plan_cache_mode = force_generic_plan")
            driver.execute(f"PREPARE sent_{name} AS {statement}")
            args = ("2026-01-05 00:00:00+00", "2026-01-05 00:00:00+00", "relay", claims[0].token, ids_value)
            literals = ", ".join(f"'{a}'" for a in args)  # plain values: no quotes inside
            plan = driver.execute(f"EXPLAIN (FORMAT JSON) EXECUTE sent_{name} ({literals})").fetchone()[0]
            nodes = list(_nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]))
            used = [n.get("Index Name") for n in nodes if "Index Name" in n]
            assert used == ["deliveries_pkey"], (name, [n["Node Type"] for n in nodes], used)
        session.rollback()
