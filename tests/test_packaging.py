"""A non-editable install carries the templates and migrations (issue 2: `pip install .`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_non_editable_install_finds_templates_and_migrations(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(ROOT)],
        check=True,
    )
    probe = (
        "import newsletter.rendering as r, newsletter.db as d;"
        "print(r.templates_dir()); print(d.MIGRATIONS);"
        "print((r.templates_dir() / 'email/issue/body.html').is_file(), any(d.MIGRATIONS.glob('versions/0001_*.py')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True, check=True
    )
    templates, migrations, flags = out.stdout.splitlines()
    assert Path(templates) == site / "newsletter" / "templates"
    assert Path(migrations) == site / "newsletter" / "migrations"
    assert flags == "True True"
    assert (site / "newsletter" / "sample" / "articles-zh-Hans.jsonl").is_file()  # the demo's fallback corpus
    assert (site / "newsletter" / "templates" / "email" / "_base" / "body.html").is_file()
    assert (site / "newsletter" / "templates" / "web" / "admin" / "_base.html").is_file()
    assert (site / "newsletter" / "web" / "static" / "htmx.min.js").is_file()  # served by the app, no CDN
