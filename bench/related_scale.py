"""Scale of the related-articles index: build time, per-query latency and memory at 10k and 100k articles.

Documents are corpus-sampled: each is 4 paragraphs drawn at random from the White House corpus (after the
product's import, so links are stripped), with a random date over five years. The paragraphs are tokenised
once (the per-document tokenising cost is measured on real whole documents and reported per document), and
a document's term vector is the sum of its paragraphs' (what `vectorise` would give, but for the few
bigrams across paragraph boundaries). Then, per size:

- build: `RelatedIndex` from the stored term vectors (what `load_index` does after reading the rows), and
  the same from a SQLite table (10k only: the database round trip);
- memory: bytes of the index matrices, the peak Python allocation while building (tracemalloc), and the
  stored bytes per article;
- query: `rank` for 200 random articles, and `for_issue` for 8-article issues (what ``attach_related`` runs);
- short sources: learning the latent space (done once per loaded index, on the first headline-length source)
  and `rank` for 200 headline-only sources, which use it;
- baseline, same run: the seed's way, refitting scikit-learn's TfidfVectorizer over the archive for every
  edition (and preview), at the same size;
- CLI start-up: ``newsletter --help`` against ``python -c pass``.

    python bench/related_scale.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from newsletter.articles import record_to_fields
from newsletter.related.index import Entry, RelatedIndex, make_entry
from newsletter.related.rank import candidates_mask, for_issue, rank, source_of
from newsletter.related.text import TermVector, tokens, vectorise

PARAGRAPHS_PER_DOC = 4
START = datetime(2021, 1, 1, tzinfo=UTC)


def data_dir() -> Path:
    """``NEWSLETTER_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("NEWSLETTER_DATA_DIR") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")


def load_paragraphs() -> tuple[list[str], list[tuple[str, str]]]:
    """Paragraphs (>= 80 characters) and whole (title, text) documents of the White House corpus."""
    paragraphs, docs = [], []
    with (data_dir() / "corpus-whitehouse/whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            fields = record_to_fields(json.loads(line))
            docs.append((fields["title"], fields["body_text"]))
            paragraphs.extend(p.strip() for p in fields["body_text"].split("\n\n") if len(p.strip()) >= 80)
    return paragraphs, docs


def add(vectors: list[TermVector]) -> TermVector:
    """The term vector of the concatenated texts (counts added)."""
    ids = np.concatenate([v.ids for v in vectors])
    counts = np.concatenate([v.counts for v in vectors]).astype(np.int64)
    unique, where = np.unique(ids, return_inverse=True)
    summed = np.bincount(where, weights=counts).astype(np.uint16)
    return TermVector(unique.astype(np.uint32), summed)


def synthesise(n: int, paragraphs: list[str], vectors: list[TermVector], rng: random.Random) -> tuple[list[Entry], list[str]]:
    entries, texts = [], []
    for i in range(n):
        picks = rng.sample(range(len(paragraphs)), PARAGRAPHS_PER_DOC)
        title_words = paragraphs[picks[0]].split()[:10]
        title = vectorise(tokens(" ".join(title_words), "en"))
        when = START + timedelta(minutes=rng.randrange(5 * 365 * 24 * 60))
        entries.append(Entry(i, when, None, title, add([title, *(vectors[p] for p in picks)])))
        texts.append(" ".join(title_words) + "\n" + "\n\n".join(paragraphs[p] for p in picks))
    return entries, texts


def peak_build(entries: list[Entry]) -> tuple[RelatedIndex, float, int]:
    import scipy.sparse  # noqa: F401  (imported before the clock starts: a process imports it once)

    tracemalloc.start()
    started = time.perf_counter()
    index = RelatedIndex(entries)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return index, seconds, peak


def sqlite_round_trip(entries: list[Entry]) -> tuple[float, float]:
    """Seconds to write the entries into a ``related_index`` table and to load the index back."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from newsletter.models import Article, Base, RelatedIndexEntry
    from newsletter.related.store import load_index

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scale.db")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            started = time.perf_counter()
            articles = [{"id": e.article_id, "external_id": str(e.article_id), "title": "t", "summary": "", "body_html": "",
                         "body_text": "", "lang": "en", "created_at": START} for e in entries]  # fmt: skip
            rows = [{"article_id": e.article_id, "group": "en", "published_at": e.published_at, "category": None,
                     "title_terms": e.title.to_bytes(), "body_terms": e.body.to_bytes(), "text_hash": "x", "indexed_at": START}
                    for e in entries]  # fmt: skip
            session.execute(Article.__table__.insert(), articles)
            session.execute(RelatedIndexEntry.__table__.insert(), rows)
            session.commit()
            write = time.perf_counter() - started
            started = time.perf_counter()
            load_index(session, "en")
            load = time.perf_counter() - started
        engine.dispose()
    return write, load


def refit_baseline(texts: list[str], queries: list[int]) -> float:
    """Seconds for the seed's per-edition step: fit TF-IDF on the whole archive, score one issue's articles."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.perf_counter()
    matrix = TfidfVectorizer(stop_words="english", sublinear_tf=True, max_df=0.5).fit_transform(texts)
    (matrix @ matrix[queries].T).max(axis=1)
    return time.perf_counter() - started


def cli_startup() -> tuple[float, float]:
    """Median seconds of ``newsletter --help`` and of ``python -c pass`` (5 runs each)."""

    def timed(argv: list[str]) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    return timed([sys.executable, "-m", "newsletter.cli", "--help"]), timed([sys.executable, "-c", "pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rng = random.Random(7)
    paragraphs, docs = load_paragraphs()
    started = time.perf_counter()
    sample = docs[:500]
    for title, text in sample:
        make_entry(0, "en", title, text, None, None)
    per_doc = (time.perf_counter() - started) / len(sample)
    mean_chars = sum(len(t) for _, t in sample) / len(sample)
    print(f"tokenising on import: {1000 * per_doc:.1f} ms per White House document (mean {mean_chars:.0f} characters)")
    vectors = [vectorise(tokens(p, "en")) for p in paragraphs]
    print(f"{len(paragraphs)} paragraphs to sample from; {PARAGRAPHS_PER_DOC} per synthetic document")
    print()
    columns = ("articles", "build s", "index MB", "peak MB", "stored B/art", "rank ms", "issue ms", "latent s", "short ms", "seed refit s")
    header = " ".join(f"{c:>{w}}" for c, w in zip(columns, (9, 8, 9, 8, 12, 8, 9, 8, 8, 12), strict=True))
    lines = []
    for n in (int(s) for s in args.sizes.split(",")):
        entries, texts = synthesise(n, paragraphs, vectors, rng)
        stored = sum(len(e.title.to_bytes()) + len(e.body.to_bytes()) for e in entries) / n
        index, build, peak = peak_build(entries)
        cutoff = START + timedelta(days=5 * 365)
        queries = rng.sample(range(n), 200)
        started = time.perf_counter()
        for q in queries:
            rank(index, source_of(index, q), candidates_mask(index, cutoff, exclude=[q]), k=10)
        per_query = (time.perf_counter() - started) / len(queries)
        issues = [rng.sample(range(n), 8) for _ in range(5)]
        started = time.perf_counter()
        for issue in issues:
            for_issue(index, [source_of(index, a) for a in issue], candidates_mask(index, cutoff, exclude=issue))
        per_issue = (time.perf_counter() - started) / len(issues)
        # A headline-only source (fewer than SHORT_TEXT terms) uses the latent space, learnt on first use.
        started = time.perf_counter()
        index.latent()
        latent = time.perf_counter() - started
        heads = [source_of(index, entry=make_entry(-1, "en", title, "", cutoff, None)) for title, _ in rng.sample(docs, 200)]
        started = time.perf_counter()
        for head in heads:
            rank(index, head, candidates_mask(index, cutoff), k=10)
        per_short = (time.perf_counter() - started) / len(heads)
        baseline = refit_baseline(texts, issues[0])
        lines.append(f"{n:>9} {build:>8.2f} {index.nbytes() / 2**20:>9.1f} {peak / 2**20:>8.1f} {stored:>12.0f} "
                     f"{1000 * per_query:>8.1f} {1000 * per_issue:>9.0f} {latent:>8.1f} {1000 * per_short:>8.1f} "
                     f"{baseline:>12.1f}")  # fmt: skip
        print(header if len(lines) == 1 else "", end="\n" if len(lines) == 1 else "")
        print(lines[-1], flush=True)
        if n <= 10000:
            write, load = sqlite_round_trip(entries)
            print(f"{'':>9} SQLite: {write:.1f} s to store {n} entries, {load:.1f} s to load the index from them")
        del index, entries, texts
    ratio_note = (
        "issue ms = one 8-article issue (3 picks each, spread); latent s = learning the latent space (first short "
        "source; index MB then includes it); short ms = rank for a headline-only source; seed refit s = refitting "
        "TF-IDF on the archive per edition"
    )
    print(ratio_note)
    cli, python = cli_startup()
    print(f"newsletter --help: {cli:.2f} s (python -c pass: {python:.2f} s, ratio {cli / python:.1f})")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
