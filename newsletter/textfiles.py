"""Text files people hand us (article JSON Lines, subscriber CSV): their encoding, and characters no
record may carry."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import IO

CHUNK = 1 << 16
# C0 controls other than TAB, LF and CR; DEL; C1 controls. PostgreSQL refuses NUL in text, and none of
# them belongs in a title, a name or an address (a CR LF in a display name would end up in a header).
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
HINT = "give the file's encoding with --encoding, e.g. --encoding latin-1 or --encoding gb18030"


class FileEncodingError(ValueError):
    """The file is not in the encoding it is read with; the message names the file, line and byte."""


def check_encoding(path: Path, encoding: str) -> None:
    """Decode the whole file once, so that a file in another encoding is refused before any record of
    it is stored (half an import of mis-decoded text would be worse than none).

    Raises:
        FileEncodingError: an unknown encoding, or bytes that are not valid in it (file, line, byte).
    """
    try:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
    except LookupError as exc:
        raise FileEncodingError(f"{path}: unknown encoding {encoding!r}") from exc
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                where = line + exc.object[: exc.start].count(b"\n")
                byte = exc.object[exc.start] if exc.start < len(exc.object) else None
                what = f"byte 0x{byte:02x}" if byte is not None else "a truncated character at the end"
                raise FileEncodingError(f"{path}: line {where} is not valid {encoding} ({what}); {HINT}") from exc
            line += text.count("\n")
            if not chunk:
                return


def open_text(path: Path, encoding: str, newline: str | None = None) -> IO[str]:
    """Open ``path`` for reading in ``encoding`` (checked with `check_encoding` first); a UTF-8 byte
    order mark is dropped (spreadsheet programs write one).

    Raises:
        FileEncodingError: see `check_encoding`.
    """
    check_encoding(path, encoding)
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    return path.open(encoding=encoding, newline=newline)


def control_character(value: str) -> str | None:
    """``"U+0000 at position 4"`` for the first control character in ``value`` (see `CONTROL`), or None."""
    match = CONTROL.search(value)
    if match is None:
        return None
    return f"U+{ord(match.group()):04X} at position {match.start() + 1}"
