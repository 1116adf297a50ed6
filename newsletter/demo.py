"""The demo: the main job end to end on real articles, on the embedded default or real services."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from newsletter import reports
from newsletter.articles import import_articles
from newsletter.config import Settings, load_settings
from newsletter.db import session_factory, upgrade
from newsletter.issues import create_issue
from newsletter.models import Article
from newsletter.subscribers import import_subscribers

SAMPLE_DIR = Path(__file__).with_name("sample")
WHITEHOUSE = "corpus-whitehouse/whitehouse_briefing_room.jsonl"
XINWENLIANBO = "corpus-xinwenlianbo/xwlb_2024H2_items.jsonl"
EN_WEEK = date(2025, 3, 3)  # ISO week 2025-W10: 17 White House documents
ZH_WEEK = date(2024, 12, 23)  # Mon 23 – Sun 29 December 2024 of 新闻联播
ZH_PER_DAY = 2  # the two lead stories of each day's bulletin
DEMO_ATTRIBUTE = "demo"
DEMO_SEGMENT = {"attributes": {DEMO_ATTRIBUTE: "yes"}}  # the demo issue goes to the demo's own subscribers only

DEMO_TITLES = {True: {"en": "The week in the Briefing Room", "zh-Hans": "新闻联播一周要闻"},
               False: {"en": "The week in review", "zh-Hans": "一周要闻回顾"}}  # fmt: skip
DEMO_NOTES = {
    True: {"en": "This week: the President's addresses, executive actions and fact sheets, with related reading from the archive.",
           "zh-Hans": "本周《新闻联播》每日头条，以及来自往期的相关报道。"},
    False: {"en": "Security, climate and the economy this week, with related reading from the archive.",
            "zh-Hans": "本周安全、气候与经济要闻，以及往期相关报道。"},
}  # fmt: skip
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lee"]
ZH_NAMES = ["王芳", "李娜", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "黄敏", "周杰", "吴霞"]
ZH_HANT_NAMES = ["陳怡君", "林志明", "黃雅婷", "張家豪", "李淑芬", "王建宏", "吳佩珊", "劉冠廷", "蔡宗翰", "楊雅雯"]


def corpus_paths(settings: Settings) -> tuple[Path, Path, bool]:
    """The English and Chinese corpus files, and whether they are the real shared data (else the sample)."""
    en, zh = settings.data_dir / WHITEHOUSE, settings.data_dir / XINWENLIANBO
    if en.is_file() and zh.is_file():
        return en, zh, True
    return SAMPLE_DIR / "articles-en.jsonl", SAMPLE_DIR / "articles-zh-Hans.jsonl", False


class DemoRefused(RuntimeError):
    """The demo would write into a configured database or mail through a configured relay."""


def check_demo_allowed(env: dict[str, str], use_configured: bool) -> None:
    """Refuse to run the demo against a configured ``DATABASE_URL`` or ``SMTP_URL`` unless asked to.

    Raises:
        DemoRefused: with one line saying why and how to go ahead.
    """
    configured = [name for name in ("DATABASE_URL", "SMTP_URL") if (env.get(name) or "").strip()]
    if configured and not use_configured:
        raise DemoRefused(
            f"{' and '.join(configured)} {'is' if len(configured) == 1 else 'are'} set: the demo would add generated subscribers "
            "to that database and send its issue through that relay; it mails only the subscribers it generates "
            "(reserved example.* domains), but run it against real services only on purpose, with --use-configured-services "
            "(e.g. with a mail catcher such as Mailpit)"
        )


def write_subscribers(path: Path, per_lang: int) -> int:
    """A CSV of generated subscribers at the reserved example.com/.net/.org domains (RFC 2606):
    ``per_lang`` per language, plus a few rows an import must reject or merge (an invalid address, a
    domain-case duplicate), each with the attribute ``demo=yes``. Returns the rows written."""
    rows: list[dict[str, Any]] = []
    for i in range(per_lang):
        rows.append(
            {
                "email": f"reader{i:04d}@example.com",
                "name": f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}",
                "lang": "en",
                "topics": "policy;economy",
            }
        )
        rows.append({"email": f"duzhe{i:04d}@example.net", "name": ZH_NAMES[i % 10], "lang": "zh-Hans", "topics": "国内"})
        rows.append({"email": f"duzhe{i:04d}@example.org", "name": ZH_HANT_NAMES[i % 10], "lang": "zh-Hant", "topics": "國際"})
    rows.append({"email": "not-an-address", "name": "Broken", "lang": "en", "topics": ""})
    rows.append({"email": "reader0000@EXAMPLE.COM", "name": "Ada Lovelace", "lang": "en", "topics": "policy"})
    for row in rows:
        row[DEMO_ATTRIBUTE] = "yes"  # the demo issue's segment: only these rows, never anyone already in a database
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["email", "name", "lang", "topics", DEMO_ATTRIBUTE])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _week(start: date) -> tuple[datetime, datetime]:
    since = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return since, since + timedelta(days=7)


def pick_articles(session: Any, real: bool) -> list[Article]:
    """One week of White House documents (en) and the lead stories of one week of 新闻联播 (zh-Hans);
    for the sample corpus, all of it."""
    if not real:
        # The sample's newest four per language make the issue; the rest is the archive to recommend from.
        chosen: list[Article] = []
        for lang in ("en", "zh-Hans"):
            newest = session.scalars(select(Article).where(Article.lang == lang).order_by(Article.published_at.desc()).limit(4))
            chosen += sorted(newest, key=lambda a: (a.published_at, a.external_id))
        return chosen
    since, until = _week(EN_WEEK)
    en = list(session.scalars(
        select(Article).where(Article.lang == "en", Article.published_at >= since, Article.published_at < until)
        .order_by(Article.published_at, Article.external_id)
    ))  # fmt: skip
    zh: list[Article] = []
    for day in range(7):
        d = ZH_WEEK + timedelta(days=day)
        prefix = f"xwlb-{d:%Y%m%d}-"
        zh += list(session.scalars(
            select(Article).where(Article.external_id.like(prefix + "%"), Article.body_text != "")
            .order_by(Article.external_id).limit(ZH_PER_DAY)
        ))  # fmt: skip
    return en + zh


def run_demo(
    *, per_lang: int, fresh: bool, echo: Callable[[str], None], follow: Callable[[Settings, int], Any], use_configured: bool = False
) -> Any:
    """Import, subscribe, create an issue, publish it and print a summary. Returns the follow outcome.

    Without ``DATABASE_URL`` the demo lives in ``$NEWSLETTER_HOME/demo`` (default ``var/demo``),
    started afresh unless ``fresh`` is False. The issue's segment selects only the subscribers the
    demo generated (`DEMO_SEGMENT`), so even on a real database it never mails anyone else.

    Raises:
        DemoRefused: DATABASE_URL or SMTP_URL is set and ``use_configured`` is False (nothing was done).
    """
    from newsletter.runner import start_publish

    check_demo_allowed(dict(os.environ), use_configured)
    base = load_settings()
    env = dict(os.environ)
    if not env.get("DATABASE_URL"):
        home = base.home / "demo"
        if fresh and home.exists():
            shutil.rmtree(home)
        env["NEWSLETTER_HOME"] = str(home)
        env.pop("NEWSLETTER_OUTBOX", None)
    settings = load_settings(env)
    echo(f"database: {settings.describe()['DATABASE_URL']}")
    upgrade(settings.database_url)
    en_path, zh_path, real = corpus_paths(settings)
    if not real:
        echo(f"note: {settings.data_dir} has no corpora; using the small bundled sample instead")
    factory = session_factory(settings.database_url)
    with factory() as session:
        for path in (en_path, zh_path):
            rep = import_articles(session, path, rules=settings.summary_rules)
            echo(
                f"articles {path.name}: {rep.created} created, {rep.updated} updated, {rep.unchanged} unchanged, {len(rep.errors)} rejected"
            )
        csv_path = settings.home / "subscribers.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        write_subscribers(csv_path, per_lang)
        srep = import_subscribers(session, csv_path)
        rejected = f"{len(srep.errors)} rejected ({'; '.join(srep.errors)})"
        echo(f"subscribers: {srep.created} created, {srep.updated} updated, {srep.merged} merged, {rejected}")
        chosen = pick_articles(session, real)
        issue = create_issue(
            session, chosen, titles=DEMO_TITLES[real], notes=DEMO_NOTES[real],
            conversion=settings.zh_hant_conversion, phrases=settings.zh_hant_phrases,
        )  # fmt: skip
        issue.segment = DEMO_SEGMENT
        session.commit()
        number = issue.number
        echo(
            f"issue {number}: {len(chosen)} articles; editions "
            + ", ".join(e.lang + (" (converted)" if e.converted_from else "") for e in issue.editions)
        )
    issue_id, _ = start_publish(settings, number)
    outcome = follow(settings, issue_id)
    with factory() as session:
        from newsletter.issues import get_issue

        rep = reports.report(session, get_issue(session, number))
    echo(f"issue {number}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
    for (state, lang), n in sorted(rep.counts.items()):
        echo(f"  {lang:<8} {state:<9} {n}")
    if settings.smtp_urls:
        echo(f"messages went to: {', '.join(settings.describe()['SMTP_URL'].split(', '))}")
    else:
        count = len(list((settings.outbox_dir / "new").glob("*.eml")))
        echo(f"outbox: {settings.outbox_dir / 'new'} ({count} .eml files)")
    return outcome
