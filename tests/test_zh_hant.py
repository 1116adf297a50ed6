"""Traditional Chinese editions: Taiwan standard with phrases by default, the project's corrections, the CCTV corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsletter import zh_hant
from newsletter.config import SettingsError, load_settings
from newsletter.zh_hant import ConversionError, Converter, to_traditional

# Characters Taiwan's Ministry of Education standard writes as CC-CEDICT lists them only among simplified forms
# (磅礴, 彝族, 畲族): not conversion mistakes.
TAIWAN_STANDARD_IN_CEDICT_SIMPLIFIED = frozenset("礴彝畲")


def simplified_only() -> frozenset[str]:
    """Characters CC-CEDICT (zhon.cedict) lists only in simplified forms: an independent judge of OpenCC's output."""
    from zhon import cedict

    return frozenset(cedict.simplified) - frozenset(cedict.traditional) - TAIWAN_STANDARD_IN_CEDICT_SIMPLIFIED


def test_default_is_taiwan_standard_with_phrases() -> None:
    out = to_traditional("为了启动群众，他着手编写软件和网络信息。")
    assert out == "為了啟動群眾，他著手編寫軟體和網路資訊。"
    for generic in "爲啓羣着":  # what the generic s2t table writes
        assert generic not in out


def test_phrase_dictionary_keeps_xin_zhengcheng() -> None:
    for conversion in zh_hant.CONVERSIONS:
        out = to_traditional("奋进新征程，踏上征程。征收税款。", conversion)
        assert "新征程" in out and "新徵程" not in out and "踏上征程" in out
        assert "徵收" in out  # 征 as "levy" is still 徵


@pytest.mark.parametrize(
    "simplified, taiwan",
    [
        ("湖南岳阳市", "湖南岳陽市"),  # not 湖南嶽陽 (南岳 caught it)
        ("我们要维护发展权利", "我們要維護發展權利"),  # not 維護髮展
        ("国家制造业创新中心", "國家製造業創新中心"),
        ("11月历史性访问", "11月歷史性訪問"),  # not 月曆史
        ("表示祝贺，并合影留念", "表示祝賀，並合影留念"),
        ("在莫斯科克里姆林宫会见", "在莫斯科克里姆林宮會見"),
        ("李强同意大利总理会谈", "李強同義大利總理會談"),  # Italy is 義大利 in Taiwan
        ("外资企业在华发展", "外資企業在華發展"),  # not 華髮 (grey hair)
        ("通航整机制造企业", "通航整機製造企業"),  # not 機制造
        ("打击了内察里姆走廊附近", "打擊了內察里姆走廊附近"),
        # 周 after a number is the week: an issue titled 第48周 became 第48周 in its zh-Hant edition.
        ("第48周", "第48週"),
        ("第四周", "第四週"),
        ("建党100周年", "建黨100週年"),
        ("环顾四周", "環顧四周"),  # around, not a week
        ("周先生", "周先生"),  # a surname
    ],
)
def test_project_corrections_found_on_the_cctv_corpus(simplified: str, taiwan: str) -> None:
    assert to_traditional(simplified) == taiwan


def test_conversion_is_configurable_per_deployment() -> None:
    assert to_traditional("软件群众", "s2hk") == "軟件羣眾"
    assert to_traditional("软件群众", "s2t") == "軟件羣衆"
    assert load_settings({"NEWSLETTER_ZH_HANT_CONVERSION": "s2hk"}).zh_hant_conversion == "s2hk"
    assert load_settings({}).zh_hant_conversion == "s2twp"
    with pytest.raises(SettingsError, match="NEWSLETTER_ZH_HANT_CONVERSION='s2x' is not one of s2twp, s2hk, s2t"):
        load_settings({"NEWSLETTER_ZH_HANT_CONVERSION": "s2x"})
    with pytest.raises(ConversionError):
        Converter("t2s")


def test_a_deployment_phrase_file_adds_corrections(tmp_path: Path) -> None:
    extra = tmp_path / "ours.txt"
    extra.write_text("# ours\n数字化\t數位化\n", encoding="utf-8")
    assert to_traditional("数字化转型", "s2twp") == "數字化轉型"
    assert to_traditional("数字化转型", "s2twp", (str(extra),)) == "數位化轉型"
    settings = load_settings({"NEWSLETTER_ZH_HANT_PHRASES": str(extra)})
    assert settings.zh_hant_phrases == (str(extra),)
    bad = tmp_path / "bad.txt"
    bad.write_text("只有一列\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"NEWSLETTER_ZH_HANT_PHRASES cannot be used: .*bad.txt:1: expected"):
        load_settings({"NEWSLETTER_ZH_HANT_PHRASES": str(bad)})


def test_cctv_corpus_has_no_simplified_only_characters_left(shared_data: Path) -> None:
    judge = simplified_only()
    converter = zh_hant.converter()
    left: dict[str, list[str]] = {}
    chars = 0
    with (shared_data / "corpus-xinwenlianbo" / "xwlb_2024H2_items.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for text in (record["title"], record["body"]):
                out = converter.convert(text)
                chars += len(out)
                for ch in set(out) & judge:
                    left.setdefault(ch, []).append(record["id"])
                assert "新徵程" not in out, record["id"]
    assert chars > 1_000_000
    assert left == {}, {ch: ids[:3] for ch, ids in left.items()}


def test_news_words_are_not_read_as_computing_terms() -> None:
    """Regression (a reader's trial): s2twp wrote 澳門迴歸, 不斷最佳化 and 釋出訊息 in news text."""
    out = to_traditional("澳门回归二十五周年，不断优化营商环境，新闻发布会发布消息。")
    assert out == "澳門回歸二十五週年，不斷優化營商環境，新聞發布會發布訊息。"
    assert to_traditional("线性回归分析") == "線性迴歸分析"  # the statistical term keeps OpenCC's form
    assert to_traditional("优化", "s2hk") == "優化" and to_traditional("发布", "s2hk") == "發佈"  # Hong Kong unchanged
