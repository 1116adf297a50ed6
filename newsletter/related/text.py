"""Text to index terms: cleaning, tokenising (English words, Chinese characters) and hashed term vectors.

English: lower-cased words without stop words (the Glasgow list that scikit-learn ships as
``ENGLISH_STOP_WORDS``), a light plural stemmer, plus word bigrams. Chinese has no spaces, so it is indexed
as overlapping character unigrams and bigrams, punctuation included (Nie, Gao, Zhang & Zhou, "On the use of words and n-grams
for Chinese information retrieval", IRAL 2000); Traditional characters are first mapped to Simplified
(OpenCC ``t2s``), so zh-Hans and zh-Hant articles share one index. Terms are hashed into a fixed space of
`FEATURES` ids (the "hashing trick", Weinberger et al., ICML 2009): no vocabulary to keep in step, so
one new article is indexed without touching the others.

This module imports nothing heavy at import time; numpy is loaded by the functions that need it.
"""

from __future__ import annotations

import itertools
import re
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

FEATURES = 1 << 22  # hashed term space; collisions at this size change no measured figure
MAX_CHARS = 20000  # longer bodies are cut: bounds indexing time; the opening says what a piece is about
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*\)")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_WORD = re.compile(r"[a-z0-9]+")
_APOSTROPHE = re.compile(r"['’]s\b|['’]")

# scikit-learn's ENGLISH_STOP_WORDS (from the Glasgow Information Retrieval Group), kept here so that
# indexing never imports scikit-learn.
STOP_WORDS = frozenset((
    "a", "about", "above", "across", "after", "afterwards", "again", "against", "all", "almost", "alone", "along", "already",
    "also", "although", "always", "am", "among", "amongst", "amoungst", "amount", "an", "and", "another", "any", "anyhow",
    "anyone", "anything", "anyway", "anywhere", "are", "around", "as", "at", "back", "be", "became", "because", "become",
    "becomes", "becoming", "been", "before", "beforehand", "behind", "being", "below", "beside", "besides", "between", "beyond",
    "bill", "both", "bottom", "but", "by", "call", "can", "cannot", "cant", "co", "con", "could", "couldnt", "cry", "de",
    "describe", "detail", "do", "done", "down", "due", "during", "each", "eg", "eight", "either", "eleven", "else", "elsewhere",
    "empty", "enough", "etc", "even", "ever", "every", "everyone", "everything", "everywhere", "except", "few", "fifteen",
    "fifty", "fill", "find", "fire", "first", "five", "for", "former", "formerly", "forty", "found", "four", "from", "front",
    "full", "further", "get", "give", "go", "had", "has", "hasnt", "have", "he", "hence", "her", "here", "hereafter", "hereby",
    "herein", "hereupon", "hers", "herself", "him", "himself", "his", "how", "however", "hundred", "i", "ie", "if", "in", "inc",
    "indeed", "interest", "into", "is", "it", "its", "itself", "keep", "last", "latter", "latterly", "least", "less", "ltd",
    "made", "many", "may", "me", "meanwhile", "might", "mill", "mine", "more", "moreover", "most", "mostly", "move", "much",
    "must", "my", "myself", "name", "namely", "neither", "never", "nevertheless", "next", "nine", "no", "nobody", "none",
    "noone", "nor", "not", "nothing", "now", "nowhere", "of", "off", "often", "on", "once", "one", "only", "onto", "or", "other",
    "others", "otherwise", "our", "ours", "ourselves", "out", "over", "own", "part", "per", "perhaps", "please", "put", "rather",
    "re", "same", "see", "seem", "seemed", "seeming", "seems", "serious", "several", "she", "should", "show", "side", "since",
    "sincere", "six", "sixty", "so", "some", "somehow", "someone", "something", "sometime", "sometimes", "somewhere", "still",
    "such", "system", "take", "ten", "than", "that", "the", "their", "them", "themselves", "then", "thence", "there",
    "thereafter", "thereby", "therefore", "therein", "thereupon", "these", "they", "thick", "thin", "third", "this", "those",
    "though", "three", "through", "throughout", "thru", "thus", "to", "together", "too", "top", "toward", "towards", "twelve",
    "twenty", "two", "un", "under", "until", "up", "upon", "us", "very", "via", "was", "we", "well", "were", "what", "whatever",
    "when", "whence", "whenever", "where", "whereafter", "whereas", "whereby", "wherein", "whereupon", "wherever", "whether",
    "which", "while", "whither", "who", "whoever", "whole", "whom", "whose", "why", "will", "with", "within", "without", "would",
    "yet", "you", "your", "yours", "yourself", "yourselves",
))  # fmt: skip


def group_of(lang: str) -> str:
    """The index an article of ``lang`` belongs to: ``zh`` for every Chinese script, else the language."""
    return "zh" if lang.startswith("zh") else lang


def clean(text: str) -> str:
    """Drop Markdown link targets (keeping the anchor text) and bare URLs: a link's address says nothing
    about the topic and would let the evaluation measure link parsing instead of relatedness."""
    # Each pattern needs a fixed string ("](", "://" or "www."): a text without it is returned as it is, with
    # no regex pass (an index text from `content.markdown_plain_text` has its links dropped already).
    if "](" in text:
        text = _MD_LINK.sub(r"\1", text)
    if "://" in text or "www." in text:
        text = _URL.sub(" ", text)
    return text


def _stem(word: str) -> str:
    # Plurals only ("tariffs" -> "tariff", "policies" -> "policy"): a full stemmer conflates too much.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@cache
def _t2s():  # type: ignore[no-untyped-def]
    from opencc import OpenCC

    return OpenCC("t2s")


def tokens(text: str, group: str) -> list[str]:
    """Index terms of ``text`` for index ``group`` (see `group_of`): English words and word bigrams; for
    ``zh``, character unigrams and bigrams (after Traditional -> Simplified and lower-casing).

    Example: ``tokens("New tariffs on steel", "en") == ["new", "tariff", "steel", "new tariff", "tariff steel"]``.
    """
    text = clean(text)[:MAX_CHARS]
    if group == "zh":
        return _zh_terms(text)
    return [t.decode() for t in _word_terms(text)]


def term_bytes(text: str, group: str) -> list[bytes]:
    """`tokens` of ``text``, UTF-8 encoded (what `vectorise` hashes), made faster: the words of an English
    text are found in its UTF-8 bytes, where lower-casing and matching run on ASCII (about 3x faster on
    White House articles, whose curly quotes make every string operation work on 2-byte characters)."""
    text = clean(text)[:MAX_CHARS]
    if group == "zh":
        return [t.encode() for t in _zh_terms(text)]
    return _word_terms(text)


def _zh_terms(text: str) -> list[str]:
    # Every character and character pair of the text with white space collapsed, as scikit-learn's
    # char analyser: punctuation pairs such as "图）" mark a kind of story too (measured on THUCNews).
    text = " ".join(_t2s().convert(text).lower().split())
    return list(text) + [text[i : i + 2] for i in range(len(text) - 1)]


# The two characters whose str.lower() has an ASCII letter ("İ" -> "i̇", the Kelvin sign -> "k"): a text with
# one is lower-cased as a str, so the bytes path below finds exactly the words `str.lower` would give.
_LOWER_TO_ASCII = ("\u0130", "\u212a")
_APOSTROPHE_ANY_CASE = re.compile(r"['’][sS]\b|['’]")  # _APOSTROPHE before lower-casing
_WORD_BYTES = re.compile(rb"[a-z0-9]+")
# bytes.translate table: ASCII letters lower-cased, digits kept, every other byte a space, so that
# ``data.translate(_WORD_TABLE).split()`` is ``_WORD_BYTES.findall(data.lower())`` (about 2x faster: no regex).
_WORD_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or 48 <= c <= 57 else 32 for c in range(256))


def _word_terms(text: str) -> list[bytes]:
    """English words and word bigrams of a cleaned text (see `_words`), as UTF-8 bytes."""
    words = _words(text)
    return words + list(map(b" ".join, itertools.pairwise(words)))


def _words(text: str) -> list[bytes]:
    """English words of a cleaned text (stemmed, without stop words and single characters) as UTF-8 bytes."""
    # Each distinct word is made into its index form once per process (`_Forms`); map and filter run in C.
    if len(_FORMS) >= _FORMS_LIMIT:  # cleared between texts only (bounds memory)
        _FORMS.clear()
    return list(filter(None, map(_FORMS.__getitem__, _raw_words(text))))


def _raw_words(text: str) -> list[bytes]:
    """The words of a cleaned text before `_index_form`, lower-cased, as UTF-8 bytes. Equal to the str rules
    (`_APOSTROPHE`, `_WORD` on ``text.lower()``): apostrophes are dropped from the str (whether "’s" ends a
    word depends on the next character, ASCII or not), then outside ASCII the bytes only hold separators,
    as the str rules see them."""
    if not text.isascii() and any(c in text for c in _LOWER_TO_ASCII):
        return [w.encode() for w in _WORD.findall(_APOSTROPHE.sub("", text.lower()))]
    return _APOSTROPHE_ANY_CASE.sub("", text).encode(errors="surrogatepass").translate(_WORD_TABLE).split()


def text_vector(text: str, group: str) -> TermVector:
    """``vectorise(tokens(text, group))``, made faster for English: each distinct word is looked up once per
    process in `_WordTable` (its index form's CRC-32, the CRC-32 of the form and a space, the form's length),
    then the rest is array work: the CRC-32 of a bigram "a b" is CRC-32("a ") carried over len(b) zero bytes
    (a linear map, from `_shift_tables`, as zlib's ``crc32_combine``) XOR CRC-32("b"), so no bigram string is
    built, and the hashed ids are counted by numpy. Colliding terms are summed either way, so the vector is
    the same (`tests/test_deferred_text.py` compares them)."""
    import numpy as np

    if group == "zh":
        return vectorise(tokens(text, group))
    raw = _raw_words(clean(text)[:MAX_CHARS])
    table = _word_table()
    found = list(filter(None, map(table.__getitem__, raw)))  # slot 0: a word not indexed
    if len(found) <= 24:  # a title: plain lists cost less than the arrays' fixed overhead
        forms = list(map(table.forms.__getitem__, found))
        crcs = list(map(zlib.crc32, forms))
        prefixes = [zlib.crc32(b" ", c) for c in crcs]  # CRC-32 of the form and a space
        return _counted_list([c & (FEATURES - 1) for c in itertools.chain(crcs, map(zlib.crc32, forms[1:], prefixes))])
    slots = np.fromiter(found, np.int64, len(found))  # from a list: faster than from the map itself
    crc, prefix, size = table.columns()
    words = crc[slots]
    before, after = prefix[slots[:-1]], size[slots[1:]]
    shift = _shift_tables()
    base = np.minimum(after, SHIFT_MAX) * 1024
    bigrams = (
        shift[base + (before & 255)]
        ^ shift[base + 256 + ((before >> 8) & 255)]
        ^ shift[base + 512 + ((before >> 16) & 255)]
        ^ shift[base + 768 + (before >> 24)]
        ^ words[1:]
    )
    for i in np.flatnonzero(after > SHIFT_MAX).tolist():  # a form longer than the tables: rare, done by zlib
        bigrams[i] = zlib.crc32(table.forms[slots[i + 1]], int(before[i]))
    return _counted(np.concatenate((words, bigrams)) & np.uint32(FEATURES - 1))


def _counted_list(hashed: list[int]) -> TermVector:
    """`_counted` of a short list."""
    import numpy as np

    counted = Counter(hashed)
    ids = sorted(counted)
    return TermVector(np.array(ids, np.uint32), np.array([min(counted[i], 65535) for i in ids], np.uint16))


def _counted(hashed: np.ndarray) -> TermVector:
    """The `TermVector` of hashed term ids (uint32, any order, repeats counted)."""
    import numpy as np

    ids, counts = np.unique(hashed, return_counts=True)
    return TermVector(ids, np.minimum(counts, 65535).astype(np.uint16))


SHIFT_MAX = 64  # longest index form whose bigrams are made from `_shift_tables`


@cache
def _shift_tables() -> np.ndarray:
    """``tables[L * 1024 + 256 * k + b]`` (uint32): the CRC-32 register ``b << 8k`` after L zero bytes, for
    L <= `SHIFT_MAX`: CRC-32(a + b) is the XOR of CRC-32(b) and the four entries of CRC-32(a)'s bytes at
    L = len(b) (the register is linear over GF(2); Williams, "A painless guide to CRC error detection
    algorithms", 1993; zlib's ``crc32_combine``)."""
    import numpy as np

    byte_table = np.zeros(256, np.uint32)  # the reflected CRC-32 table (polynomial 0xEDB88320), as zlib's
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        byte_table[i] = c
    values = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    tables = [values]
    for _ in range(SHIFT_MAX):  # one zero byte more each time
        values = byte_table[values & 255] ^ (values >> 8)
        tables.append(values)
    return np.concatenate(tables)


class _WordTable(dict[bytes, int]):
    """Word (as `_raw_words` gives it) -> slot, made on first lookup (``__missing__``: a lookup through
    ``__getitem__`` stays in C for a known word). Slot 0 stands for every word not indexed; a slot's index
    form is ``forms[slot]``, and `columns` gives per slot its CRC-32, the CRC-32 of the form and a space
    (uint32) and its length (int32). A new slot's columns are written with the others of its text, in one
    numpy operation each (`columns`): an import meets ~24,000 new words per worker process."""

    def __init__(self) -> None:
        import numpy as np

        super().__init__()
        self.forms: list[bytes] = [b""]
        self._columns = (np.zeros(1024, np.uint32), np.zeros(1024, np.uint32), np.zeros(1024, np.int32))
        self._written = 1  # slots below this have their columns written
        self._lock = threading.Lock()  # threads may share the table: one adds slots at a time

    def __missing__(self, word: bytes) -> int:
        form = _index_form(word)
        if not form:
            self[word] = 0
            return 0
        with self._lock:
            slot = len(self.forms)
            self.forms.append(form)
            self[word] = slot  # its columns are written by `columns`, which every reader of a slot calls
        return slot

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The columns, with those of every slot made so far written."""
        import numpy as np

        if self._written == len(self.forms):
            return self._columns
        with self._lock:
            start, forms = self._written, self.forms[self._written :]
            end = start + len(forms)
            if end > len(self._columns[0]):
                grown = max(end, 2 * len(self._columns[0]))
                self._columns = tuple(np.concatenate((c, np.zeros(grown - len(c), c.dtype))) for c in self._columns)  # type: ignore[assignment]
            crc, prefix, size = self._columns
            crcs = list(map(zlib.crc32, forms))
            crc[start:end] = crcs
            prefix[start:end] = [zlib.crc32(b" ", c) for c in crcs]  # CRC-32 of the form and a space
            size[start:end] = list(map(len, forms))
            self._written = end
            return self._columns


_WORD_TABLES: list[_WordTable] = []


def _word_table() -> _WordTable:
    """The process's `_WordTable`, started again (between texts) past `_FORMS_LIMIT` words (bounds memory)."""
    if not _WORD_TABLES or len(_WORD_TABLES[-1]) >= _FORMS_LIMIT:
        _WORD_TABLES[:] = [_WordTable()]
    return _WORD_TABLES[-1]


class _Forms(dict[bytes, bytes]):
    """Word -> its index form, b"" if not indexed (`_index_form`), made on first lookup (``__missing__``: a
    lookup through ``__getitem__`` stays in C for a known word, so one ``map`` pass reads a whole text)."""

    def __missing__(self, word: bytes) -> bytes:
        form = self[word] = _index_form(word)
        return form


_FORMS = _Forms()
_FORMS_LIMIT = 1 << 20  # distinct words kept; past it the table starts again, between texts (bounds memory)


def forget_words() -> None:
    """Drop this process's word tables (`_FORMS`, `_WordTable`), as a new process starts: for benchmarks that
    measure a first import in one process after another."""
    _FORMS.clear()
    _WORD_TABLES.clear()


_STOP_BYTES = frozenset(w.encode() for w in STOP_WORDS)


def _index_form(word: bytes) -> bytes:
    """``word`` (lower-case ASCII letters and digits) as indexed: stemmed, or b"" for a stop word or a
    single character. `_stem` on bytes (ASCII: one byte per character)."""
    if len(word) < 2 or word in _STOP_BYTES:
        return b""
    if len(word) > 4 and word.endswith(b"ies"):
        return word[:-3] + b"y"
    if len(word) > 3 and word.endswith(b"s") and not word.endswith((b"ss", b"us", b"is")):
        return word[:-1]
    return word


def term_id(term: str) -> int:
    """The hashed id of a term in ``[0, FEATURES)`` (CRC-32: stable across processes and versions)."""
    return zlib.crc32(term.encode()) % FEATURES


@dataclass(frozen=True)
class TermVector:
    """Term counts of one text: hashed term ``ids`` ascending, their ``counts`` (> 0)."""

    ids: np.ndarray  # uint32
    counts: np.ndarray  # uint16

    def to_bytes(self) -> bytes:
        """Serialised: n (uint32), ids (n × uint32), counts (n × uint16); 4 + 6n bytes."""
        import numpy as np

        return np.uint32(len(self.ids)).tobytes() + self.ids.tobytes() + self.counts.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> TermVector:
        """Inverse of `to_bytes`. Raises ValueError on a truncated value."""
        import numpy as np

        n = int(np.frombuffer(data, np.uint32, 1)[0]) if data else 0
        if len(data) != 4 + 6 * n:
            raise ValueError(f"term vector of {len(data)} bytes does not hold {n} terms")
        ids = np.frombuffer(data, np.uint32, n, 4)
        counts = np.frombuffer(data, np.uint16, n, 4 + 4 * n)
        return cls(ids, counts)


def vectorise(terms: Sequence[str] | Sequence[bytes]) -> TermVector:
    """Count ``terms`` (str, or UTF-8 bytes as `term_bytes` gives) into a `TermVector` (colliding ids are
    merged; counts saturate at 65535)."""
    import numpy as np

    counted: Counter[Any] = Counter(terms)
    if not counted:
        return TermVector(np.zeros(0, np.uint32), np.zeros(0, np.uint16))
    # `term_id` of every distinct term, with the loops in C (map) and numpy; equal to summing per `term_id`.
    encoded = counted if isinstance(next(iter(counted)), bytes) else map(str.encode, counted)
    hashed = np.fromiter(map(zlib.crc32, encoded), np.int64, len(counted)) % FEATURES
    ids, where = np.unique(hashed, return_inverse=True)
    sums = np.bincount(where, weights=np.fromiter(counted.values(), np.float64, len(counted)))
    return TermVector(ids.astype(np.uint32), np.minimum(sums, 65535).astype(np.uint16))
