"""Near-duplicates among an issue's own articles: the same story put into one issue twice.

An editor who picks "the 10 latest" from a feed that filed a story twice (a press release and its
re-post, a correction filed as a new piece) would otherwise mail it twice. The rule is the ranking's
(`newsletter.related.rank.is_near_duplicate`): texts nearly equal *and* filed within days of each other,
never the title alone, here on each text's full set of terms (the index drops terms it has seen once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.models import Article
from newsletter.related.rank import is_near_duplicate
from newsletter.related.text import group_of, text_vector

DAY = 86400.0  # seconds


@dataclass(frozen=True)
class NearDuplicate:
    """Two articles of one draft that are one story: ``resemblance`` is the share of distinct terms in
    common (0..1, Jaccard), ``days`` how far apart they were filed (None when a date is unknown)."""

    first: Article
    second: Article
    resemblance: float
    days: float | None

    def message(self) -> str:
        """One line for the editor naming both articles."""
        apart = "an unknown time" if self.days is None else f"{self.days:.1f} days"
        return (
            f"articles {self.first.external_id} and {self.second.external_id} look like the same story filed twice "
            f"({self.resemblance:.0%} of their terms in common, {apart} apart): keep one"
        )


def near_duplicates(articles: Sequence[Article]) -> list[NearDuplicate]:
    """Pairs of ``articles`` (same language group) that are near-duplicates, in the order the first of each
    pair appears. Articles without body text (not yet extracted) are left out: a title alone proves nothing.
    Tokenises each article once (about a millisecond per article)."""
    import numpy as np

    terms: list[tuple[Article, str, np.ndarray]] = []
    for article in articles:
        if not article.body_text.strip():
            continue
        group = group_of(article.lang)
        terms.append((article, group, text_vector(f"{article.title}\n{article.body_text}", group).ids))
    found = []
    for i, (a, group_a, ids_a) in enumerate(terms):
        for b, group_b, ids_b in terms[i + 1 :]:
            if group_a != group_b or a.id == b.id:
                continue
            common = len(np.intersect1d(ids_a, ids_b, assume_unique=True))
            alike = common / max(len(ids_a) + len(ids_b) - common, 1)
            days_a, days_b = _days(a), _days(b)
            if is_near_duplicate(alike, days_a, days_b):
                apart = None if days_a != days_a or days_b != days_b else abs(days_a - days_b)  # NaN: unknown
                found.append(NearDuplicate(a, b, alike, apart))
    return found


def _days(article: Article) -> float:
    return float("nan") if article.published_at is None else article.published_at.timestamp() / DAY
