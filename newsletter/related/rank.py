"""Ranking: which archived articles to show under an article, and the per-issue selection.

A candidate's score is a linear combination of signals (weights `WEIGHTS`, tuned by 5-fold
cross-validation on the White House editors' development links with ``bench/related_eval.py --fit``):

- ``body``: cosine of the two texts (title + body), TF-IDF on words and word bigrams (characters and
  character bigrams in Chinese);
- ``title``: cosine of the candidate's *title* against the source's full text — an editor's link text
  usually names the linked piece, and that anchor text stays in the body after the link is stripped;
- ``recency``: ``-ln(1 + days between them)``, and ``week``: 1 when at most 7 days apart — editors point to
  what is current.

Two stages (`_two_stage`): the `RERANK_DEPTH` candidates whose text is most similar (``related``, see
`signals`: the cosine, expanded for headline-length sources) are ordered by that score, the rest follow in
text order. The title and date signals were fitted on editors' links, where the anchor text makes a title
match strong evidence; letting them pull candidates in from anywhere cost 0.10 of same-topic precision@10 on
the BBC corpus (0.92 -> 0.82) for +0.00 nDCG@10 on the links.

A candidate is shown only if its text is related at all (``body >= MIN_SIMILARITY``), and
never if it is a near-duplicate of the source: the same story filed twice, judged by text *and* date
together (`is_near_duplicate`), never by title alone. Candidates are scored with the source's own
weighting only; the TF-IDF cosine is not used for duplicates, since a term found in one document only is
dropped from it (min_df 2) and two short texts can then look identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from newsletter.related.index import Entry, RelatedIndex

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp

# Fitted on all dev sources by `bench/related_eval.py --fit` (5-fold cross-validated nDCG@10 0.737). A share of
# the candidate title's bigrams found in the source was measured too and got weight 0, so it was dropped.
WEIGHTS = {"body": 1.0, "title": 3.0, "recency": 0.05, "week": 0.75}
MIN_SIMILARITY = 0.08  # body cosine below which nothing is shown, whatever the date says (fitted with WEIGHTS)
DUPLICATE_RESEMBLANCE = 0.6  # share of distinct terms in common at or above which two texts are one story...
DUPLICATE_DAYS = 3.0  # ...if filed this close together (or a date is unknown)
PER_ARTICLE = 3
SHORT_TEXT = 64  # distinct terms under which a source is expanded (see `signals`)
LATENT_WEIGHT = 0.3  # latent cosine added to the term cosine (THUCNews titles, bench/related_eval.py)
FEEDBACK_DOCS = 5  # pseudo-relevance feedback: the source's nearest texts...
FEEDBACK_WEIGHT = 1.0  # ...and the weight of their mean similarity
RERANK_DEPTH = 10  # the text's top candidates that the other signals may reorder (see `_two_stage`)
POOL = 30  # candidates per article considered when spreading picks across the issue


@dataclass(frozen=True)
class Source:
    """What is known of the article recommendations are made for: its weighted and binary vectors (one row
    over the index's columns, in the index's weighting) and its date in days since the epoch (NaN if unknown)."""

    body: sp.csr_matrix
    present: sp.csr_matrix
    days: float
    size: int  # distinct terms of its text (those unknown to the index included)


def source_of(index: RelatedIndex, article_id: int | None = None, entry: Entry | None = None) -> Source:
    """The `Source` for an indexed article (by id) or for an `Entry` not in the index (weighted with the
    index's IDF). Raises KeyError for an id that is not indexed."""
    import scipy.sparse as sp

    if entry is None:
        if article_id is None:
            raise ValueError("source_of needs an article id or an entry")
        row = index.row[article_id]
        return Source(index.body[row], index.present[row], float(index.days[row]), int(index.sizes[row]))
    from newsletter.related.index import _csr

    counts = _csr([entry.body], index.columns)
    present = sp.csr_matrix(counts, copy=True)
    present.data[:] = 1.0
    days = entry.published_at.timestamp() / 86400 if entry.published_at else math.nan
    return Source(index.weigh(counts), present, days, len(entry.body.ids))


def _text(index: RelatedIndex, body: np.ndarray, latent: np.ndarray | None) -> np.ndarray:
    """Text similarity of every entry with a text of weighted terms ``body`` (dense, over the index's
    columns) and latent vector ``latent`` (None: terms only): cosine + `LATENT_WEIGHT` x latent cosine."""
    text = index.body @ body
    space = index.latent() if latent is not None else None
    if space is not None:
        text = text + LATENT_WEIGHT * (space[2] @ latent)
    return text


def signals(index: RelatedIndex, source: Source, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each signal of `WEIGHTS` for every entry of the index against ``source``, and ``related``, the text
    similarity that decides which entries are candidates at all: ``{name: (N,) float}``.

    ``related`` is the cosine of the term vectors, except for a short source (fewer than `SHORT_TEXT`
    distinct terms: a headline, a one-line item), which has too few words to find its neighbours by word
    overlap alone. For it, ``related`` adds the cosine in the latent space (LSA: terms that occur in the same
    texts count as alike, so two headlines can match without a word in common), then pseudo-relevance
    feedback: `FEEDBACK_WEIGHT` x the mean similarity to the `FEEDBACK_DOCS` entries most similar to the
    source among those ``mask`` allows (Rocchio, "Relevance feedback in information retrieval", 1971), so
    nothing published after the source shapes its list. Expansion helps short queries and hurts long ones
    (Xu & Croft, "Query expansion using local and global document analysis", SIGIR 1996); measured with
    ``bench/related_eval.py``: THUCNews titles P@10 0.638 -> 0.706, while on the White House links
    (documents of 120+ distinct terms) it cost 0.02 nDCG@10.
    """
    import numpy as np

    gap = np.abs(source.days - index.days)
    gap = np.where(np.isnan(gap), np.inf, gap)
    # Sparse matrix x dense vector: one pass over the index, no sparse product to allocate.
    body = source.body.toarray().ravel()
    cosine = index.body @ body
    related = cosine
    space = index.latent() if source.size < SHORT_TEXT else None
    if space is not None:
        latent = index.project(source.body)[0]
        text = _text(index, body, latent)
        allowed = np.ones(len(index), bool) if mask is None else mask
        related = text
        if FEEDBACK_WEIGHT and allowed.sum() > FEEDBACK_DOCS:
            top = np.argpartition(-np.where(allowed, text, -np.inf), FEEDBACK_DOCS)[:FEEDBACK_DOCS]
            mean_body = np.asarray(index.body[top].mean(axis=0)).ravel()
            related = text + FEEDBACK_WEIGHT * _text(index, mean_body, space[2][top].mean(axis=0))
    return {
        "related": related,
        "body": cosine,
        "title": index.title @ body,
        "recency": np.where(np.isinf(gap), -10.0, -np.log1p(np.minimum(gap, 1e6))),
        "week": (gap <= 7).astype(np.float64),
    }


def combine(sig: dict[str, np.ndarray], weights: dict[str, float] = WEIGHTS) -> np.ndarray:
    """The score: ``sum(weights[name] * sig[name])`` (float64: a float32 sum can tie what float64 orders)."""
    import numpy as np

    return sum(w * sig[name].astype(np.float64) for name, w in weights.items())  # type: ignore[return-value]


def resemblance(index: RelatedIndex, rows: Sequence[int] | np.ndarray, present: sp.csr_matrix, size: int) -> np.ndarray:
    """Resemblance (Broder, "On the resemblance and containment of documents", 1997) of the texts in
    ``rows`` with the text whose binary term vector is ``present`` (``size`` distinct terms): |A ∩ B| / |A ∪ B|
    over their distinct words and word bigrams (characters and character bigrams in Chinese), every term
    counted, however rare."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    common = index.present[rows] @ present.toarray().ravel()
    return common / np.maximum(index.sizes[rows] + size - common, 1.0)


def is_near_duplicate(similarity: float, days_a: float, days_b: float) -> bool:
    """The same story filed twice: texts nearly equal (`resemblance` >= `DUPLICATE_RESEMBLANCE`) *and*
    filed within `DUPLICATE_DAYS` of each other (an unknown date cannot prove two events apart). Two events
    with the same title months apart (a ceremony held every July and December) are not duplicates."""
    if similarity < DUPLICATE_RESEMBLANCE:
        return False
    if math.isnan(days_a) or math.isnan(days_b):
        return True
    return abs(days_a - days_b) <= DUPLICATE_DAYS


def candidates_mask(index: RelatedIndex, cutoff: datetime | None, exclude: Iterable[int] = ()) -> np.ndarray:
    """Which entries may be recommended: published no later than ``cutoff`` (an unknown date is excluded
    then; with no cutoff every entry qualifies), and not in ``exclude`` (article ids)."""
    import numpy as np

    if cutoff is None:
        mask = np.ones(len(index), bool)
    else:
        with np.errstate(invalid="ignore"):
            mask = index.days <= cutoff.timestamp() / 86400
    for article_id in exclude:
        row = index.row.get(article_id)
        if row is not None:
            mask[row] = False
    return mask


def rank(
    index: RelatedIndex,
    source: Source,
    mask: np.ndarray,
    *,
    k: int = 10,
    min_similarity: float = MIN_SIMILARITY,
    weights: dict[str, float] = WEIGHTS,
) -> list[tuple[int, float]]:
    """The top ``k`` entries allowed by ``mask`` for ``source``, near-duplicates of the source and entries
    below ``min_similarity`` left out. The function the publish step and ``bench/related_eval.py`` share.

    Returns:
        ``[(article_id, score), ...]``, best first (ties: the index's order, i.e. stable).
    """
    import numpy as np

    if k <= 0 or not len(index):
        return []
    sig = signals(index, source, mask)
    allowed = mask & (sig["body"] >= min_similarity)
    score = np.where(allowed, combine(sig, weights), -np.inf)
    ranked: list[tuple[int, float]] = []
    order = _two_stage(np.where(allowed, sig["related"], -np.inf), score, k + 32)  # a few spare for near-duplicates
    similar = resemblance(index, order, source.present, source.size)
    for row, alike in zip(order.tolist(), similar.tolist(), strict=True):
        if len(ranked) == k:
            break
        if is_near_duplicate(alike, source.days, float(index.days[row])):
            continue
        ranked.append((int(index.ids[row]), float(score[row])))
    return ranked


def _two_stage(text: np.ndarray, score: np.ndarray, n: int, depth: int = RERANK_DEPTH) -> np.ndarray:
    """Row order of the best ``n``: the ``depth`` rows most similar by ``text`` alone, ordered by ``score``,
    then the next rows in ``text`` order (rows at ``-inf`` left out). The text decides *which* pieces are
    close enough; the title and date signals only decide their order. Letting the title signal pull pieces
    in from further down (one word of a short title found in the source) cost the BBC same-topic
    precision@10 0.10 while adding nothing on the White House links (``bench/related_eval.py``)."""
    import numpy as np

    by_text = np.argsort(-text, kind="stable")[: max(n, depth)]
    by_text = by_text[np.isfinite(text[by_text])]
    head = by_text[:depth]
    head = head[np.argsort(-score[head], kind="stable")]
    return np.concatenate([head, by_text[depth:]])[:n]


def for_issue(
    index: RelatedIndex,
    sources: Sequence[Source],
    mask: np.ndarray,
    *,
    per_article: int = PER_ARTICLE,
    pool: int = POOL,
) -> list[list[tuple[int, float]]]:
    """Up to ``per_article`` picks for each of an issue's articles, spread across the issue.

    Each source gets its own ranked pool (`rank`); picks are then dealt round by round, in issue order, each
    article taking its best candidate not already shown under another article and not a near-duplicate of
    a pick already made (nor of any of the issue's own articles, which `rank` checks per source).

    Returns:
        One ``[(article_id, score), ...]`` per source, best first.
    """
    pools = [rank(index, s, mask, k=pool) for s in sources]
    picks: list[list[tuple[int, float]]] = [[] for _ in sources]
    taken: list[int] = []
    cursor = [0] * len(sources)
    for _ in range(per_article):
        for i, candidates in enumerate(pools):
            while cursor[i] < len(candidates):
                article_id, score = candidates[cursor[i]]
                cursor[i] += 1
                row = index.row[article_id]
                if article_id in taken:
                    continue
                day = float(index.days[row])
                # Not the twin of a pick already made, nor of any of the issue's articles.
                if taken:
                    rows = [index.row[t] for t in taken]
                    alike = resemblance(index, rows, index.present[row], int(index.sizes[row]))
                    if any(is_near_duplicate(a, float(d), day) for a, d in zip(alike.tolist(), index.days[rows].tolist(), strict=True)):
                        continue
                alike = [float(resemblance(index, [row], src.present, src.size)[0]) for src in sources]
                if any(is_near_duplicate(a, src.days, day) for a, src in zip(alike, sources, strict=True)):
                    continue
                picks[i].append((article_id, score))
                taken.append(article_id)
                break
    return picks
