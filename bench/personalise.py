"""Benchmark: building personalised messages from one rendered edition vs rendering per subscriber.

The service renders and CSS-inlines each edition once, then fills the personal markers per subscriber
(`newsletter.rendering.personalise`) and builds the MIME message. The baseline, measured in the same
run, is the naive way: Jinja2 + premailer for every subscriber. Both produce a complete message.

    python bench/personalise.py                 # 300 subscribers, 15 articles of the bundled sample
    python bench/personalise.py --subscribers 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from newsletter.mime import Envelope, build_message, to_bytes
from newsletter.rendering import ArticleView, EditionContent, greeting, personalise, render_edition

SAMPLE = Path(__file__).resolve().parent.parent / "newsletter" / "sample" / "articles-en.jsonl"


def edition(n_articles: int) -> EditionContent:
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    articles = tuple(
        ArticleView(title=r["title"], summary=r["body"].split("\n\n")[0][:300], url=r["url"], category=r["category"])
        for r in (records * 3)[:n_articles]
    )
    return EditionContent(number=48, lang="en", title="The week in review", date="30 November 2026",
                          web_url="https://news.example.org/issues/48/en", articles=articles,
                          editors_note="Security, climate and the economy this week.")  # fmt: skip


def message(content: EditionContent, i: int, html: str, text: str, subject: str) -> bytes:
    env = Envelope(from_header="The Weekly Review <weekly@news.example.org>", to_address=f"reader{i}@example.com",
                   to_name=f"Reader {i}", subject=subject, message_id=f"<issue48.{i}@news.example.org>",
                   list_id="weekly.news.example.org", unsubscribe_url=f"https://news.example.org/unsubscribe/{i}", lang="en")  # fmt: skip
    return to_bytes(build_message(env, text, html))


def values(i: int) -> dict[str, str]:
    return {
        "GREETING": greeting("en", f"Reader {i}"),
        "EMAIL": f"reader{i}@example.com",
        "UNSUBSCRIBE_URL": f"https://news.example.org/unsubscribe/{i}",
        "PREFERENCES_URL": f"https://news.example.org/preferences/{i}",
    }


def once(content: EditionContent, n: int) -> float:
    start = time.perf_counter()
    rendered = render_edition(content)
    for i in range(n):
        v = values(i)
        message(content, i, personalise(rendered.html, v, escape=True), personalise(rendered.text, v, escape=False), rendered.subject)
    return time.perf_counter() - start


def per_subscriber(content: EditionContent, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        rendered = render_edition(content)  # Jinja2 + premailer every time
        v = values(i)
        message(content, i, personalise(rendered.html, v, escape=True), personalise(rendered.text, v, escape=False), rendered.subject)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--articles", type=int, default=15)
    args = parser.parse_args()
    content = edition(args.articles)
    fast = once(content, args.subscribers)
    slow = per_subscriber(content, args.subscribers)
    n = args.subscribers
    print(f"{'method':<28} {'seconds':>8} {'messages/s':>11}")
    print(f"{'render once + personalise':<28} {fast:>8.2f} {n / fast:>11,.0f}")
    print(f"{'render per subscriber':<28} {slow:>8.2f} {n / slow:>11,.0f}")
    print(f"speed-up: x{slow / fast:.1f} ({args.articles} articles, {n} subscribers)")


if __name__ == "__main__":
    main()
