"""Article summaries: the lead of the body without its dateline or boilerplate, cut at a sentence boundary.

Sentences are found by pysbd (Sadvilkar & Neumann, "PySBD: Pragmatic Sentence Boundary Disambiguation",
2020: the Golden Rules, with English abbreviations such as ``U.S.C.``, ``Dr.``, ``a.m.``), never by a regex
on full stops. What opens a body before its first real sentence depends on the source: CCTV opens every
item with "央视网消息（新闻联播）：", White House pages with a place, a time, a salutation or a memo header.
Those lead-ins are `SourceRules`, matched by the article URL's host, built in for the two shipped corpora
and extended per deployment by a JSON file (``NEWSLETTER_SUMMARY_RULES``, see `load_rules`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

# Latin limits count characters; Chinese carries about twice the information per character.
DEFAULT_LIMITS = {"en": 300, "zh": 120}

_SPACE = re.compile(r"[ \t\u00a0\u2060\u200b\u3000]+")
_HARD_BREAK = re.compile(r" {2,}\n|\\\n")  # Markdown's line break (html2text writes <br> this way)
_RULE_PREFIX = re.compile(r"^(?:[*#=~_-]+\s*)+")
_EMPHASIS = re.compile(r"\*{2,}|_{2,}|(?<!\w)\*+|\*+(?!\w)")  # Markdown emphasis left over by the CMS, stray asterisks
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
# A sentence ends with one of these, optionally followed by closing quotes or brackets.
_TERMINAL = re.compile(r"[.!?。！？…][\"'”’」』）)\]]*$")
_SMALL_WORDS = {"a", "an", "and", "at", "de", "for", "in", "of", "on", "the", "to"}
_CLOSERS = "”’」』）》〉】)]\"'"


class RulesError(ValueError):
    """A summary rules file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class SourceRules:
    """Lead-in patterns of one source.

    ``hosts``: host names (or parent domains) of the article URLs this applies to; empty: every article.
    ``drop_lines``: a leading line (before the first sentence kept) that fully matches one is dropped.
    ``strip_prefixes``: removed from the start of the first kept paragraph, repeatedly, in order.
    """

    name: str
    hosts: tuple[str, ...] = ()
    drop_lines: tuple[re.Pattern[str], ...] = ()
    strip_prefixes: tuple[re.Pattern[str], ...] = ()

    def applies_to(self, url: str | None) -> bool:
        """Whether an article at ``url`` comes from this source."""
        if not self.hosts:
            return True
        host = (urlsplit(url).hostname or "") if url else ""
        return any(host == h or host.endswith("." + h) for h in self.hosts)


def _rules(name: str, hosts: Sequence[str], drop: Sequence[str] = (), strip: Sequence[str] = ()) -> SourceRules:
    try:
        return SourceRules(
            name,
            tuple(h.lower().strip(".") for h in hosts),
            tuple(re.compile(p) for p in drop),
            tuple(re.compile(p) for p in strip),
        )
    except re.error as exc:
        raise RulesError(f"source {name!r}: bad pattern {exc.pattern!r}: {exc}") from exc


BUILTIN_RULES: tuple[SourceRules, ...] = (
    _rules("cctv", ["cctv.com"], strip=[r"央视网消息(?:（[^）]{0,20}）)?[：:]\s*"]),
    _rules(
        "whitehouse",
        ["whitehouse.gov", "bidenwhitehouse.archives.gov", "trumpwhitehouse.archives.gov", "obamawhitehouse.archives.gov"],
        drop=[
            r"(?i)(?:TO|FROM|SUBJECT|RE|CC|DATE)\s*:.*",  # memo header
            r"Dear .{1,80}?:.*",  # salutation of a letter to Congress
            r"By the authority vested in me .*",  # the executive order preamble
            r"\(?\d{1,2}:\d{2}\s*[AP]\.?M\.?(?:\s+[A-Z]{2,5})?\)?",  # time line, "11:43 A.M. EDT"
            r"(?:Statement|Readout|Remarks) (?:by|of|from) .{1,120}:",
        ],
        strip=[
            r"(?:THE (?:VICE )?PRESIDENT|(?:VICE )?PRESIDENT [A-Z’'-]+|M[RS]S?\. [A-Z’' -]+|MODERATOR|Q)\s*:\s*",  # speaker
            r"Q\s+(?=[A-Z])",  # a reporter's question in a transcript
            r"Sec(?:tion|\.)\s*1\.\s*(?:[A-Z][\w ]{0,40}\.\s+)?",  # "Section 1. Purpose." of an order
        ],
    ),
)


def load_rules(path: Path) -> tuple[SourceRules, ...]:
    """Read deployment rules: ``{"sources": [{"name", "hosts", "drop_lines", "strip_prefixes"}, …]}``.

    They come before the built-in rules, so a deployment can extend or replace what a source strips.

    Raises:
        RulesError: unreadable file, bad JSON, a missing field or a bad regular expression.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sources = data["sources"]
        return tuple(_rules(s["name"], s.get("hosts", []), s.get("drop_lines", []), s.get("strip_prefixes", [])) for s in sources)
    except OSError as exc:
        raise RulesError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise RulesError(f"{path}: {exc}") from exc


RE_CACHE = 8192  # compiled patterns kept by the re module once pysbd is in use (see _segmenter)


@cache
def _segmenter(lang: str):  # type: ignore[no-untyped-def]
    import pysbd

    # pysbd builds one regular expression per abbreviation and text (hundreds), more than the 512 the re
    # module caches, so without a larger cache every article compiles them all again (~15% of an import).
    if getattr(re, "_MAXCACHE", 0) < RE_CACHE:
        re._MAXCACHE = RE_CACHE  # type: ignore[attr-defined]
    return pysbd.Segmenter(language="zh" if lang.startswith("zh") else "en", clean=False, char_span=False)


def sentences(text: str, lang: str) -> list[str]:
    """``text`` split into sentences by pysbd, each stripped.

    A closing quote or bracket that pysbd leaves at the start of the next Chinese sentence (“……。”他说)
    is moved back to the sentence it closes.
    """
    out: list[str] = []
    for part in _segmenter(lang).segment(text):
        part = part.strip()
        lead = len(part) - len(part.lstrip(_CLOSERS))
        if out and lead and lang.startswith("zh"):
            out[-1] += part[:lead]
            part = part[lead:].strip()
        if part:
            out.append(part)
    return out


def _is_heading(line: str, lang: str) -> bool:
    """A dateline, a place, a byline or a heading: short and not ending like a sentence, or (Latin) a
    few words all capitalised, as in "Washington, D.C." or "Aboard Air Force One"."""
    if lang.startswith("zh"):
        return len(line) <= 40 and not _TERMINAL.search(line)
    words = line.split()
    if len(words) <= 6 and all(w[0].isupper() or w[0].isdigit() or w in _SMALL_WORDS for w in words if w[0].isalnum()):
        return True
    return len(line) <= 100 and len(words) <= 12 and not _TERMINAL.search(line)


def _readable(paragraph: str) -> bool:
    """Whether a paragraph can open a summary: real words, not a rule of asterisks or a shouted memo header."""
    letters = [ch for ch in paragraph if ch.isalpha()]
    if len([ch for ch in paragraph if ch.isalnum()]) < 8:
        return False
    latin = [ch for ch in letters if ch.isascii()]
    return not (len(latin) > 20 and sum(ch.isupper() for ch in latin) > 0.6 * len(latin))


def _clean(line: str) -> str:
    line = _MD_ESCAPE.sub(r"\1", _EMPHASIS.sub("", line))
    return _SPACE.sub(" ", line.replace("\n", " ")).strip()


def lead(text: str, lang: str, rules: Sequence[SourceRules] = (), short: int = 0) -> str:
    """The first paragraph that reads as prose, after the source's lead-in lines and prefixes are removed.

    Paragraphs are separated by blank lines; lines inside one by Markdown hard breaks. Leading lines that
    a rule drops, that are headings or datelines (`_is_heading`) or that are not prose (`_readable`) are
    skipped; if nothing is left, the first non-empty paragraph is returned as it is. A paragraph shorter
    than ``short`` characters is followed by the next ones (the caller cuts the result to length).
    """
    paragraphs = re.split(r"\n[ \t\u00a0]*\n", text)
    blocks = [[_clean(x) for x in _HARD_BREAK.split(p)] for p in paragraphs]
    lines = [(i, x) for i, block in enumerate(blocks) for x in block if x]
    if not lines:
        return next((_SPACE.sub(" ", p.replace("\n", " ")).strip() for p in paragraphs if p.strip()), "")
    drop = [p for r in rules for p in r.drop_lines]
    strip = [p for r in rules for p in r.strip_prefixes]
    for n, (block, line) in enumerate(lines):
        for pattern in strip:  # "央视网消息（新闻联播）：" may be a line of its own or open the paragraph
            line = pattern.sub("", line, count=1) if pattern.match(line) else line
        line = _RULE_PREFIX.sub("", line)
        last = n == len(lines) - 1
        if not line or any(p.fullmatch(line) for p in drop) or (not last and _is_heading(line, lang)) or not _readable(line):
            continue
        rest = [x for b, x in lines[n + 1 :] if b == block]
        paragraph = " ".join([line, *rest])
        if len(paragraph) < short:  # "Thank you." opening a speech: go on with the next paragraphs
            later = [x for b, x in lines[n + 1 :] if b != block and _readable(x)]
            paragraph = " ".join([paragraph, *later[:8]])
        return paragraph
    return " ".join(x for b, x in lines if b == lines[0][0])  # nothing reads as prose: keep what there is


def _unbalanced_cut(cut: str) -> str:
    """Cut back to before an opening bracket the cut left open: "… Act (50 U.S.C. 1701" -> "… Act"."""
    depth_at: list[int] = []
    for i, ch in enumerate(cut):
        if ch in "(（[":
            depth_at.append(i)
        elif ch in ")）]" and depth_at:
            depth_at.pop()
    return cut[: depth_at[0]] if depth_at and depth_at[0] > len(cut) // 2 else cut


def summarise(
    text: str, lang: str, limit: int | None = None, *, url: str | None = None, rules: Sequence[SourceRules] = BUILTIN_RULES
) -> str:
    """The lead of ``text`` (see `lead`) cut to at most ``limit`` characters at a sentence boundary.

    ``limit`` counts characters (code points: one per Chinese character), by default 300 for Latin
    scripts and 120 for Chinese. When whole sentences would fill less than half of it, the text is cut
    at a word boundary instead (any character in Chinese), before a bracket the cut would leave open,
    without trailing commas, and ends with "…". ``url`` (the article's) selects the source's `rules`.
    """
    if limit is None:
        limit = DEFAULT_LIMITS["zh" if lang.startswith("zh") else "en"]
    first = lead(text, lang, [r for r in rules if r.applies_to(url)], short=limit // 4)
    if len(first) <= limit:
        return first
    kept = ""
    for sentence in sentences(first, lang):
        joined = f"{kept}{'' if lang.startswith('zh') or not kept else ' '}{sentence}"
        if len(joined) > limit:
            break
        kept = joined
    if len(kept) > limit // 2:
        return kept
    cut = first[:limit]
    if not lang.startswith("zh") and " " in cut and first[limit : limit + 1] not in ("", " "):
        cut = cut.rsplit(" ", 1)[0]
    cut = _unbalanced_cut(cut)
    return cut.rstrip(" ,;:，；：、—-") + "…"
