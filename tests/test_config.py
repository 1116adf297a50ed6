"""Settings: read once from the environment, checked at start (one line naming the variable, exit
status 2 in every process), nonsense numbers clamped, secrets masked, the embedded default keyed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from newsletter.config import SettingsError, load_settings
from newsletter.tokens import sign, verify
from tests.conftest import ROOT

KEY = "k3y-for-tests-0123456789"
REAL = {
    "DATABASE_URL": "postgresql://app:pw@db/newsletter",
    "NEWSLETTER_SECRET_KEY": KEY,
    "NEWSLETTER_BASE_URL": "https://news.example.org",
}


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings({"NEWSLETTER_HOME": str(tmp_path / "home")})
    assert settings.embedded and settings.smtp_urls == () and not settings.configured
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'newsletter.db'}"
    assert (settings.retry.base, settings.retry.cap, settings.retry.max_attempts) == (60.0, 3600.0, 8)
    assert settings.base_url == "http://localhost:8000"  # http is fine where nothing leaves the machine


def test_the_embedded_default_makes_its_own_key_and_keeps_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = load_settings({"NEWSLETTER_HOME": str(home)})
    key_file = home / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.secret_key == key_file.read_text().strip() and len(first.secret_key) >= 40
    assert load_settings({"NEWSLETTER_HOME": str(home)}).secret_key == first.secret_key  # kept: old links stay valid
    other = load_settings({"NEWSLETTER_HOME": str(tmp_path / "elsewhere")})
    assert other.secret_key != first.secret_key  # random, not a value in the source


def test_out_of_range_values_are_clamped(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    settings = load_settings({"NEWSLETTER_HOME": str(tmp_path), "NEWSLETTER_BATCH_SIZE": "0", "NEWSLETTER_MAX_ATTEMPTS": "1000"})
    assert (settings.batch_size, settings.retry.max_attempts) == (1, 100)
    assert "NEWSLETTER_BATCH_SIZE=0 is out of range [1, 10000]; using 1" in caplog.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEWSLETTER_LEASE_SECONDS": "soon"}, "NEWSLETTER_LEASE_SECONDS='soon' is not a number; expected a number between"),
        ({"NEWSLETTER_BATCH_SIZE": "1.5"}, "NEWSLETTER_BATCH_SIZE='1.5' is not an integer"),
        ({"SMTP_TIMEOUT": "nan"}, "SMTP_TIMEOUT='nan' is not a finite number"),
        (
            {"NEWSLETTER_BACKOFF_BASE": "600", "NEWSLETTER_BACKOFF_CAP": "60"},
            "NEWSLETTER_BACKOFF_BASE=600 is larger than NEWSLETTER_BACKOFF_CAP=60",
        ),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "DATABASE_URL='mysql://u:***@h/db' names an unsupported database 'mysql'"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL='not a url' is not a database URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' has scheme 'localhost'"),
        ({"REDIS_URL": "redis://:pw@host:99999/0"}, "REDIS_URL='redis://:***@host:99999/0' is not a URL"),
        ({"REDIS_URL": "redis://host:6379/zero"}, "names database 'zero'"),
        ({"SMTP_URL": "smtp://mx:25, http://mx2"}, "SMTP_URL entry 'http://mx2' has scheme 'http'"),
        ({"SMTP_URL": "smtp://mx:25?rat=5"}, "SMTP_URL entry 'smtp://mx:25?rat=5' has an unknown parameter 'rat'"),
        ({"SMTP_URL": "smtp://mx:25?rate=0"}, "has rate='0'; expected rate > 0"),
        ({"SMTP_URL": "smtp+starttls://u:hunter2@:587"}, "SMTP_URL entry 'smtp+starttls://u:***@:587' names no host"),
        ({"NEWSLETTER_FROM": "weekly at example dot org"}, "NEWSLETTER_FROM='weekly at example dot org' is not"),
        ({"NEWSLETTER_FROM": "a@example.org, b@example.org"}, "is not one address"),
        ({"NEWSLETTER_FROM": "Weekly <weekly@example.org>\r\nBcc: x@evil.example"}, "NEWSLETTER_FROM contains a line break"),
        ({"NEWSLETTER_BASE_URL": "news.example.org"}, "NEWSLETTER_BASE_URL='news.example.org' is not an http(s) URL"),
        ({"NEWSLETTER_BASE_URL": "http://news.example.org"}, "is http: List-Unsubscribe needs https (RFC 8058 §3.1)"),
        ({"NEWSLETTER_LIST_ID": "weekly news"}, "NEWSLETTER_LIST_ID='weekly news' is not a list id"),
        ({"NEWSLETTER_LOG_FORMAT": "xml"}, "NEWSLETTER_LOG_FORMAT='xml' is not a log format; expected text or json"),
        ({"NEWSLETTER_SECRET_KEY": ""}, "NEWSLETTER_SECRET_KEY is not set, and DATABASE_URL, REDIS_URL or SMTP_URL is"),
        ({"NEWSLETTER_SECRET_KEY": "k"}, "NEWSLETTER_SECRET_KEY key 1 is 1 characters long"),
        ({"NEWSLETTER_SECRET_KEY": f"{KEY},short"}, "NEWSLETTER_SECRET_KEY key 2 is 5 characters long"),
        ({"NEWSLETTER_SECRET_KEY": "dev-insecure-secret-change-me"}, "key 1 is a value published as an example"),
        ({"NEWSLETTER_SECRET_KEY": "change-me"}, "key 1 is a value published as an example"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_form_it_needs(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**REAL, **env})
    text = str(caught.value)
    assert message in text and "\n" not in text and "; expected " in text
    assert "secret" not in text.replace("SECRET", "") or "secrets.token_urlsafe" in text  # passwords and keys never shown
    assert KEY not in text and "hunter2" not in text and ":pw@" not in text


def test_http_base_url_is_allowed_explicitly_for_local_tests() -> None:
    settings = load_settings({**REAL, "NEWSLETTER_BASE_URL": "http://127.0.0.1:8000", "NEWSLETTER_ALLOW_HTTP": "1"})
    assert settings.base_url == "http://127.0.0.1:8000" and settings.allow_http


def test_several_keys_the_first_signs_and_all_verify() -> None:
    old = load_settings({**REAL, "NEWSLETTER_SECRET_KEY": "old-key-0123456789"})
    rotated = load_settings({**REAL, "NEWSLETTER_SECRET_KEY": "new-key-0123456789, old-key-0123456789"})
    spaced = load_settings({**REAL, "NEWSLETTER_SECRET_KEY": " new-key-0123456789\n old-key-0123456789 "})
    assert rotated.secret_keys == spaced.secret_keys == ("new-key-0123456789", "old-key-0123456789")
    assert rotated.secret_key == "new-key-0123456789"
    token = sign(old.secret_key, "unsubscribe", 7, 3)
    assert verify(rotated.secret_keys, "unsubscribe", token) == (7, 3)  # links already in mailboxes still work
    assert sign(rotated.secret_key, "unsubscribe", 7, 3) != token


def test_describe_masks_secrets() -> None:
    settings = load_settings({
        "DATABASE_URL": "postgresql://app:s3cret@db/newsletter",
        "SMTP_URL": "smtp+starttls://user:hunter2@mx:587?rate=5, smtp://mx2:25",
        "NEWSLETTER_SECRET_KEY": KEY,
        "NEWSLETTER_BASE_URL": "https://news.example.org",
    })  # fmt: skip
    shown = settings.describe()
    assert shown["DATABASE_URL"] == "postgresql://app:***@db/newsletter"
    assert "hunter2" not in shown["SMTP_URL"] and "mx2:25" in shown["SMTP_URL"]
    assert shown["NEWSLETTER_SECRET_KEY"] == "*** (1 key)"
    assert settings.smtp_urls == ("smtp+starttls://user:hunter2@mx:587?rate=5", "smtp://mx2:25")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "DATABASE_URL", "REDIS_URL", "SMTP_URL"))}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel=WARNING"],
        [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel=WARNING"],
    ],
    ids=["worker", "beat"],  # the newsletter command: test_help_works_whatever_the_settings, in process
)
def test_every_process_refuses_a_bad_setting_with_one_line_and_status_2(command: list[str], tmp_path: Path) -> None:
    env = _env(
        NEWSLETTER_HOME=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}", REDIS_URL="redis://127.0.0.1:1/0",
        NEWSLETTER_SECRET_KEY=KEY, NEWSLETTER_BASE_URL="https://news.example.org", NEWSLETTER_FROM="not an address",
    )  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: NEWSLETTER_FROM='not an address' is not a valid address")
    assert errors[0].endswith("; expected one address, e.g. 'The Weekly Review <weekly@news.example.org>'")
    assert "Traceback" not in result.stderr


def test_a_worker_refuses_a_database_without_the_schema(tmp_path: Path) -> None:
    env = _env(NEWSLETTER_HOME=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}", REDIS_URL="redis://127.0.0.1:1/0",
               NEWSLETTER_SECRET_KEY=KEY, NEWSLETTER_BASE_URL="https://news.example.org")  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "worker"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: the database has no schema yet; this version needs" in result.stderr and "newsletter db upgrade" in result.stderr


def test_help_works_whatever_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    monkeypatch.setenv("NEWSLETTER_HOME", str(tmp_path))
    monkeypatch.setenv("NEWSLETTER_FROM", "not an address")
    for args in (["--help"], ["issue", "--help"], ["issue", "publish", "--help"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args
    refused = CliRunner().invoke(main, ["issue", "list"])
    assert refused.exit_code == 2 and refused.output.startswith("error: NEWSLETTER_FROM=")
    assert not (tmp_path / "secret_key").exists()  # a refused configuration leaves nothing behind


def test_the_web_app_refuses_a_bad_setting_with_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import importlib

    for key, value in _env(
        NEWSLETTER_HOME=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0", NEWSLETTER_BASE_URL="https://n.example.org"
    ).items():
        monkeypatch.setenv(key, value)
    for key in ("NEWSLETTER_SECRET_KEY", "DATABASE_URL", "SMTP_URL"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as stopped:
        if "newsletter.web.asgi" in sys.modules:  # what uvicorn (and `newsletter web`) load
            importlib.reload(sys.modules["newsletter.web.asgi"])
        else:
            importlib.import_module("newsletter.web.asgi")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: NEWSLETTER_SECRET_KEY is not set, and DATABASE_URL, REDIS_URL or SMTP_URL is")
    assert not (tmp_path / "secret_key").exists()  # no key is made up outside the embedded default


def test_the_shared_corpora_are_found_from_any_directory(tmp_path: Path) -> None:
    """Regression: from another directory the demo fell back to the bundled sample (../shared/data was
    resolved against the current directory only)."""
    from newsletter.config import default_data_dir

    checkout, elsewhere = tmp_path / "work" / "repo", tmp_path / "somewhere" / "else"
    shared = tmp_path / "work" / "shared" / "data"
    for path in (checkout, elsewhere, shared):
        path.mkdir(parents=True)
    assert default_data_dir(elsewhere, checkout) == shared
    assert default_data_dir(checkout, tmp_path / "nowhere" / "repo") == shared  # from the current directory
    assert default_data_dir(elsewhere, tmp_path / "nowhere" / "repo") == tmp_path / "somewhere" / "shared" / "data"


def test_the_from_name_follows_the_edition_language() -> None:
    """Regression (a reader's trial): Chinese editions came from "The Weekly Review" while saying 每週評論."""
    settings = load_settings({})
    assert settings.from_header("en") == "The Weekly Review <weekly@newsletter.example.org>"
    assert settings.from_header("zh-Hant") == "每週評論 <weekly@newsletter.example.org>"
    assert settings.from_header("zh-Hans") == "每周评论 <weekly@newsletter.example.org>"
    own = load_settings({"NEWSLETTER_FROM": "Policy Desk <desk@example.org>"})
    assert own.from_header("zh-Hant") == "Policy Desk <desk@example.org>"  # a name of the sender's own stays


def test_a_clamped_setting_is_warned_about_once_per_command(tmp_path: Path) -> None:
    env = _env(NEWSLETTER_HOME=str(tmp_path), NEWSLETTER_BATCH_SIZE="0")
    result = subprocess.run([sys.executable, "-m", "newsletter.cli", "db", "upgrade"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("NEWSLETTER_BATCH_SIZE=0 is out of range [1, 10000]; using 1") == 1, result.stderr


def test_an_unset_base_url_in_service_mode_is_named_unset_not_as_the_default() -> None:
    """Regression: the error read "NEWSLETTER_BASE_URL='http://localhost:8000' is http" as if the user had set it."""
    with pytest.raises(SettingsError) as caught:
        load_settings({k: v for k, v in REAL.items() if k != "NEWSLETTER_BASE_URL"})
    text = str(caught.value)
    assert text.startswith("NEWSLETTER_BASE_URL is not set, and DATABASE_URL, REDIS_URL or SMTP_URL is")
    assert "='http://localhost:8000'" not in text and "e.g. https://news.example.org" in text and "\n" not in text


def test_every_bad_setting_is_reported_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: with both NEWSLETTER_BASE_URL and NEWSLETTER_SECRET_KEY missing only the first was
    reported; fixing it showed the next. Each now has its own line, exit status 2, no traceback."""
    from click.testing import CliRunner

    from newsletter.cli import main
    from newsletter.config import SettingsErrors

    env = {"DATABASE_URL": "postgresql://app:pw@db/newsletter", "NEWSLETTER_BATCH_SIZE": "many"}
    with pytest.raises(SettingsErrors) as caught:
        load_settings(env)
    assert [e.name for e in caught.value.errors] == ["NEWSLETTER_BASE_URL", "NEWSLETTER_BATCH_SIZE", "NEWSLETTER_SECRET_KEY"]
    for key, value in _env(NEWSLETTER_HOME=str(tmp_path), **env).items():
        monkeypatch.setenv(key, value)
    for key in ("NEWSLETTER_SECRET_KEY", "NEWSLETTER_BASE_URL", "REDIS_URL", "SMTP_URL"):
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(main, ["issue", "list"])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines] == ["NEWSLETTER_BASE_URL", "NEWSLETTER_BATCH_SIZE='many'", "NEWSLETTER_SECRET_KEY"]
    assert all(line.startswith("error: ") and "; expected " in line for line in lines), lines
    assert "Traceback" not in result.output and ":pw@" not in result.output
    assert not (tmp_path / "secret_key").exists()


def test_a_worker_reports_every_bad_setting_at_once(tmp_path: Path) -> None:
    env = _env(NEWSLETTER_HOME=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0", NEWSLETTER_LOG_FORMAT="xml")
    command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel=WARNING"]
    result = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["NEWSLETTER_BASE_URL", "NEWSLETTER_LOG_FORMAT='xml'", "NEWSLETTER_SECRET_KEY"], result.stderr


def test_the_web_app_names_every_bad_setting_on_its_own_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Regression: loaded by uvicorn with several bad settings, only the first line said ``error:``."""
    import importlib

    for key, value in _env(NEWSLETTER_HOME=str(tmp_path), NEWSLETTER_FROM="not an address", NEWSLETTER_BATCH_SIZE="none").items():
        monkeypatch.setenv(key, value)
    for key in ("NEWSLETTER_SECRET_KEY", "DATABASE_URL", "SMTP_URL", "REDIS_URL", "NEWSLETTER_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as stopped:
        if "newsletter.web.asgi" in sys.modules:
            importlib.reload(sys.modules["newsletter.web.asgi"])
        else:
            importlib.import_module("newsletter.web.asgi")
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and all(line.startswith("error: ") for line in lines)
    assert any("NEWSLETTER_FROM" in line for line in lines) and any("NEWSLETTER_BATCH_SIZE" in line for line in lines)
