"""The product's CSS inlining (`newsletter.rendering.inline_css`) over 311 real-world emails.

../shared/data/email-templates: Cerberus, Postmark, Mailgun, Lee Munroe, Mailchimp Blueprints, HTML Email
Boilerplate, Colorlib MJML output and caniemail feature tests (see its README). Each must inline without an
error and keep what inlining cannot express: MSO conditional comments (``<!--[if mso]>``) and ``@media`` blocks.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from newsletter.rendering import inline_css

CONDITIONAL = re.compile(r"<!--\[if [^\]]*\]>")
MEDIA = re.compile(r"@media\b[^{]*\{")


def _style_media(html: str) -> list[str]:
    """The ``@media`` preludes inside ``<style>`` blocks, normalised (premailer may re-space them)."""
    blocks = re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.S | re.I)
    return sorted(" ".join(m.split()) for block in blocks for m in MEDIA.findall(re.sub(r"/\*.*?\*/", "", block, flags=re.S)))


def test_every_real_email_inlines_keeping_conditional_comments_and_media_blocks(shared_data: Path) -> None:
    root = shared_data / "email-templates"
    with (root / "manifest.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 311
    failures: list[str] = []
    with_media = with_mso = inlined = 0
    for row in rows:
        source = (root / row["file"]).read_bytes().decode("utf-8", errors="replace")
        try:
            out = inline_css(source)
        except Exception as exc:  # report every file that fails, not just the first
            failures.append(f"{row['file']}: {type(exc).__name__}: {exc}")
            continue
        conditionals = CONDITIONAL.findall(source)
        if conditionals:
            with_mso += 1
            if sorted(CONDITIONAL.findall(out)) != sorted(conditionals):
                failures.append(f"{row['file']}: conditional comments changed")
        media = _style_media(source)
        if media:
            with_media += 1
            if _style_media(out) != media:
                failures.append(f"{row['file']}: @media blocks {len(media)} -> {len(_style_media(out))}")
        inlined += len(re.findall(r"\sstyle=", out)) > len(re.findall(r"\sstyle=", source))
    assert failures == [], failures[:10]
    assert with_mso >= 190 and with_media >= 100  # README: 199 files with MSO conditionals, 121 with @media
    # Rules were really moved into style attributes: 176 files gain some (the others are the vendors' already
    # inlined versions, or have no <style> block).
    assert inlined >= 170
