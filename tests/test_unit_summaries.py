"""Summaries: abbreviations, datelines and boilerplate per source, CJK length in characters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsletter.articles import record_to_fields
from newsletter.config import SettingsError, load_settings
from newsletter.summaries import BUILTIN_RULES, RulesError, load_rules, sentences, summarise

CCTV = "https://tv.cctv.com/2024/07/01/VIDE1234.shtml"
WH = "https://www.whitehouse.gov/briefing-room/statements-releases/2025/03/01/x/"


def test_english_abbreviations_do_not_end_a_sentence() -> None:
    text = (
        "On July 14, 2020, by Executive Order 13936, the President declared a national emergency pursuant to the "
        "International Emergency Economic Powers Act (50 U.S.C. 1701 et seq.) to deal with the threat. Mr. Smith met "
        "Dr. Jones in Washington, D.C. at 3 p.m. on Jan. 5. It went well."
    )
    assert sentences(text, "en") == [
        "On July 14, 2020, by Executive Order 13936, the President declared a national emergency pursuant to the "
        "International Emergency Economic Powers Act (50 U.S.C. 1701 et seq.) to deal with the threat.",
        "Mr. Smith met Dr. Jones in Washington, D.C. at 3 p.m. on Jan. 5.",
        "It went well.",
    ]
    out = summarise(text, "en", limit=220)
    assert out.endswith("to deal with the threat.")  # never "… (50 U.S.C."


def test_a_cut_never_leaves_a_bracket_open() -> None:
    text = (
        "Section 202(d) of the National Emergencies Act (50 U.S.C. 1622(d)) provides for the automatic termination of a national emergency"
    )
    out = summarise(text, "en", limit=60)
    assert out == "Section 202(d) of the National Emergencies Act…"


def test_cctv_boilerplate_is_removed() -> None:
    body = "央视网消息（新闻联播）：7月1日出版的第13期《求是》杂志发表文章。文章强调，要团结奋斗。"
    assert summarise(body, "zh-Hans", url=CCTV) == "7月1日出版的第13期《求是》杂志发表文章。文章强调，要团结奋斗。"
    # A round-up: the boilerplate stands alone and a sub-headline follows it.
    roundup = "央视网消息（新闻联播）：\n\n全国铁路暑期运输今天启动\n\n全国铁路暑期运输今天（7月1日）启动，预计发送旅客8.6亿人次。"
    assert summarise(roundup, "zh-Hans", url=CCTV) == "全国铁路暑期运输今天（7月1日）启动，预计发送旅客8.6亿人次。"


def test_white_house_summary_heading_and_datelines_are_removed() -> None:
    memo = "TO: WHITE HOUSE COMMS STAFF  \nFROM: CEA STAFF\n\nSummary  \nPresident Biden piled on nearly $2 trillion in new regulations."
    assert summarise(memo, "en", url=WH) == "President Biden piled on nearly $2 trillion in new regulations."
    aboard = "Aboard Air Force One  \nEn Route Tampa, Florida\n\n11:55 A.M. EST\n\nMS. JEAN-PIERRE:  All right.  Today we head to Tampa, Florida, where the President will speak."
    assert summarise(aboard, "en", url=WH) == "All right. Today we head to Tampa, Florida, where the President will speak."
    place = "Washington, D.C.\n\nToday the President signed an order to lower drug prices."
    assert summarise(place, "en", url=WH) == "Today the President signed an order to lower drug prices."
    order = "By the authority vested in me as President by the Constitution and the laws of the United States of America, it is hereby ordered:\n\nSection 1.  Purpose.  The United States must grow its economy."
    assert summarise(order, "en", url=WH) == "The United States must grow its economy."


def test_source_rules_apply_only_to_their_source() -> None:
    body = "央视网消息（新闻联播）：今天天气晴朗，全国大部地区气温回升。"
    assert summarise(body, "zh-Hans", url="https://example.org/a").startswith("央视网消息")
    assert summarise(body, "zh-Hans", url="https://news.cctv.com/x") == "今天天气晴朗，全国大部地区气温回升。"


def test_cjk_length_is_counted_in_characters() -> None:
    sentence = "国务院常务会议今天召开，研究部署进一步推动经济发展的政策措施。"  # 31 characters, 93 UTF-8 bytes
    out = summarise(sentence * 6, "zh-Hans")
    assert out == sentence * 3 and len(out) == 93  # 120 characters, not 120 bytes
    assert summarise(sentence * 6, "zh-Hant", limit=40) == sentence  # a sentence of 31 fills more than half of 40


def test_chinese_closing_quote_stays_with_its_sentence() -> None:
    assert sentences("他说：“我们要团结。”大家鼓掌。", "zh-Hans") == ["他说：“我们要团结。”", "大家鼓掌。"]


def test_deployment_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"sources": [{"name": "wire", "hosts": ["wire.example"], "strip_prefixes": [r"LONDON \(Wire\) - "]}]}))
    rules = load_rules(path)
    assert summarise("LONDON (Wire) - Markets rose.", "en", url="https://www.wire.example/a", rules=rules) == "Markets rose."
    settings = load_settings({"NEWSLETTER_SUMMARY_RULES": str(path)})
    assert settings.summary_rules[0].name == "wire" and settings.summary_rules[1:] == BUILTIN_RULES
    path.write_text(json.dumps({"sources": [{"name": "bad", "drop_lines": ["("]}]}))
    with pytest.raises(RulesError, match="source 'bad': bad pattern"):
        load_rules(path)
    with pytest.raises(SettingsError, match=r"^NEWSLETTER_SUMMARY_RULES cannot be used: .*source 'bad': bad pattern"):
        load_settings({"NEWSLETTER_SUMMARY_RULES": str(path)})


def test_import_uses_the_source_rules() -> None:
    fields = record_to_fields(
        {
            "id": "xwlb-1",
            "title": "标题",
            "lang": "zh-Hans",
            "source_url": CCTV,
            "body_html": "<p>央视网消息（新闻联播）：今天，会议在京召开。</p>",
        }
    )
    assert fields["summary"] == "今天，会议在京召开。"


def test_real_corpora_summaries(shared_data: Path) -> None:
    """No CCTV summary keeps the boilerplate; no White House summary is only a dateline or a heading word."""
    count = 0
    for name in ("corpus-xinwenlianbo/xwlb_2024H2_items.jsonl", "corpus-whitehouse/whitehouse_briefing_room.jsonl"):
        with (shared_data / name).open(encoding="utf-8") as handle:
            for n, line in enumerate(handle):
                if n % 12:  # a twelfth of each corpus keeps the test quick
                    continue
                fields = record_to_fields(json.loads(line))
                summary = fields["summary"]
                count += 1
                assert not summary.startswith(("央视网消息", "Summary ", "Aboard Air Force One", "East Room")), fields["external_id"]
                assert summary == "" or len(summary) > 12, (fields["external_id"], summary)
                assert not summary.endswith(("U.S.C.", "(50 U.S.C")), fields["external_id"]
    assert count > 300
