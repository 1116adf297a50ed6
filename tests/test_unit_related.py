"""Unit tests for newsletter.related: TF-IDF recommendations in English and Chinese."""

from __future__ import annotations

from newsletter.related import DUPLICATE_SCORE, Doc, cjk_bigrams, recommend

EN_QUERY = Doc(
    1, "Central bank raises interest rates", "The central bank raised interest rates by half a point to fight inflation, economists said."
)
EN_RELATED = Doc(
    2, "Inflation slows as interest rates bite", "Higher interest rates from the central bank have begun to slow inflation and borrowing."
)
EN_DUPLICATE = Doc(5, EN_QUERY.title, EN_QUERY.text)
EN_OTHERS = [
    Doc(3, "Local team wins football final", "The football team celebrated a dramatic win in the cup final on Saturday evening."),
    Doc(4, "New species of frog found in rainforest", "Biologists discovered a tiny frog species in the rainforest canopy."),
    Doc(6, "Orchestra premieres new symphony", "The city orchestra performed a new symphony by a young composer."),
    Doc(7, "Mountain road reopens after landslide", "Engineers cleared the landslide and the mountain road reopened to traffic."),
    Doc(8, "Chess prodigy wins tournament", "A twelve-year-old chess player won the national tournament."),
]

ZH_QUERY = Doc(11, "央行宣布加息", "中央银行宣布提高利率，以应对通货膨胀压力。经济学家表示加息将抑制借贷。")
ZH_RELATED = Doc(12, "通货膨胀放缓", "利率上升后，通货膨胀开始放缓，银行借贷减少。")
ZH_DUPLICATE = Doc(15, ZH_QUERY.title, ZH_QUERY.text)
ZH_OTHERS = [
    Doc(13, "足球队赢得冠军", "球队在周六晚上的决赛中赢得冠军，球迷庆祝。"),
    Doc(14, "雨林发现新蛙种", "生物学家在雨林树冠中发现了一种小青蛙。"),
    Doc(16, "交响乐团首演新作", "市交响乐团演奏了一位青年作曲家的新交响曲。"),
    Doc(17, "山区公路恢复通车", "工程师清理了山体滑坡，山区公路重新通车。"),
    Doc(18, "少年棋手夺冠", "一名十二岁的棋手赢得了全国象棋比赛。"),
]


def test_cjk_bigrams() -> None:
    assert cjk_bigrams("中国银行 AI 2024年") == ["中国", "国银", "银行", "年", "ai", "2024"]
    assert cjk_bigrams("") == []
    assert cjk_bigrams("a 中 b") == ["中"]  # single Latin letters are not tokens


def test_english_related_ranked_first_query_and_duplicate_excluded() -> None:
    archive = [EN_QUERY, EN_OTHERS[0], EN_DUPLICATE, EN_RELATED, *EN_OTHERS[1:]]
    ranked = recommend("en", [EN_QUERY], archive)
    ids = [i for i, _ in ranked]
    assert ids[0] == 2
    assert 1 not in ids and 5 not in ids
    assert all(0.0 < s < DUPLICATE_SCORE for _, s in ranked)
    assert ranked == sorted(ranked, key=lambda r: -r[1])


def test_english_unrelated_docs_score_zero_and_are_dropped() -> None:
    ranked = recommend("en", [EN_QUERY], [EN_QUERY, EN_RELATED, *EN_OTHERS])
    assert [i for i, _ in ranked] == [2]


def test_chinese_related_ranked_first_query_and_duplicate_excluded() -> None:
    archive = [ZH_QUERY, *ZH_OTHERS[:2], ZH_DUPLICATE, ZH_RELATED, *ZH_OTHERS[2:]]
    for lang in ("zh-Hans", "zh-Hant"):
        ranked = recommend(lang, [ZH_QUERY], archive)
        ids = [i for i, _ in ranked]
        assert ids[0] == 12
        assert 11 not in ids and 15 not in ids
        assert all(0.0 < s < DUPLICATE_SCORE for _, s in ranked)


def test_k_limits_results() -> None:
    archive = [EN_QUERY, EN_RELATED, *EN_OTHERS]
    assert len(recommend("en", [EN_QUERY], archive, k=1)) == 1
    assert recommend("en", [EN_QUERY], archive, k=0) == []


def test_each_query_pulls_its_own_neighbour() -> None:
    q2 = Doc(20, "Football final ends in penalties", "The cup final on Saturday was decided by penalties as the football team won.")
    ranked = recommend("en", [EN_QUERY, q2], [EN_QUERY, q2, EN_RELATED, *EN_OTHERS])
    assert {i for i, _ in ranked[:2]} == {2, 3}


def test_empty_inputs() -> None:
    assert recommend("en", [], [EN_RELATED]) == []
    assert recommend("en", [EN_QUERY], [EN_QUERY]) == []
    assert recommend("en", [EN_QUERY], []) == []


def test_small_archive_with_a_duplicate_still_finds_related() -> None:
    archive = [EN_QUERY, EN_RELATED, EN_OTHERS[0], EN_OTHERS[1], EN_DUPLICATE]
    ranked = recommend("en", [EN_QUERY], archive)
    assert [i for i, _ in ranked][:1] == [2]


def test_the_same_story_filed_twice_is_recommended_once() -> None:
    from newsletter.related import Doc

    query = Doc(1, "Grid security rules", "utilities must patch control systems quickly after the grid attack")
    same_a = Doc(2, "Protecting the grid: new rules", "new rules make utilities patch control systems after the grid attack")
    same_b = Doc(3, "Protecting the Grid — New Rules", "new rules make utilities patch control systems after the grid attack.")
    other = Doc(4, "Budget talks", "negotiators met on the budget and spending caps")
    ranked = recommend("en", [query], [same_a, same_b, other])
    assert [i for i, _ in ranked] == [2]
