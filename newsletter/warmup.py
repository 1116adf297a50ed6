"""Warm a worker before it forks its pool: import and build what the first publish would otherwise pay for.

A Celery worker's pool processes are forked from its main process, so whatever the main process has
imported and built before the fork (modules, compiled templates, locale data, OpenCC's dictionaries) every
pool process has for free, its pages shared copy-on-write. Without this, the first publish after a start
paid for it inside its related and render steps (about 1 s each on this project's 2-core machine). Only
the worker calls it (`tasks.app`): CLI commands, the web app and the embedded default import none of it.
"""

from __future__ import annotations

import logging
import time

from newsletter.config import Settings

log = logging.getLogger(__name__)


def warm_related(settings: Settings) -> None:
    """Import the related-articles ranking (numpy, scipy), build its process-wide tables (the CRC shift
    tables of the bigram hashes, OpenCC's Traditional-to-Simplified converter for zh-Hant text) and load the
    persisted index of every language group into the process's cache (`newsletter.related.store.load_index`:
    half of a cold related step on the demo's archive; the cache checks the index's version at each use, so
    an index changed later is read again). The database connection is closed after: a forked pool process
    must inherit no socket."""
    import scipy.linalg  # the latent space's SVD
    import scipy.sparse  # noqa: F401
    from sqlalchemy import select

    from newsletter.db import get_engine, session_factory
    from newsletter.models import RelatedIndexEntry
    from newsletter.related import rank, store  # noqa: F401  (rank: the ranking's imports)
    from newsletter.related.text import _shift_tables, _t2s, tokens

    _shift_tables()
    _t2s()
    tokens("Grid security rules tightened", "en")
    tokens("电网安全新规出台", "zh")
    try:
        with session_factory(settings.database_url)() as session:
            for group in session.scalars(select(RelatedIndexEntry.group).distinct()).all():
                store.load_index(session, group)
    finally:
        get_engine(settings.database_url).dispose()


def warm_rendering(settings: Settings) -> None:
    """Render a small made-up edition in every language: compiles the templates (Jinja2 caches them per
    environment), imports premailer, cssutils, lxml, Markdown and the HTML sanitiser, reads the gettext
    catalogs and Babel's locale data, and builds the deployment's OpenCC converter. Nothing is stored."""
    from newsletter.models import LANGUAGES, utcnow
    from newsletter.publishing import converter, format_date
    from newsletter.rendering import ArticleView, EditionContent, render_edition

    convert = converter(settings)
    for lang in LANGUAGES:
        related = ArticleView(title="Related", summary="One line.", url=f"{settings.base_url}/r")
        article = ArticleView(title="Warm-up", summary="A summary.", url=f"{settings.base_url}/a", category="News", related=(related,))
        content = EditionContent(
            number=0,
            lang=lang,
            title=convert("预热") if lang == "zh-Hant" else "Warm-up",
            date=format_date(utcnow(), lang, settings.timezone),
            web_url=f"{settings.base_url}/issues/0/{lang}",
            articles=(article,),
            editors_note="**Hello** [link](https://example.org/)",
            converted_from="zh-Hans" if lang == "zh-Hant" else None,
            site_url=settings.base_url + "/",
            languages=tuple(LANGUAGES),
            branding=settings.branding,
        )
        render_edition(content)


def warm(settings: Settings, queues: set[str] | None = None) -> dict[str, float]:
    """Warm what the worker's ``queues`` run (None: all): the related step and rendering for ``render``.
    Returns the seconds each part took. Never raises: a failure is logged and the step pays the cost
    itself later (as without warming), so a worker never fails to start for it."""
    took: dict[str, float] = {}
    if queues is not None and "render" not in queues:
        return took
    for name, part in (("related", lambda: warm_related(settings)), ("render", lambda: warm_rendering(settings))):
        started = time.monotonic()
        try:
            part()
        except Exception:
            log.warning("warming %s before the pool starts failed; the first publish pays for it instead", name, exc_info=True)
        took[name] = time.monotonic() - started
    return took
