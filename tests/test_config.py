"""Settings: read once from the environment, nonsense clamped, secrets masked."""

from __future__ import annotations

import pytest

from newsletter.config import load_settings


def test_defaults_are_the_embedded_mode() -> None:
    settings = load_settings({})
    assert settings.embedded and settings.smtp_urls == ()
    assert settings.database_url == "sqlite:///var/newsletter.db"
    assert (settings.retry.base, settings.retry.cap, settings.retry.max_attempts) == (60.0, 3600.0, 8)


def test_out_of_range_values_are_clamped_and_bad_ones_refused(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"NEWSLETTER_BATCH_SIZE": "0", "NEWSLETTER_BACKOFF_CAP": "-5", "NEWSLETTER_MAX_ATTEMPTS": "1000"})
    assert (settings.batch_size, settings.retry.cap, settings.retry.max_attempts) == (1, 0.01, 100)
    assert "NEWSLETTER_BATCH_SIZE=0 is out of range [1, 10000]; using 1" in caplog.text
    with pytest.raises(ValueError, match="NEWSLETTER_LEASE_SECONDS='soon' is not a valid float"):
        load_settings({"NEWSLETTER_LEASE_SECONDS": "soon"})


def test_describe_masks_secrets() -> None:
    settings = load_settings({
        "DATABASE_URL": "postgresql://app:s3cret@db/newsletter",
        "SMTP_URL": "smtp+starttls://user:hunter2@mx:587?rate=5, smtp://mx2:25",
        "NEWSLETTER_SECRET_KEY": "k",
    })  # fmt: skip
    shown = settings.describe()
    assert shown["DATABASE_URL"] == "postgresql://app:***@db/newsletter"
    assert "hunter2" not in shown["SMTP_URL"] and "mx2:25" in shown["SMTP_URL"]
    assert shown["NEWSLETTER_SECRET_KEY"] == "***"
    assert settings.smtp_urls == ("smtp+starttls://user:hunter2@mx:587?rate=5", "smtp://mx2:25")
