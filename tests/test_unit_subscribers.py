"""Unit tests for newsletter.subscribers: address normalisation, CSV import, unsubscribe."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.models import Subscriber, SubscriberStatus, Suppression
from newsletter.subscribers import (
    InvalidAddress,
    find_subscriber,
    import_subscribers,
    normalise_address,
    normalise_lang,
    unsubscribe,
)

# --- normalise_address -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.COM", "Ann@example.com"),
        ("Ann@example.com", "Ann@example.com"),
        ("  x@Y.org  ", "x@y.org"),
        ("MixedCase.Local@EXAMPLE.org", "MixedCase.Local@example.org"),
        ("a@BÜCHER.de", "a@bücher.de"),
    ],
)
def test_normalise_address(raw: str, expected: str) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["a@b.com\r\nBcc: x@y.com", "a@b.com\nBcc: x@y.com", "a@b.com\rBcc: x@y.com", "a@b.com\x00"],
)
def test_normalise_address_rejects_header_injection(raw: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        normalise_address(raw)
    assert info.value.address == raw
    assert info.value.reason == "contains a line break or NUL"


@pytest.mark.parametrize("raw", ["not-an-email", "a@@b.com", "a@b", "a b@c.com", "", "@example.com", "ann@"])
def test_normalise_address_rejects_invalid_syntax(raw: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        normalise_address(raw)
    assert info.value.address == raw
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "en"), ("", "en"), ("en", "en"), ("EN-us", "en"), ("en_GB", "en"),
        ("zh-CN", "zh-Hans"), ("zh_cn", "zh-Hans"), ("zh", "zh-Hans"), ("zh-Hans", "zh-Hans"), ("zh-SG", "zh-Hans"),
        ("zh-TW", "zh-Hant"), ("zh-HK", "zh-Hant"), ("zh-hant", "zh-Hant"), ("zh-MO", "zh-Hant"),
    ],
)  # fmt: skip
def test_normalise_lang(raw: str | None, expected: str) -> None:
    assert normalise_lang(raw) == expected


@pytest.mark.parametrize("raw", ["fr", "de-DE", "zh-Latn", "english"])
def test_normalise_lang_rejects_unsupported(raw: str) -> None:
    with pytest.raises(ValueError, match="unsupported language"):
        normalise_lang(raw)


# --- import_subscribers ----------------------------------------------------------------------------

CSV = (
    "email,name,lang,topics\n"                   # line 1
    "Ann@Example.COM,Ann One,en,policy;economy\n"  # line 2
    "bob@example.org,Bob,zh-CN,tech|economy|tech\n"  # line 3
    "not-an-email,Nobody,en,\n"                  # line 4: invalid address
    "Ann@example.com,Ann Two,zh-TW,\n"           # line 5: same subscriber as line 2
    "carol@example.net,Carol,fr,\n"              # line 6: unsupported language
    "dave@example.com,Dave,,\n"                  # line 7: default language
)  # fmt: skip


def _subs(session) -> dict[str, Subscriber]:  # type: ignore[no-untyped-def]
    return {s.email: s for s in session.scalars(select(Subscriber))}


def test_import_subscribers_merges_reports_and_maps_langs(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text(CSV, encoding="utf-8")
    report = import_subscribers(session, path)

    assert report.created == 3
    assert report.merged == 1
    assert len(report.errors) == 2
    assert report.errors[0].startswith("line 4: 'not-an-email': ")
    assert report.errors[1].startswith("line 6: unsupported language 'fr'")

    subs = _subs(session)
    assert sorted(subs) == ["Ann@example.com", "bob@example.org", "dave@example.com"]
    ann = subs["Ann@example.com"]
    assert (ann.name, ann.lang, ann.topics) == ("Ann Two", "zh-Hant", [])  # the later row wins
    bob = subs["bob@example.org"]
    assert (bob.lang, bob.topics) == ("zh-Hans", ["economy", "tech"])
    assert subs["dave@example.com"].lang == "en"
    assert all(s.status == SubscriberStatus.ACTIVE and s.confirmed_at is not None for s in subs.values())


def test_import_subscribers_keeps_local_part_case_distinct(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text("email\nAnn@example.com\nann@EXAMPLE.com\n", encoding="utf-8")
    report = import_subscribers(session, path)
    assert (report.created, report.merged, report.errors) == (2, 0, [])
    assert sorted(_subs(session)) == ["Ann@example.com", "ann@example.com"]


def test_import_subscribers_reimport_merges_and_never_resubscribes(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text("Email,Name\nann@example.com,Ann\n", encoding="utf-8-sig")
    assert import_subscribers(session, path).created == 1
    ann = find_subscriber(session, "ann@EXAMPLE.COM")
    assert ann is not None
    unsubscribe(session, ann.id)

    path.write_text("email,name\nann@example.com,Ann Renamed\n", encoding="utf-8")
    report = import_subscribers(session, path)
    assert (report.created, report.updated, report.unchanged, report.merged) == (0, 1, 0, 0)
    assert (import_subscribers(session, path).unchanged, import_subscribers(session, path).updated) == (1, 0)
    session.expire_all()
    ann = session.get(Subscriber, ann.id)
    assert ann.name == "Ann Renamed"
    assert ann.status == SubscriberStatus.UNSUBSCRIBED
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_import_subscribers_requires_email_column(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text("name,lang\nAnn,en\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'email' column"):
        import_subscribers(session, path)


@pytest.mark.parametrize("header", ["email,name,lang,topics,Email", "email,email,name", "email,name, NAME ,lang"])
def test_import_subscribers_refuses_a_column_named_twice(session, tmp_path: Path, header: str) -> None:  # type: ignore[no-untyped-def]
    """Regression (trial): names are matched without case, and the later of two same-named columns silently won
    in every row: ``email,...,Email`` imported the addresses of the last column. The file is refused instead."""
    path = tmp_path / "s.csv"
    cells = ",".join(f"a{i}@example.com" if "email" in col.lower() else "x" for i, col in enumerate(header.split(",")))
    path.write_text(f"{header}\n{cells}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="names a column twice") as refused:
        import_subscribers(session, path)
    twice = next(col.strip().lower() for col in header.split(",") if header.lower().count(col.strip().lower()) > 1)
    assert repr(twice) in str(refused.value)
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0


@pytest.mark.parametrize("sep", [";", "\t"])
def test_import_subscribers_reads_semicolon_and_tab_separated_files(session, tmp_path: Path, sep: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text(sep.join(["email", "name", "lang", "topics"]) + "\n" + sep.join(["ann@example.com", "Ann", "zh-TW", "policy|economy"]) + "\n",
                    encoding="utf-8")  # fmt: skip
    report = import_subscribers(session, path)
    assert (report.created, report.errors) == (1, [])
    ann = _subs(session)["ann@example.com"]
    assert (ann.name, ann.lang, ann.topics) == ("Ann", "zh-Hant", ["economy", "policy"])


def test_import_subscribers_injection_row_reported(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text('email,name\n"a@b.com\r\nBcc: x@y.com",Evil\nok@example.com,Ok\n', encoding="utf-8", newline="")
    report = import_subscribers(session, path)
    assert report.created == 1
    assert len(report.errors) == 1
    assert "contains a line break or NUL" in report.errors[0]
    assert sorted(_subs(session)) == ["ok@example.com"]


# --- unsubscribe -----------------------------------------------------------------------------------


def test_unsubscribe_is_idempotent(session) -> None:  # type: ignore[no-untyped-def]
    sub = Subscriber(email="ann@example.com", name="Ann", lang="en")
    session.add(sub)
    session.commit()

    first = unsubscribe(session, sub.id, source="one-click")
    assert first is not None
    assert first.status == SubscriberStatus.UNSUBSCRIBED
    stamp = first.unsubscribed_at
    assert stamp is not None

    second = unsubscribe(session, sub.id, source="link")
    assert second is not None and second.status == SubscriberStatus.UNSUBSCRIBED
    assert second.unsubscribed_at == stamp

    rows = session.execute(select(Suppression.email, Suppression.reason, Suppression.detail)).all()
    assert [tuple(r) for r in rows] == [("ann@example.com", "unsubscribe", "one-click")]


def test_unsubscribe_unknown_id_returns_none(session) -> None:  # type: ignore[no-untyped-def]
    assert unsubscribe(session, 999_999) is None
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0


def test_import_extra_columns_become_attributes_and_signed_up_sets_the_signup_date(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    path = tmp_path / "subs.csv"
    path.write_text(
        "email,name,lang,topics,plan,country,signed_up\n"
        "ann@example.com,Ann,en,security,pro,US,2026-01-15\n"
        "bob@example.com,Bob,en,,,CA,\n"
        "bad@example.com,Bad,en,,,,last tuesday\n",
        encoding="utf-8",
    )
    report = import_subscribers(session, path)
    assert report.created == 2 and report.errors == ["line 4: signed_up 'last tuesday' is not an ISO 8601 date or time"]
    ann, bob = find_subscriber(session, "ann@example.com"), find_subscriber(session, "bob@example.com")
    assert ann is not None and bob is not None
    assert ann.attributes == {"plan": "pro", "country": "US"} and bob.attributes == {"country": "CA"}
    assert ann.created_at == datetime(2026, 1, 15, tzinfo=UTC)


def test_an_unclosed_quote_is_named_with_the_line_it_opens_on(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Regression: a quote never closed swallowed the next row into one cell, reported as "line 3: ...
    contains a line break or NUL": the wrong line, and no word of the quote."""
    path = tmp_path / "subs.csv"
    path.write_text('email,name,lang,topics\n"quote@example.net,Q,en,\nfine@example.net,F,en,\n', encoding="utf-8", newline="")
    report = import_subscribers(session, path)
    assert report.errors == [
        "lines 2-3: a quoted cell runs over 2 lines; is a closing quote missing on line 2? (nothing from these lines was imported)"
    ]
    assert report.created == 0 and report.rejected == 2  # both rows lost, not one


def test_export_neutralises_spreadsheet_formulas_and_imports_back_unchanged(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A public sign-up name like =HYPERLINK(...) ran as a formula when the export was opened in a spreadsheet.
    from newsletter.subscriber_admin import export_csv

    path = tmp_path / "subs.csv"
    path.write_text(
        'email,name,plan\n-ann@example.com,"=HYPERLINK(""http://evil.example"",""x"")",+1\nbo@example.com,@bo,pro\n', encoding="utf-8"
    )
    assert import_subscribers(session, path).created == 2
    exported = "".join(export_csv(session))
    rows = exported.splitlines()
    assert rows[1].startswith("'-ann@example.com,\"'=HYPERLINK(")
    assert rows[1].endswith(",'+1") and rows[2].startswith("bo@example.com,'@bo,")
    again = tmp_path / "again.csv"
    again.write_text(exported, encoding="utf-8")
    report = import_subscribers(session, again)
    assert (report.created, report.errors) == (0, [])
    subs = _subs(session)
    assert subs["-ann@example.com"].name == '=HYPERLINK("http://evil.example","x")'
    assert subs["-ann@example.com"].attributes == {"plan": "+1"} and subs["bo@example.com"].name == "@bo"


def test_bidi_override_characters_are_dropped_from_names_on_every_path(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # U+202E reversed what followed it wherever the name was shown (To field, admin lists): a spoofing trick.
    from newsletter.subscriber_admin import add_subscriber, update_subscriber
    from newsletter.subscribers import clean_name

    assert clean_name("Ann \u202egnp.exe\u202c Lee\u2066x\u2069") == "Ann gnp.exe Leex"
    path = tmp_path / "subs.csv"
    path.write_text("email,name\nann@example.com,Ann\u202eEvil\n", encoding="utf-8")
    assert import_subscribers(session, path).created == 1
    assert _subs(session)["ann@example.com"].name == "AnnEvil"
    bo = add_subscriber(session, "bo@example.com", name="Bo\u202d Bold")
    assert bo.name == "Bo Bold"
    assert update_subscriber(session, bo, name="\u2067Bo\u2069").name == "Bo"
