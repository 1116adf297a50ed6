"""An article's derived text: the sanitised HTML of a Markdown body and the summary, made where they are used.

`articles import` stores what must exist at once (validated fields, the Markdown source, a body given as HTML
already sanitised, the plain text the related-articles index reads) and marks the rest pending
(``Article.text_pending``). Reading ``Article.body_html`` or ``Article.summary`` computes what is pending with the
functions below, the same chain the import ran for every record before (Python-Markdown, nh3, html2text, pysbd:
~10 ms of CPU per White House article), and keeps the result in the row, written with the session's next flush:
an issue's articles and related picks (a few dozen) are converted once, not the whole archive at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from newsletter.content import html_to_text, sanitise_html, strip_links
from newsletter.summaries import SourceRules, summarise

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from newsletter.models import Article


def link_base(url: Any) -> str | None:
    """The base relative links of an article's body resolve against: its own URL if http(s), else None."""
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def markdown_body_html(markdown_text: str, url: Any, title: str) -> str:
    """Sanitised HTML of a Markdown body (`newsletter.content.sanitise_html`: links made absolute against the
    article's ``url``, images without alt text get the ``title``)."""
    import markdown

    return sanitise_html(markdown.markdown(markdown_text, output_format="html"), base_url=link_base(url), image_alt=title)


def summary_of(body_html: str, from_markdown: bool, lang: str, url: Any, rules: Sequence[SourceRules]) -> str:
    """The summary of a sanitised body (`newsletter.summaries.summarise` of its text; Markdown link targets
    and bare URLs dropped when the body came as Markdown)."""
    text = html_to_text(body_html, links=False)
    return summarise(strip_links(text) if from_markdown else text, lang, url=url, rules=rules)


def derive(article: Article, rules: Sequence[SourceRules]) -> bool:
    """Compute what is pending of ``article`` (``body_html`` of a Markdown body, the summary) into its
    stored columns and clear ``text_pending``; does not flush. Returns whether anything was pending."""
    if not article.text_pending:
        return False
    if article.body_markdown is not None and article.stored_body_html == "":
        article.stored_body_html = markdown_body_html(article.body_markdown, article.url, article.title)
    if article.stored_summary == "":  # a summary given by the record is never empty (see `record_to_fields`)
        article.stored_summary = summary_of(article.stored_body_html, article.body_markdown is not None, article.lang, article.url, rules)
    article.text_pending = False
    return True


def derive_all(articles: Iterable[Article], rules: Sequence[SourceRules]) -> int:
    """`derive` each of ``articles``; returns how many had something pending."""
    return sum(derive(a, rules) for a in articles)


def keep_derived(session: Session, articles: Iterable[Article]) -> int:
    """`derive` ``articles`` with this process's summary rules and commit if anything was pending, so the
    next reader finds it stored (for read-only requests, which otherwise never commit). Returns the count."""
    from newsletter.config import deployment_summary_rules

    made = derive_all(articles, deployment_summary_rules())
    if made:
        session.commit()
    return made


def derive_pending(session: Session, where: Any, rules: Sequence[SourceRules], batch: int = 200) -> int:
    """Derive every pending article matching the SQL condition ``where`` (None: all), committing per
    ``batch``; returns how many were derived. Used before a search reads summaries in SQL."""
    from sqlalchemy import select

    from newsletter.models import Article

    done = 0
    last = 0
    while True:
        query = select(Article).where(Article.text_pending.is_(True), Article.id > last)
        if where is not None:
            query = query.where(where)
        chunk = list(session.scalars(query.order_by(Article.id).limit(batch)))
        if not chunk:
            return done
        done += derive_all(chunk, rules)
        last = chunk[-1].id
        session.commit()
