"""Interface strings per edition language, looked up by their English text (gettext style)."""

from __future__ import annotations

from collections.abc import Callable

LIST_NAME = {"en": "The Weekly Review", "zh-Hans": "每周评论", "zh-Hant": "每週評論"}

CATALOG: dict[str, dict[str, str]] = {
    "zh-Hans": {
        "View this email in your browser": "在浏览器中查看此邮件",
        "Issue %(number)s": "第 %(number)s 期",
        "Hello,": "您好，",
        "Hello %(name)s,": "%(name)s，您好：",
        "This edition was converted automatically from Simplified Chinese.": "本版由简体中文自动转换。",
        "Read more": "阅读全文",
        "You might also like": "您可能还喜欢",
        "You are reading the web version of issue %(number)s of %(list)s.": "您正在阅读《%(list)s》第 %(number)s 期的网页版。",
        "You receive this email because %(email)s subscribed to %(list)s.": "您收到此邮件，是因为 %(email)s 订阅了《%(list)s》。",
        "Unsubscribe": "退订",
        "Manage preferences": "管理订阅偏好",
        "View in browser": "网页版",
        "%(label)s: %(url)s": "%(label)s：%(url)s",
        "%(label)s:": "%(label)s：",
    },
    "zh-Hant": {
        "View this email in your browser": "在瀏覽器中查看此郵件",
        "Issue %(number)s": "第 %(number)s 期",
        "Hello,": "您好，",
        "Hello %(name)s,": "%(name)s，您好：",
        "This edition was converted automatically from Simplified Chinese.": "本版由簡體中文自動轉換。",
        "Read more": "閱讀全文",
        "You might also like": "您可能也會喜歡",
        "You are reading the web version of issue %(number)s of %(list)s.": "您正在閱讀《%(list)s》第 %(number)s 期的網頁版。",
        "You receive this email because %(email)s subscribed to %(list)s.": "您收到此郵件，是因為 %(email)s 訂閱了《%(list)s》。",
        "Unsubscribe": "取消訂閱",
        "Manage preferences": "管理訂閱偏好",
        "View in browser": "網頁版",
        "%(label)s: %(url)s": "%(label)s：%(url)s",
        "%(label)s:": "%(label)s：",
    },
}


class MissingTranslation(LookupError):
    """A template asked for a string that the language's catalog lacks."""

    def __init__(self, lang: str, message: str) -> None:
        super().__init__(f"missing {lang} translation for {message!r}")
        self.lang, self.message = lang, message


def gettext_for(lang: str) -> Callable[[str], str]:
    """A ``gettext`` for ``lang``. English is the source language and needs no catalog.

    The returned function raises `MissingTranslation` instead of silently falling back to English,
    so a missing string stops the publish with a message naming it.
    """
    if lang == "en":
        return lambda message: message
    catalog = CATALOG.get(lang)
    if catalog is None:
        raise MissingTranslation(lang, "*")

    def gettext(message: str) -> str:
        try:
            return catalog[message]
        except KeyError:
            raise MissingTranslation(lang, message) from None

    return gettext
