"""Near-duplicates inside one draft: the same story picked twice is named to the editor (CLI, API, admin)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from click.testing import CliRunner

from newsletter.cli import main
from newsletter.models import Article
from newsletter.related.duplicates import near_duplicates
from tests.cli_helpers import cli_env  # noqa: F401  (fixture)
from tests.editor_setup import make_site, sign_in

BODY = (
    "The Department of Energy announced new rules on Tuesday requiring utilities to patch industrial control "
    "systems within thirty days of a vendor advisory. Regulators said the deadline follows a year of attacks "
    "on water and power plants, and that inspectors will audit compliance starting in March."
)
OTHER = (
    "Finance ministers met in Brussels to resume talks on the budget framework, with agriculture subsidies and "
    "the recovery fund still dividing the northern and southern members ahead of the summit next month."
)


def article(id_: int, external_id: str, title: str, body: str, when: str | None, lang: str = "en") -> Article:
    published = datetime.fromisoformat(when) if when else None
    return Article(id=id_, external_id=external_id, title=title, body_text=body, lang=lang, published_at=published)


def test_a_story_filed_twice_within_days_is_named_with_both_ids() -> None:
    first = article(1, "doe-1", "Utilities must patch control systems", BODY, "2026-11-16T10:00:00")
    again = article(2, "doe-1-repost", "Utilities must patch control systems within 30 days", BODY + " Updated.", "2026-11-17T09:00:00")
    other = article(3, "budget", "Budget talks resume", OTHER, "2026-11-16T12:00:00")
    found = near_duplicates([first, other, again])
    assert [(d.first.external_id, d.second.external_id) for d in found] == [("doe-1", "doe-1-repost")]
    assert found[0].resemblance > 0.8 and found[0].days is not None and abs(found[0].days - 23 / 24) < 1e-6
    assert found[0].message().startswith("articles doe-1 and doe-1-repost look like the same story filed twice (")


def test_same_text_months_apart_or_same_title_with_other_text_is_not_a_duplicate() -> None:
    july = article(1, "ceremony-july", "Promotion ceremony held", BODY, "2026-07-31T10:00:00")
    december = article(2, "ceremony-dec", "Promotion ceremony held", BODY, "2026-12-20T10:00:00")
    same_title = article(3, "ceremony-other", "Promotion ceremony held", OTHER, "2026-07-31T12:00:00")
    assert near_duplicates([july, december, same_title]) == []  # dates apart; and a title alone proves nothing


def test_unknown_date_cannot_prove_two_copies_apart_and_chinese_copies_are_found() -> None:
    text = "国家能源局周二发布新规，要求电力企业在厂商通报后三十天内修补工业控制系统漏洞，监管部门将从三月起检查落实情况。"
    a = article(1, "zh-a", "电网安全新规出台", text, None, "zh-Hans")
    b = article(2, "zh-b", "电网安全新规出台", text + "（完）", "2026-11-16T10:00:00", "zh-Hans")
    english = article(3, "en-a", "电网安全新规出台", text, "2026-11-16T10:00:00")  # other language group: never paired
    found = near_duplicates([a, b, english])
    assert [(d.first.external_id, d.second.external_id, d.days) for d in found] == [("zh-a", "zh-b", None)]


def test_articles_without_text_are_not_compared() -> None:
    a = article(1, "t1", "Same headline", "", "2026-11-16T10:00:00")
    b = article(2, "t2", "Same headline", "", "2026-11-16T11:00:00")
    assert near_duplicates([a, b]) == []


def test_cli_warns_at_create_and_edit_and_still_creates(cli_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    records = [
        {"id": "doe-1", "title": "Utilities must patch control systems", "body": BODY, "lang": "en",
         "published_at": "2026-11-16T10:00:00Z"},
        {"id": "doe-1-repost", "title": "Utilities must patch control systems within 30 days", "body": BODY + " Updated.",
         "lang": "en", "published_at": "2026-11-17T09:00:00Z"},
        {"id": "budget", "title": "Budget talks resume", "body": OTHER, "lang": "en", "published_at": "2026-11-16T12:00:00Z"},
    ]  # fmt: skip
    corpus = tmp_path / "a.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(main, ["articles", "import", str(corpus)]).exit_code == 0

    created = runner.invoke(main, ["issue", "create", "--articles", "doe-1,budget"])
    assert created.exit_code == 0 and "warning" not in created.stderr
    edited = runner.invoke(main, ["issue", "edit", "1", "--add", "doe-1-repost"])
    assert edited.exit_code == 0, edited.output
    assert "warning: articles doe-1 and doe-1-repost look like the same story filed twice" in edited.stderr
    second = runner.invoke(main, ["issue", "create", "--articles", "doe-1-repost,doe-1"])
    assert second.exit_code == 0 and "issue 2 created with 2 articles" in second.stdout
    assert "warning: articles doe-1-repost and doe-1 look like the same story" in second.stderr


def test_api_and_admin_page_show_the_warning(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    site = make_site(make_settings(sqlite_url))
    c, h = site.client, site.auth
    records = [
        {"id": "doe-1", "title": "Utilities must patch control systems", "body": BODY, "lang": "en", "published_at": "2026-11-16"},
        {"id": "doe-2", "title": "Patch deadline for utilities", "body": BODY, "lang": "en", "published_at": "2026-11-17"},
    ]
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    assert c.post("/api/articles/import", content=body, headers={**h, "Content-Type": "application/x-ndjson"}).json()["created"] == 2

    created = c.post("/api/issues", json={"articles": ["doe-1", "sample-en-01"]}, headers=h).json()
    assert created["warnings"] == []
    n = created["number"]
    added = c.post(f"/api/issues/{n}/articles", json={"articles": ["doe-2"]}, headers=h).json()
    assert len(added["warnings"]) == 1 and added["warnings"][0].startswith("articles doe-1 and doe-2 look like the same story")
    assert c.get(f"/api/issues/{n}", headers=h).json()["warnings"] == added["warnings"]

    sign_in(c)
    page = c.get(f"/admin/issues/{n}")
    assert page.status_code == 200 and 'class="flash warning"' in page.text and "articles doe-1 and doe-2 look like" in page.text
