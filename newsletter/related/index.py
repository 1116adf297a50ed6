"""The in-memory related-articles index: sparse TF-IDF matrices built from stored term vectors.

The persisted index (`newsletter.related.store`) keeps raw term counts per article; weights that depend on
the whole archive (IDF) are computed here, when the index is loaded, so adding an article never rewrites
the others. Rows are L2-normalised, so a dot product is a cosine.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from newsletter.related.text import TermVector, text_vector

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp

MIN_DF = 2  # a term in one document only says nothing about what it shares with others...
MAX_DF = 0.5  # ...and terms in over half the documents are boilerplate ("president", "administration"),
DF_LIMITS_FROM = 50  # but only in an archive big enough: in a handful of texts both cuts remove the topic words
LATENT_DIMS = 100  # latent semantic dimensions (Deerwester et al., "Indexing by latent semantic analysis", JASIS 1990)
LATENT_FROM = 200  # fewer entries than this: no latent space (too few texts to learn which terms go together)
LATENT_TERMS = 20000  # it is learnt over at most this many terms (those in most texts)
LATENT_SAMPLE = 20000  # the space is learnt from at most this many entries (evenly spaced), then every entry projected


@dataclass(frozen=True)
class Entry:
    """One indexed article: its id, date (None if unknown), category, and term vectors of its title and of
    title + body."""

    article_id: int
    published_at: datetime | None
    category: str | None
    title: TermVector
    body: TermVector


def make_entry(article_id: int, group: str, title: str, body: str, published_at: datetime | None, category: str | None) -> Entry:
    """Tokenise an article into an `Entry` for index ``group`` (see `newsletter.related.text.group_of`)."""
    return Entry(
        article_id,
        published_at,
        category,
        text_vector(title, group),
        text_vector(f"{title}\n{body}", group),
    )


def _csr(vectors: Sequence[TermVector], columns: np.ndarray) -> sp.csr_matrix:
    """Rows of term counts over ``columns`` (the sorted hashed ids the index knows); other ids are dropped."""
    import numpy as np
    import scipy.sparse as sp

    parts = [(v.ids, v.counts) for v in vectors]
    lengths = np.fromiter((len(i) for i, _ in parts), np.int64, len(parts))
    ids = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.uint32)
    counts = np.concatenate([c for _, c in parts]).astype(np.float32) if parts else np.zeros(0, np.float32)
    rows = np.repeat(np.arange(len(parts)), lengths)
    local = np.searchsorted(columns, ids)
    known = local < len(columns)
    known[known] = columns[local[known]] == ids[known]
    indptr = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(np.bincount(rows[known], minlength=len(parts)), out=indptr[1:])
    return sp.csr_matrix((counts[known], local[known].astype(np.int32), indptr), shape=(len(parts), len(columns)))


def _components(body: sp.csr_matrix, terms: np.ndarray) -> np.ndarray:
    """The top right singular vectors of ``body`` restricted to columns ``terms`` (at most `LATENT_SAMPLE`
    rows of it, evenly spaced): ``(dims, len(terms))`` float32. Randomised SVD (Halko, Martinsson & Tropp,
    "Finding structure with randomness", SIAM Review 2011: 10 extra dimensions, 4 power iterations) from a
    fixed seed, so the same index gives the same space. In float32 with LAPACK's economic QR: 2-3x less CPU
    than float64 for the same space (principal-angle cosines with the float64 result >= 0.999999 on the
    White House index)."""
    import numpy as np
    import scipy.linalg as la

    def orthonormal(m: np.ndarray) -> np.ndarray:
        return la.qr(m, mode="economic", overwrite_a=True, check_finite=False)[0]

    step = max(1, -(-body.shape[0] // LATENT_SAMPLE))
    a = body[::step][:, terms].astype(np.float32).tocsr()
    at = a.T.tocsr()
    dims = min(LATENT_DIMS, min(a.shape) - 1)
    omega = np.random.default_rng(0).standard_normal((a.shape[1], dims + 10)).astype(np.float32)
    q = orthonormal(a @ omega)
    for _ in range(4):
        q = orthonormal(at @ q)
        q = orthonormal(a @ q)
    _, _, vt = la.svd(np.asarray((at @ q).T), full_matrices=False, overwrite_a=True, check_finite=False)
    return vt[:dims].astype(np.float32)


def _unit(rows: np.ndarray) -> np.ndarray:
    """Dense ``rows`` as float32 scaled to unit L2 norm (zero rows stay zero)."""
    import numpy as np

    z = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norms == 0, 1.0, norms)


def _normalise_rows(m: sp.csr_matrix, *, l1: bool = False) -> sp.csr_matrix:
    """Scale the rows of ``m`` in place to unit L2 (or L1) norm; empty rows stay empty."""
    import numpy as np

    values = np.abs(m.data) if l1 else m.data * m.data
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    norms = np.bincount(rows, weights=values, minlength=m.shape[0])
    if not l1:
        norms = np.sqrt(norms)
    norms[norms == 0] = 1.0
    m.data /= norms[rows].astype(m.data.dtype)
    return m


class RelatedIndex:
    """TF-IDF matrices over the entries of one index group (one language, or all Chinese).

    Attributes (N entries, float32; one column per hashed term id found in the index, ``columns``):
        body: title + body, sublinear TF x IDF, L2-normalised rows.
        title: title alone, same weighting, L2-normalised rows.
        present: title + body, binary (which terms a text contains), all terms (no document-frequency cut);
        sizes: its number of distinct terms per row.
        days: publication time in days since the epoch (NaN when unknown).
    """

    def __init__(self, entries: Sequence[Entry]) -> None:
        import numpy as np

        self.entries = list(entries)
        self.ids = np.array([e.article_id for e in self.entries], np.int64)
        self.row = {int(a): i for i, a in enumerate(self.ids)}
        self.days = np.array([e.published_at.timestamp() / 86400 if e.published_at else np.nan for e in self.entries], np.float64)
        self.categories = [e.category for e in self.entries]
        n = len(self.entries)
        # Columns: the hashed ids that occur in the index (title terms are among the body's).
        all_ids = np.concatenate([e.body.ids for e in self.entries]) if self.entries else np.zeros(0, np.uint32)
        all_ids.sort()
        self.columns = all_ids[np.concatenate(([True], all_ids[1:] != all_ids[:-1]))] if len(all_ids) else all_ids
        counts = _csr([e.body for e in self.entries], self.columns)
        self.present = counts.copy()
        self.present.data[:] = 1.0
        self.sizes = np.diff(self.present.indptr).astype(np.float32)
        df = np.bincount(self.present.indices, minlength=len(self.columns))
        keep = df > 0
        if n >= DF_LIMITS_FROM:
            keep &= (df >= MIN_DF) & (df <= MAX_DF * n)
        # Smoothed IDF as in scikit-learn's TfidfVectorizer, so the baseline and ours weigh terms alike.
        self.idf = (np.log((n + 1) / (df + 1)) + 1).astype(np.float32) * keep
        self.body = self.weigh(counts)
        self.title = self.weigh(_csr([e.title for e in self.entries], self.columns))
        self.df = df.astype(np.int32)
        self._latent: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._latent_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Sublinear TF (1 + ln tf) x this index's IDF, rows L2-normalised."""
        import numpy as np

        m = counts.astype(np.float32, copy=True)
        m.data = (1 + np.log(m.data)) * self.idf[m.indices]
        m.eliminate_zeros()  # terms cut by document frequency
        return _normalise_rows(m)

    def latent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The latent space (LSA), learnt on first use and kept: ``(terms, components, rows)``: the columns
        it is learnt on (the `LATENT_TERMS` in most texts), the projection ``(dims, len(terms))`` and every
        entry projected, ``(N, dims)`` float32 with unit rows; None for an
        index of fewer than `LATENT_FROM` entries. Only short texts use it (`newsletter.related.rank`), so
        an archive of long articles never pays for it."""
        if len(self) < LATENT_FROM:
            return None
        import numpy as np

        with self._latent_lock:
            if self._latent is None:
                # The most widespread weighted terms only: rarer ones say little about which terms go
                # together, and every column costs memory and time (millions of hashed word bigrams).
                weighted = np.flatnonzero(self.idf > 0)
                terms = np.sort(weighted[np.argsort(-self.df[weighted], kind="stable")[:LATENT_TERMS]])
                components = _components(self.body, terms)
                self._latent = (terms, components, _unit(self.body[:, terms] @ components.T))
        return self._latent

    def project(self, weighted: sp.csr_matrix) -> np.ndarray:
        """Rows of ``weighted`` (as `weigh` returns) in the latent space, unit length: ``(rows, dims)`` float32.
        Raises ValueError on an index without a latent space."""
        space = self.latent()
        if space is None:
            raise ValueError("this index has no latent space")
        return _unit(weighted[:, space[0]] @ space[1].T)

    def nbytes(self) -> int:
        """Bytes held by the matrices (the figure `bench/related_scale.py` reports)."""
        total = 0
        for m in (self.body, self.title, self.present):
            total += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        latent = 0 if self._latent is None else sum(part.nbytes for part in self._latent)
        return total + self.idf.nbytes + self.df.nbytes + self.columns.nbytes + latent
