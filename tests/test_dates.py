"""Edition dates: in the zone the issue was scheduled in (or NEWSLETTER_TIMEZONE), formatted per locale."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from newsletter.config import SettingsError, load_settings
from newsletter.db import session_factory
from newsletter.issues import create_issue
from newsletter.models import Article
from newsletter.publishing import edition_content, format_date
from newsletter.scheduling import schedule_issue
from tests.test_unit_delivery import _seed

EVENING_UTC = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)  # already 1 December in Taipei


def test_format_date_per_locale_and_zone() -> None:
    assert format_date(EVENING_UTC, "en") == "November 30, 2026"
    assert format_date(EVENING_UTC, "zh-Hans") == "2026年11月30日"
    assert format_date(EVENING_UTC, "en", "Asia/Taipei") == "December 1, 2026"
    assert format_date(EVENING_UTC, "zh-Hant", "Asia/Taipei") == "2026年12月1日"
    assert format_date(EVENING_UTC, "zh-Hans", "+08:00") == "2026年12月1日"
    assert format_date(datetime(2026, 12, 1, 3, 0, tzinfo=UTC), "en", "America/New_York") == "November 30, 2026"


def test_timezone_setting_is_checked_at_start() -> None:
    assert load_settings({}).timezone == "UTC"
    assert load_settings({"NEWSLETTER_TIMEZONE": "Asia/Shanghai"}).timezone == "Asia/Shanghai"
    with pytest.raises(SettingsError, match=r"^NEWSLETTER_TIMEZONE='Mars/Olympus' is not an IANA time zone"):
        load_settings({"NEWSLETTER_TIMEZONE": "Mars/Olympus"})


def test_edition_date_in_the_zone_the_issue_was_scheduled_in(sqlite_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    settings = make_settings(sqlite_url)  # NEWSLETTER_TIMEZONE unset: UTC
    with session_factory(sqlite_url)() as session:
        _seed(session)
        articles = list(session.scalars(select(Article).where(Article.external_id.in_(["e1", "z1"])).order_by(Article.external_id)))
        plain, scheduled = create_issue(session, articles), create_issue(session, articles)
        session.commit()
        schedule_issue(session, settings, scheduled, datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("Asia/Taipei")), now=EVENING_UTC)
        assert scheduled.timezone == "Asia/Taipei"
        for issue in (plain, scheduled):
            issue.published_at = EVENING_UTC
        dates = {
            (issue.number, e.lang): edition_content(session, settings, issue, e).date
            for issue in (plain, scheduled)
            for e in issue.editions
        }
        assert dates[(plain.number, "en")] == "November 30, 2026"
        assert dates[(scheduled.number, "en")] == "December 1, 2026"
        assert dates[(scheduled.number, "zh-Hant")] == "2026年12月1日"
        shanghai = make_settings(sqlite_url, NEWSLETTER_TIMEZONE="Asia/Shanghai")
        assert edition_content(session, shanghai, plain, plain.editions[0]).date == "December 1, 2026"
