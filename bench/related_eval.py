"""Evaluation: how well "You might also like" finds what the White House editors linked by hand.

Ground truth: ``corpus-whitehouse/related_links_dev.csv`` (source -> target links written by the site's
editors). For each source document with links, the recommender ranks the rest of the corpus (bodies with
the Markdown links stripped, as the corpus README asks); we report recall@5, recall@10 and MRR against
two baselines computed in the same run: the newest documents of the same category, and a random pick.

    python bench/related_eval.py                      # reads ../shared/data (or NEWSLETTER_DATA_DIR)
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

from newsletter.articles import record_to_fields
from newsletter.related import Doc, recommend


def load(data: Path) -> tuple[dict[str, dict], dict[str, set[str]]]:  # type: ignore[type-arg]
    docs = {}
    with (data / "corpus-whitehouse/whitehouse_briefing_room.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            fields = record_to_fields(record)
            docs[record["id"]] = {"title": fields["title"], "text": fields["body_text"], "category": record.get("category"),
                                  "date": record.get("published_at") or ""}  # fmt: skip
    links: dict[str, set[str]] = defaultdict(set)
    with (data / "corpus-whitehouse/related_links_dev.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["source_id"] in docs and row["target_id"] in docs:
                links[row["source_id"]].add(row["target_id"])
    return docs, links


def score(ranked: list[str], relevant: set[str]) -> tuple[float, float, float]:
    """(recall@5, recall@10, reciprocal rank of the first relevant) for one query."""
    rr = next((1 / (i + 1) for i, d in enumerate(ranked) if d in relevant), 0.0)
    return len(relevant & set(ranked[:5])) / len(relevant), len(relevant & set(ranked[:10])) / len(relevant), rr


def main() -> None:
    data = Path(os.environ.get("NEWSLETTER_DATA_DIR") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    docs, links = load(data)
    ids = list(docs)
    index = {doc_id: i for i, doc_id in enumerate(ids)}
    archive = [Doc(i, docs[d]["title"], docs[d]["text"]) for i, d in enumerate(ids)]
    rng = random.Random(1)
    results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    started = time.perf_counter()
    for source, relevant in links.items():
        query = archive[index[source]]
        ranked = [ids[i] for i, _ in recommend("en", [query], archive, k=10)]
        results["TF-IDF (ours)"].append(score(ranked, relevant))
        same = sorted(
            (d for d in ids if d != source and docs[d]["category"] == docs[source]["category"]), key=lambda d: docs[d]["date"], reverse=True
        )
        results["same category, newest"].append(score(same[:10], relevant))
        results["random"].append(score(rng.sample([d for d in ids if d != source], 10), relevant))
    seconds = time.perf_counter() - started
    print(f"{len(links)} source documents with editorial links, {sum(map(len, links.values()))} links, {len(ids)} documents")
    print(f"{'method':<24} {'recall@5':>9} {'recall@10':>10} {'MRR':>6}")
    for method, rows in results.items():
        r5, r10, mrr = (sum(col) / len(rows) for col in zip(*rows, strict=True))
        print(f"{method:<24} {r5:>9.3f} {r10:>10.3f} {mrr:>6.3f}")
    print(f"({seconds:.1f} s for all queries, each ranking the whole corpus)")


if __name__ == "__main__":
    main()
