"""Related articles ("You might also like") from the archive by TF-IDF cosine similarity.

English text is split into words (scikit-learn's analyser, English stop words removed); Chinese has no
spaces, so it is indexed as overlapping character bigrams, a standard baseline for Chinese retrieval
(Nie, Gao, Zhang & Zhou, "On the use of words and n-grams for Chinese information retrieval", IRAL 2000).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_LATIN = re.compile(r"[a-z0-9]{2,}")
MAX_CHARS = 6000  # the opening of a long document says what it is about; bounds indexing time
DUPLICATE_SCORE = 0.9  # above this a candidate is the same story, not a related one


@dataclass(frozen=True)
class Doc:
    """An article as the recommender sees it."""

    id: int
    title: str
    text: str


def cjk_bigrams(text: str) -> list[str]:
    """Tokens for Chinese text: character bigrams inside CJK runs (a lone character stays a
    unigram) plus lower-cased Latin words and numbers."""
    tokens: list[str] = []
    for run in _CJK.findall(text):
        if len(run) == 1:
            tokens.append(run)
        else:
            tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
    tokens.extend(_LATIN.findall(text.lower()))
    return tokens


def _vectorizer(lang: str, n_docs: int) -> TfidfVectorizer:
    # Dropping terms found in over half the documents removes boilerplate in a real archive, but in a
    # small one it would drop the very words the related documents share.
    max_df = 0.5 if n_docs >= 50 else 1.0
    if lang.startswith("zh"):
        return TfidfVectorizer(analyzer=cjk_bigrams, sublinear_tf=True, min_df=1, max_df=max_df)
    return TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=1, max_df=max_df, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]+\b")


def _document(doc: Doc) -> str:
    # The title twice: it is the densest statement of the topic.
    return f"{doc.title}\n{doc.title}\n{doc.text[:MAX_CHARS]}"


def recommend(lang: str, queries: Sequence[Doc], archive: Sequence[Doc], *, k: int = 5) -> list[tuple[int, float]]:
    """Rank ``archive`` by similarity to ``queries`` (the issue's articles) and return the top ``k``.

    A candidate's score is its highest cosine similarity to any query article, so each article of
    the issue can pull in its own neighbours. Query articles themselves and near-duplicates of them
    (score >= `DUPLICATE_SCORE`) are excluded.

    Returns:
        ``[(article_id, score), ...]``, best first, scores in [0, 1].
    """
    query_ids = {q.id for q in queries}
    candidates = [d for d in archive if d.id not in query_ids]
    if not queries or not candidates:
        return []
    vectorizer = _vectorizer(lang, len(queries) + len(candidates))
    matrix = vectorizer.fit_transform([_document(d) for d in (*queries, *candidates)])
    q, c = matrix[: len(queries)], matrix[len(queries) :]
    # Rows are L2-normalised by TfidfVectorizer, so the dot product is the cosine.
    similarity = (c @ q.T).toarray()
    best = similarity.max(axis=1)
    best[best >= DUPLICATE_SCORE] = -1.0
    # The same story is often filed twice (another section, another URL): one title, one entry.
    seen = {_title_key(q.title) for q in queries}
    ranked: list[tuple[int, float]] = []
    for i in np.argsort(-best, kind="stable"):
        if best[i] <= 0 or len(ranked) == k:
            break
        key = _title_key(candidates[i].title)
        if key not in seen:
            seen.add(key)
            ranked.append((candidates[i].id, float(best[i])))
    return ranked


def _title_key(title: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", title.casefold()).split())
