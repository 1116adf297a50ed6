"""Simplified to Traditional Chinese with OpenCC (the maintained C++ wheel) plus the project's phrase corrections.

The default is Taiwan standard with Taiwan phrases (``s2twp``: 为→為, 启→啟, 着→著, 软件→軟體); ``s2hk`` (Hong
Kong standard) and ``s2t`` (OpenCC's generic table) can be chosen per deployment. OpenCC's tables make a few
known mistakes for our news text (征 is always read as 徵, so 新征程 became 新徵程); the project's phrase
dictionary, `PHRASES` (OpenCC's text format: ``simplified<TAB>traditional`` per line), takes priority over
OpenCC's own phrases, both when the text is segmented and when it is converted. The regional steps of the
chain still run on its result, so an entry is written in OpenCC's standard traditional form.

`bench/opencc_compare.py` measures this wheel against ``opencc-python-reimplemented`` on the CCTV corpus.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

CONVERSIONS = ("s2twp", "s2hk", "s2t")
DEFAULT_CONVERSION = "s2twp"
PHRASES = Path(__file__).with_name("zh_hant_phrases.txt")
# Words OpenCC's Taiwan phrase step (TWPhrases: IT and regional vocabulary) must leave as news text writes them
# in Taiwan (優化 not 最佳化, 發布 not 釋出): traditional -> Taiwan, asked before that step (s2twp only).
TAIWAN_NEWS = Path(__file__).with_name("zh_hant_phrases_tw.txt")


class ConversionError(ValueError):
    """An unknown conversion name or an unreadable phrase dictionary; the message names it."""


def read_phrases(path: Path) -> dict[str, str]:
    """``{simplified: traditional}`` from an OpenCC text dictionary; ``#`` starts a comment line.

    Raises:
        ConversionError: the file is missing, or a line is not two tab-separated fields.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConversionError(f"cannot read the phrase dictionary {path}: {exc.strerror}") from exc
    phrases = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise ConversionError(f"{path}:{number}: expected 'simplified<TAB>traditional', got {line!r}")
        phrases[fields[0].strip()] = fields[1].strip()
    return phrases


def _share_dir() -> Path:
    import opencc

    return Path(opencc.__file__).parent / "clib" / "share" / "opencc"


def _absolute(node: dict[str, Any], share: Path) -> None:
    """Point every dictionary file of a config node at OpenCC's shared folder (the config moves elsewhere)."""
    if node.get("type") == "group":
        for child in node["dicts"]:
            _absolute(child, share)
    elif "file" in node:
        node["file"] = str(share / node["file"])


def build_config(conversion: str, dictionary: Path, regional: Path | None = None) -> dict[str, Any]:
    """OpenCC's JSON config for ``conversion`` with ``dictionary`` (a text dictionary) put first, and
    ``regional`` (a text dictionary of traditional words) put before the regional steps that follow.

    Raises:
        ConversionError: ``conversion`` is not one of `CONVERSIONS`.
    """
    if conversion not in CONVERSIONS:
        raise ConversionError(f"unknown conversion {conversion!r} (one of {', '.join(CONVERSIONS)})")
    share = _share_dir()
    config = json.loads((share / f"{conversion}.json").read_text(encoding="utf-8"))
    for step in [*config.get("normalization", []), *config["conversion_chain"]]:
        _absolute(step["dict"], share)
    first = config["conversion_chain"][0]["dict"]
    if "segmentation" in config:
        _absolute(config["segmentation"]["dict"], share)
        segment_on = config["segmentation"]["dict"]
    else:  # s2t segments on its conversion dictionary
        segment_on = copy.deepcopy(first)
    user = {"type": "text", "file": str(dictionary)}
    # Segmentation takes the longest match over the union, so a project phrase becomes one segment ...
    config["segmentation"] = {"type": "mmseg", "dict": {"type": "group", "match_policy": "union", "dicts": [user, segment_on]}}
    # ... and conversion asks the project's dictionary before OpenCC's (short circuit: first that matches).
    config["conversion_chain"][0]["dict"] = {"type": "group", "match_policy": "short_circuit", "dicts": [user, first]}
    if regional is not None:
        keep = {"type": "text", "file": str(regional)}
        for step in config["conversion_chain"][1:]:
            step["dict"] = {"type": "group", "match_policy": "short_circuit", "dicts": [keep, step["dict"]]}
    return config


class Converter:
    """One OpenCC converter for a conversion and a set of phrase dictionaries (project first, then ``extra``).

    Raises:
        ConversionError: see `build_config` and `read_phrases`.
    """

    def __init__(self, conversion: str = DEFAULT_CONVERSION, extra: Sequence[Path] = ()) -> None:
        import opencc

        phrases: dict[str, str] = {}
        for path in (PHRASES, *extra):
            phrases.update(read_phrases(path))  # a deployment's file overrides the project's entries
        self.conversion = conversion
        self.phrases = phrases
        with tempfile.TemporaryDirectory(prefix="newsletter-opencc-") as folder:
            dictionary = Path(folder) / "phrases.txt"
            # OpenCC wants every entry sorted and unique; the file is read while the converter is built.
            dictionary.write_text("".join(f"{k}\t{v}\n" for k, v in sorted(phrases.items())), encoding="utf-8")
            regional = None
            if conversion == "s2twp":
                regional = Path(folder) / "taiwan.txt"
                words = read_phrases(TAIWAN_NEWS)
                regional.write_text("".join(f"{k}\t{v}\n" for k, v in sorted(words.items())), encoding="utf-8")
            config_path = Path(folder) / f"{conversion}-project.json"
            config_path.write_text(json.dumps(build_config(conversion, dictionary, regional), ensure_ascii=False), encoding="utf-8")
            self._opencc = opencc.OpenCC(str(config_path))

    def convert(self, text: str) -> str:
        """``text`` converted; the empty string stays empty."""
        return self._opencc.convert(text) if text else text


@cache
def converter(conversion: str = DEFAULT_CONVERSION, extra: tuple[str, ...] = ()) -> Converter:
    """A process-wide `Converter` per configuration (building one loads OpenCC's dictionaries: ~50 ms)."""
    return Converter(conversion, tuple(Path(p) for p in extra))


def validate(conversion: str, extra: Sequence[str] = ()) -> None:
    """Build the converter once, so a bad setting fails at start.

    Raises:
        ConversionError: unknown conversion or unreadable phrase dictionary.
    """
    converter(conversion, tuple(extra))


def to_traditional(text: str, conversion: str = DEFAULT_CONVERSION, extra: Sequence[str] = ()) -> str:
    """Convert Simplified Chinese ``text`` with ``conversion`` (see `CONVERSIONS`) and the phrase dictionaries."""
    return converter(conversion, tuple(extra)).convert(text) if text else text
