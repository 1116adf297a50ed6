"""Benchmark: the maintained ``opencc`` wheel (C++ OpenCC) against ``opencc-python-reimplemented``.

Both convert the CCTV 新闻联播 corpus (titles and bodies, zh-Hans) to Traditional Chinese with the same
configuration name; the script prints, per configuration, the speed of each (characters/s, best of
``--repeat`` runs, load average and the ratio of the two from the same run), how many characters differ,
the Simplified-only characters each leaves behind, and the most frequent differing words with their
context, so the differences can be judged by eye.

The two packages install the same import name (``opencc``), so they cannot share an environment: the
reimplementation is installed once with pip into ``var/bench/opencc-reimpl`` (or ``--reimpl-path``) and
loaded from there under another module name.

    python bench/opencc_compare.py                    # s2t and s2twp over the whole corpus
    python bench/opencc_compare.py --configs s2twp --limit 500
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter import zh_hant  # noqa: E402  (after the path set-up above)


def load_reimplementation(path: Path) -> type:
    """The reimplementation's ``OpenCC`` class, imported from ``path`` as module ``opencc_reimpl``."""
    package = path / "opencc"
    if not (package / "__init__.py").exists():
        print(f"installing opencc-python-reimplemented into {path} (once)", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(path), "opencc-python-reimplemented"],
            check=True,
        )
    spec = importlib.util.spec_from_file_location("opencc_reimpl", package / "__init__.py", submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["opencc_reimpl"] = module
    spec.loader.exec_module(module)
    return module.OpenCC  # type: ignore[no-any-return]


def simplified_only_characters() -> frozenset[str]:
    """Characters CC-CEDICT lists only in simplified forms (``zhon.cedict``, a test dependency): an
    independent judge of what a Traditional Chinese text must not contain."""
    from zhon import cedict

    return frozenset(cedict.simplified) - frozenset(cedict.traditional)


def corpus(data_dir: Path, limit: int | None) -> list[str]:
    """Titles and bodies of the CCTV items, in file order."""
    path = data_dir / "corpus-xinwenlianbo" / "xwlb_2024H2_items.jsonl"
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts += [record["title"], record["body"]]
            if limit and len(texts) >= 2 * limit:
                break
    return [t for t in texts if t]


def timed(convert: Callable[[str], str], texts: list[str], repeat: int) -> tuple[list[str], float]:
    """Outputs and the best wall time (seconds) of ``repeat`` passes."""
    best = float("inf")
    out: list[str] = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = [convert(t) for t in texts]
        best = min(best, time.perf_counter() - start)
    return out, best


def word_diffs(a: str, b: str) -> list[tuple[str, str, str]]:
    """Differing runs between two same-length conversions: (source context, a's run, b's run)."""
    diffs = []
    i = 0
    while i < len(a):
        if a[i] == b[i]:
            i += 1
            continue
        j = i
        while j < len(a) and a[j] != b[j]:
            j += 1
        diffs.append((a[max(0, i - 2) : j + 2], a[i:j], b[i:j]))
        i = j
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("NEWSLETTER_DATA_DIR") or ROOT.parent / "shared" / "data"))
    parser.add_argument("--reimpl-path", type=Path, default=ROOT / "var" / "bench" / "opencc-reimpl")
    parser.add_argument("--configs", default="s2t,s2twp")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--show", type=int, default=25, help="differing words to list per configuration")
    args = parser.parse_args()

    import opencc

    reimpl_cls = load_reimplementation(args.reimpl_path)
    texts = corpus(args.data_dir, args.limit)
    chars = sum(len(t) for t in texts)
    simplified_only = simplified_only_characters()
    print(f"corpus: {len(texts)} texts, {chars:,} characters; load average {os.getloadavg()[0]:.2f}")
    print(f"opencc wheel {opencc.__version__}; reimplementation from {args.reimpl_path}")
    for config in args.configs.split(","):
        wheel = opencc.OpenCC(config)
        reimpl = reimpl_cls(config)
        out_w, t_w = timed(wheel.convert, texts, args.repeat)
        out_r, t_r = timed(reimpl.convert, texts, 1 if args.repeat > 1 else args.repeat)  # slow: once is enough
        product = zh_hant.Converter(config)
        out_p, t_p = timed(product.convert, texts, args.repeat)
        same_len = [(a, b) for a, b in zip(out_w, out_r, strict=True) if len(a) == len(b)]
        diff_chars = sum(x != y for a, b in same_len for x, y in zip(a, b, strict=True))
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        example: dict[tuple[str, str], str] = {}
        for a, b in same_len:
            for context, wa, wb in word_diffs(a, b):
                counts[(wa, wb)] += 1
                example.setdefault((wa, wb), context)
        left_w = collections.Counter(ch for t in out_w for ch in t if ch in simplified_only)
        left_r = collections.Counter(ch for t in out_r for ch in t if ch in simplified_only)
        left_p = collections.Counter(ch for t in out_p for ch in t if ch in simplified_only)
        changed_p = sum(a != b for a, b in zip(out_w, out_p, strict=True))
        print(f"\n== {config}")
        print(f"  wheel            {chars / t_w / 1e6:7.2f} M chars/s  ({t_w:.2f} s)")
        print(f"  reimplementation {chars / t_r / 1e6:7.2f} M chars/s  ({t_r:.2f} s)   wheel/reimpl speed ratio {t_r / t_w:.1f}x")
        print(f"  product (wheel + phrase dictionary) {chars / t_p / 1e6:5.2f} M chars/s; texts changed by the dictionary: {changed_p}")
        print(f"  texts whose outputs differ: {sum(a != b for a, b in zip(out_w, out_r, strict=True))} of {len(texts)}; "
              f"differing characters (same-length pairs): {diff_chars:,} ({diff_chars / chars:.3%})")  # fmt: skip
        print(f"  Simplified-only characters left: wheel {sum(left_w.values())} {dict(left_w.most_common(10))}; "
              f"reimplementation {sum(left_r.values())} {dict(left_r.most_common(10))}; product {sum(left_p.values())}")  # fmt: skip
        fixes: collections.Counter[tuple[str, str]] = collections.Counter()
        for a, b in zip(out_w, out_p, strict=True):
            if a != b and len(a) == len(b):
                for _context, wa, wb in word_diffs(a, b):
                    fixes[(wa, wb)] += 1
        changed = ", ".join(f"{a}->{b} {n}" for (a, b), n in fixes.most_common(12))
        print(f"  the phrase dictionary changed (wheel -> product, count): {changed}")
        print("  most frequent differences (wheel | reimplementation, count, context from the wheel's output):")
        for (wa, wb), n in counts.most_common(args.show):
            print(f"    {wa} | {wb}  {n:5d}  …{example[(wa, wb)]}…")


if __name__ == "__main__":
    main()
