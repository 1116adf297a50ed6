"""Fields an import leaves pending (the HTML of a Markdown body, a missing summary) are made on first use,
stored once, and equal what the eager conversion made; the cheap index text and the faster tokeniser give
the index terms the previous code gave."""

from __future__ import annotations

import itertools
import json
import random
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import markdown
import numpy as np
from sqlalchemy import select

from newsletter.article_text import derive
from newsletter.articles import import_lines, read_jsonl, record_to_fields
from newsletter.content import html_to_text, markdown_plain_text, sanitise_html, strip_links
from newsletter.issues import search_articles
from newsletter.models import Article
from newsletter.publishing import _related_view, _view
from newsletter.related import text as T
from newsletter.summaries import BUILTIN_RULES, summarise

RECORDS: list[dict[str, Any]] = [
    {"id": "md-1", "title": "Ports  move\nfaster", "lang": "en", "url": "https://www.whitehouse.gov/briefing-room/x/",
     "body": "Washington, D.C.\n\nThe **xylophone** plan cuts port waits in half. It starts in May.\n\n![](/img/a.jpg)\n\n"
             "See [the order](/briefing-room/order/) and <script>alert('evil')</script> more. <ports@example.org>",
     "published_at": "2026-11-16T10:00:00Z"},
    {"id": "html-1", "title": "电网安全新规", "lang": "zh-Hans", "url": "https://tv.cctv.com/x",
     "body_html": "<p>央视网消息（新闻联播）：今天，会议在京召开。</p><p onclick='x()'>第二段<script>evil()</script></p>",
     "published_at": "2026-11-16"},
    {"id": "given", "title": "Given summary", "lang": "en", "summary": "Written by an editor.", "body": "Body *text*.",
     "published_at": "2026-11-15"},
]  # fmt: skip


def old_conversion(record: dict[str, Any]) -> tuple[str, str]:
    """(body_html, summary) as `record_to_fields` made them for every record before they were deferred."""
    url = record.get("url") or record.get("source_url") or None
    base = url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
    title = " ".join(record["title"].split())
    if record.get("body_html"):
        body_html = sanitise_html(str(record["body_html"]), base_url=base, image_alt=title)
        body_text = html_to_text(body_html, links=False)
    else:
        body_html = sanitise_html(markdown.markdown(str(record.get("body") or ""), output_format="html"), base_url=base, image_alt=title)
        body_text = strip_links(html_to_text(body_html, links=False))
    return body_html, str(record.get("summary") or summarise(body_text, record["lang"], url=url, rules=BUILTIN_RULES))


def stored(session, external_id: str) -> tuple[str, str, bool]:  # type: ignore[no-untyped-def]
    """(summary, body_html, text_pending) as the row holds them, without the ORM attributes."""
    table = Article.__table__
    row = session.execute(select(table.c.summary, table.c.body_html, table.c.text_pending).where(table.c.external_id == external_id)).one()
    return row[0], row[1], bool(row[2])


def test_pending_fields_are_made_on_first_use_equal_to_the_eager_ones_and_stored(session) -> None:  # type: ignore[no-untyped-def]
    report = import_lines(session, [json.dumps(r, ensure_ascii=False) for r in RECORDS])
    assert (report.created, report.errors) == (3, [])
    assert stored(session, "md-1") == ("", "", True)  # nothing converted at import
    html_summary, html_body, pending = stored(session, "html-1")
    assert (html_summary, pending) == ("", True) and "script" not in html_body and "onclick" not in html_body  # sanitised at import
    assert stored(session, "given")[0] == "Written by an editor."

    session.expire_all()
    for record in RECORDS:
        article = session.scalar(select(Article).where(Article.external_id == record["id"]))
        assert (article.body_html, article.summary) == old_conversion(record)  # made here, on first use
    session.commit()
    for record in RECORDS:
        summary, body_html, pending = stored(session, record["id"])
        assert (body_html, summary, pending) == (*old_conversion(record), False)  # stored: made once
    assert (
        stored(session, "md-1")[0]
        == "The xylophone plan cuts port waits in half. It starts in May. See the order and more. ports@example.org"
    )


def test_views_of_pending_articles_equal_those_of_eagerly_converted_ones() -> None:
    for record in RECORDS:
        pending = Article(**record_to_fields(record, defer=True), id=1)
        eager = Article(**record_to_fields(record), id=1)
        assert pending.text_pending and not eager.text_pending
        assert _view(pending, None, "u") == _view(eager, None, "u") and _related_view(pending, None, "u") == _related_view(eager, None, "u")
        assert not pending.text_pending  # the first read made everything


def test_a_search_finds_words_of_a_pending_summary_without_making_it(session) -> None:  # type: ignore[no-untyped-def]
    """The plain text kept at import is searched: a search after a large import does not pay for every
    pending summary (it made them all, about 10 ms each, before)."""
    import_lines(session, [json.dumps(r, ensure_ascii=False) for r in RECORDS])
    found, total = search_articles(session, "XYLOPHONE")
    assert [a.external_id for a in found] == ["md-1"] and total == 1
    assert stored(session, "html-1")[2] is True  # still pending: nothing was made for the search


def test_deferred_conversion_equals_the_eager_one_on_the_white_house_corpus(shared_data: Path) -> None:
    with (shared_data / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for n, line in enumerate(handle) if n % 8 == 0]
    for record in records:
        article = Article(**record_to_fields(record, defer=True))
        assert article.text_pending and article.stored_body_html == "" and article.stored_summary == ""
        assert (article.body_html, article.summary) == old_conversion(record), record["id"]
        assert derive(article, BUILTIN_RULES) is False  # nothing left to make


def test_worker_processes_give_the_deferred_fields_and_index_entries_one_process_gives() -> None:
    lines = [json.dumps({**RECORDS[i % 3], "id": f"r{i}"}, ensure_ascii=False) for i in range(300)]
    serial = list(read_jsonl(lines, workers=1, defer=True, index=True))
    assert serial == list(read_jsonl(lines, workers=2, defer=True, index=True))
    assert all(fields["related_index"]["body_terms"] for _, fields in serial)


def test_markdown_plain_text_keeps_no_script_nor_link_targets() -> None:
    text = markdown_plain_text(
        "A [link](https://x.org/a) and https://y.org <script>evil()</script><style>p{}</style> M<sup>th</sup> &amp; ![i](https://i.org/a.png)\n\n<script>open"
    )
    assert "evil" not in text and "x.org" not in text and "y.org" not in text and "i.org" not in text and "open" not in text
    assert "link" in text and "Mth" in text and "&" in text


def test_plain_text_guards_skip_only_patterns_that_cannot_match(shared_data: Path) -> None:
    """`markdown_plain_text` and `strip_links` run a regex only when its fixed string is in the text: the same
    text as running every pattern, on the corpora and on random strings of the patterns' characters."""
    from newsletter import content as C

    def every_pattern(text: str) -> str:
        if "<" in text:
            text = C._TAG.sub(C._tag_gap, C._SKIPPED.sub(" ", text))
        if "]" in text:
            text = C._MD_REFERENCE.sub("", C._MD_IMAGE.sub(" ", text))
        text = C.unescape(text) if "&" in text else text
        return C._BARE_URL.sub("", C._MD_LINK.sub(r"\1", text))

    rnd = random.Random(3)
    texts = ["<SCRIPT>x</SCRIPT> a", "<sTyle>p{}", "x ![a](b) [r]: http://x.org\n [r]: y", "<s>strike</s> a]:b", "[a](u)://"]
    texts += ["".join(rnd.choice("<>![]():/&;sSciptyle amp h\n") for _ in range(rnd.randrange(60))) for _ in range(5000)]
    with (shared_data / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        texts += [json.loads(line)["body"] for n, line in enumerate(handle) if n % 5 == 0]
    for text in texts:
        assert C.markdown_plain_text(text) == every_pattern(text), text[:80]


def _old_tokens(text: str) -> list[str]:
    text = T.clean(text)[: T.MAX_CHARS]
    words = [T._stem(w) for w in T._WORD.findall(T._APOSTROPHE.sub("", text.lower())) if len(w) > 1 and w not in T.STOP_WORDS]
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def _old_vectorise(terms: list[str]) -> bytes:
    merged: Counter[int] = Counter()
    for term, count in Counter(terms).items():
        merged[T.term_id(term)] += count
    ids = np.fromiter(sorted(merged), np.uint32, len(merged))
    return T.TermVector(ids, np.fromiter((min(merged[i], 65535) for i in ids.tolist()), np.uint16, len(ids))).to_bytes()


def test_faster_tokeniser_gives_the_previous_terms_and_vectors(shared_data: Path) -> None:
    odd = ["", "a", "İstanbul’s KELVIN \u212a café’sébastien Don’t it’S", "a’s b’sé c’s1 d’S’s e’s” f’s\xa0g", "I’m \xa0http://x.org\xa0words www.a.b",
           "x " * 70000, "lone \ud800 surrogate’s"]  # fmt: skip
    with (shared_data / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        texts = odd + [r["title"] + "\n" + r["body"] for n, line in enumerate(handle) if n % 4 == 0 and (r := json.loads(line))]
    for text in texts:
        old = _old_tokens(text)
        assert T.tokens(text, "en") == old and T.term_bytes(text, "en") == [t.encode("utf-8", "surrogatepass") for t in old]
        assert T.vectorise(T.term_bytes(text, "en")).to_bytes() == T.vectorise(old).to_bytes() == _old_vectorise(old)
        assert T.text_vector(text, "en").to_bytes() == _old_vectorise(old)
    assert zlib.crc32(b"new tariff") % T.FEATURES == T.term_id("new tariff")


def _edge_texts() -> list[str]:
    """Texts at the edges of `text_vector`'s paths: 24 indexed words or fewer (the list path) and more (arrays),
    long words, index forms longer than `T.SHIFT_MAX` (the zlib fallback), stems,
    digits, stop words, non-ASCII separators, Chinese inside English, links and URLs."""
    rnd = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 ’'-.,é東\n"
    long_form = "q" * (T.SHIFT_MAX + 1)
    return [
        " ".join(["word"] * 24),
        " ".join(["word"] * 25),
        " ".join(["word", "the"] * 30),
        " ".join(f"w{i}" for i in range(60)),
        f"{long_form} tariffs {long_form}s policies {'y' * T.SHIFT_MAX} {'z' * (T.SHIFT_MAX - 1)} steel " * 20,
        "Policies POLICIES abcdefghijklm abcdefghijkl " * 30 + "supercalifragilisticexpialidocious " * 3,
        "THE the The 123 1 a b cc dd ee US us is was gas bus " * 10,
        "naïve résumé Ünited 東京 steel tariffs 关税 tariffs " * 9,
        "See [the order](https://x.org/a) and https://y.org/b www.z.org plus [a] (b) " * 8,
    ] + ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 600))) for _ in range(300)]


def test_array_tokeniser_gives_the_previous_vectors(shared_data: Path) -> None:
    """`text_vector` (word table, bigram CRC-32 combined from tables) equals counting the str rules' terms,
    on edge cases, random texts and the English corpora; Chinese vectors are `vectorise(tokens)` as before."""
    with (shared_data / "corpus-bbc" / "bbc_news.jsonl").open(encoding="utf-8") as handle:
        bbc = [r["title"] + "\n" + r["body"] for n, line in enumerate(handle) if n % 16 == 0 and (r := json.loads(line))]
    for text in _edge_texts() + bbc:
        assert T.text_vector(text, "en").to_bytes() == _old_vectorise(_old_tokens(text)), text[:80]
    with (shared_data / "corpus-thucnews-titles" / "thucnews_titles_test.jsonl").open(encoding="utf-8") as handle:
        titles = [json.loads(line)["title"] for n, line in enumerate(handle) if n % 50 == 0]
    for text in [*titles, "電網安全新規 Grid rules 2026", ""]:
        assert T.text_vector(text, "zh").to_bytes() == _old_vectorise(T.tokens(text, "zh"))


def test_word_table_starts_again_past_its_limit_and_is_shared_by_threads(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    texts = _edge_texts()
    expected = [_old_vectorise(_old_tokens(t)) for t in texts]
    monkeypatch.setattr(T, "_FORMS_LIMIT", 50)  # a new table every few texts
    monkeypatch.setattr(T, "_WORD_TABLES", [])
    assert [T.text_vector(t, "en").to_bytes() for t in texts] == expected
    assert len(T._word_table()) < 50 + 600
    monkeypatch.setattr(T, "_FORMS_LIMIT", 1 << 20)
    monkeypatch.setattr(T, "_WORD_TABLES", [])
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between almost any two bytecodes
    try:
        with ThreadPoolExecutor(4) as pool:  # four threads growing one table
            assert list(pool.map(lambda t: T.text_vector(t, "en").to_bytes(), texts * 3)) == expected * 3
    finally:
        sys.setswitchinterval(interval)


def test_index_text_gives_the_terms_of_the_converted_text(shared_data: Path) -> None:
    """The plain text made without a parser indexes as the converted text did: the same terms for over 90% of
    the White House articles, the others differ where the index cuts a long text or where Markdown joins or
    splits a word at a line break (under 10% of their terms)."""
    same = total = 0
    with (shared_data / "corpus-whitehouse" / "whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        for n, line in enumerate(handle):
            if n % 3:
                continue
            record = json.loads(line)
            old = T.tokens(strip_links(html_to_text(old_conversion(record)[0], links=False)), "en")
            new = T.tokens(record_to_fields(record, defer=True)["body_text"], "en")
            total += 1
            same += old == new
            shared = sum((Counter(old) & Counter(new)).values())
            assert shared >= 0.9 * max(len(old), len(new)), record["id"]
    assert same > 0.9 * total


def test_an_issue_of_pending_articles_renders_as_one_of_eagerly_converted_ones(db_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    import re

    from newsletter import publishing
    from newsletter.db import session_factory
    from newsletter.issues import create_issue
    from newsletter.rendering import render_edition

    settings = make_settings(db_url)
    with session_factory(db_url)() as session:
        import_lines(session, [json.dumps(r, ensure_ascii=False) for r in RECORDS])
        import_lines(session, [json.dumps({**r, "id": f"eager-{r['id']}"}, ensure_ascii=False) for r in RECORDS], defer=False)
        assert stored(session, "md-1")[2] and not stored(session, "eager-md-1")[2]
        by_id = {a.external_id: a for a in session.scalars(select(Article))}
        views, texts = {}, {}
        for prefix in ("", "eager-"):
            issue = create_issue(session, [by_id[prefix + r["id"]] for r in RECORDS], number=2 if prefix else 1)
            session.commit()
            contents = [publishing.edition_content(session, settings, issue, e) for e in issue.editions]
            views[prefix] = re.sub(r"/issues/[12]/", "/issues/N/", repr([c.articles for c in contents]))
            # The issue number is all that differs: "Issue 2", "第 2 期", /issues/2/.
            texts[prefix] = [re.sub(r"(Issue |第 |/issues/)[12]\b", r"\1N", render_edition(c).text) for c in contents]
        assert views[""] == views["eager-"] and texts[""] == texts["eager-"]
        assert not any(stored(session, r["id"])[2] for r in RECORDS)  # made once (at issue creation) and stored
