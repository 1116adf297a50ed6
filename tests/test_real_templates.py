"""The product's CSS inlining (`newsletter.rendering.inline_css`) over 311 real-world emails.

../shared/data/email-templates: Cerberus, Postmark, Mailgun, Lee Munroe, Mailchimp Blueprints, HTML Email
Boilerplate, Colorlib MJML output and caniemail feature tests (see its README). Each must inline without an
error and keep what inlining cannot express: MSO conditional comments (``<!--[if mso]>``) and ``@media`` blocks.
"""

from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from newsletter.rendering import inline_css

CONDITIONAL = re.compile(r"<!--\[if [^\]]*\]>")
MEDIA = re.compile(r"@media\b[^{]*\{")


def _style_media(html: str) -> list[str]:
    """The ``@media`` preludes inside ``<style>`` blocks, normalised (premailer may re-space them)."""
    blocks = re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.S | re.I)
    return sorted(" ".join(m.split()) for block in blocks for m in MEDIA.findall(re.sub(r"/\*.*?\*/", "", block, flags=re.S)))


def _check(path: Path) -> tuple[list[str], bool, bool, bool]:
    """Inline one email: (problems, has MSO conditionals, has @media, gained style attributes)."""
    source = path.read_bytes().decode("utf-8", errors="replace")
    try:
        out = inline_css(source)
    except Exception as exc:  # report every file that fails, not just the first
        return [f"{path}: {type(exc).__name__}: {exc}"], False, False, False
    problems = []
    conditionals = CONDITIONAL.findall(source)
    if sorted(CONDITIONAL.findall(out)) != sorted(conditionals):
        problems.append(f"{path}: conditional comments changed")
    media = _style_media(source)
    if _style_media(out) != media:
        problems.append(f"{path}: @media blocks {len(media)} -> {len(_style_media(out))}")
    inlined = len(re.findall(r"\sstyle=", out)) > len(re.findall(r"\sstyle=", source))
    return problems, bool(conditionals), bool(media), inlined


def test_every_real_email_inlines_keeping_conditional_comments_and_media_blocks(shared_data: Path) -> None:
    root = shared_data / "email-templates"
    with (root / "manifest.csv").open(encoding="utf-8") as handle:
        paths = [root / row["file"] for row in csv.DictReader(handle)]
    assert len(paths) == 311
    # premailer is CPU-bound: one process per core halves the wall time on CI's two cores.
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_check, paths, chunksize=8))
    failures = [p for problems, *_ in results for p in problems]
    assert failures == [], failures[:10]
    with_mso, with_media, inlined = (sum(r[i] for r in results) for i in (1, 2, 3))
    assert with_mso >= 190 and with_media >= 100  # README: 199 files with MSO conditionals, 121 with @media
    # Rules were really moved into style attributes: 176 files gain some (the others are the vendors' already
    # inlined versions, or have no <style> block).
    assert inlined >= 170
