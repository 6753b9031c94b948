"""The record reader: the lines of a text file and the records of a .jsonl, .csv or .tsv file,
read within bounds, each bad one named as a `SourceError` (the file, the line or row, and why).

Ingest (ingest/sources.py) and evaluation read every text file through here. Only regular files
are opened (a fifo or a device is named and skipped first); lines are read with MAX_LINE_BYTES a
line, a longer one read past in pieces, never held; and whatever is wrong with one record (bad
JSON of any kind, NaN or Infinity, text that is not valid UTF-8, nesting past what Python's json
can parse) is that record's error, and the reader goes on with the next.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import MAX_LINE_BYTES
from .errors import NotRegularFileError
from .files import open_regular

_LINE_CAP = f"{MAX_LINE_BYTES / 2**20:g} MiB (the cap on a line)"


@dataclass
class SourceError:
    source: str
    locator: str
    reason: str

    def __post_init__(self):  # stored in SQLite and printed, whatever the input held
        self.source, self.locator = printable(self.source), printable(self.locator)
        self.reason = printable(self.reason)

    def __str__(self) -> str:
        return f"{self.source}{f' ({self.locator})' if self.locator else ''}: {self.reason}"


def printable(text: str) -> str:
    """`text` as UTF-8 can hold it: the bytes of a file name that is not UTF-8 (which Python
    holds as surrogates) as \\xNN, any other lone surrogate as \\uNNNN."""
    if encodable(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_records(path: str, column: str | None = None) -> Iterator[tuple[str, dict] | SourceError]:
    """The records of a .jsonl, .csv or .tsv file as (locator, record), each bad one (or the whole
    file, when it cannot be read) as a SourceError naming it: ingest and evaluation read with
    this. `column`: a .csv or .tsv without it in its header is one error (a .jsonl record
    without it is the caller's to name)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".tsv"):
        for locator, line in read_lines(path):
            if isinstance(line, SourceError):
                yield line
            elif line.strip():
                yield _json_record(path, locator, line)
        return
    text = _open_text(path)
    if isinstance(text, SourceError):
        yield text
        return
    with text:
        yield from _csv_records(path, text, column, TSV if suffix == ".tsv" else {})


# .tsv as IANA's text/tab-separated-values has it: a tab between fields, no quoting (a quote is
# a character of the text), so a field holds no tab and no line break.
TSV = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}


def _csv_records(
    path: str, text, column: str | None, dialect: dict
) -> Iterator[tuple[str, dict] | SourceError]:
    """What DictReader would give (blank rows skipped, missing fields None), each row read within
    the line cap: a row with a line over it, or with bytes that are not UTF-8, is that row's
    error. A CSV error (a quoted field past the field limit) ends the file: what follows it
    cannot be trusted."""
    over: deque[int] = deque()  # the numbers of lines over the cap, each read as a blank line

    def lines():
        for number, line in enumerate(_capped_lines(text), start=1):
            if line is None:
                over.append(number)
            yield "\n" if line is None else line

    # The csv module's one field limit is process-wide: raised to the line cap, never lowered.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(lines(), **dialect)
    try:
        header = next(reader, None)
        if over:
            yield SourceError(path, "line 1", f"the header is longer than {_LINE_CAP}")
            return
        if reason := next(filter(None, map(_invalid_utf8, header or [])), None):
            yield SourceError(path, "line 1", f"not valid UTF-8 in the header ({reason})")
            return
        if header is None or (column is not None and column not in header):
            columns = ", ".join(header or []) or "none"
            yield SourceError(
                path, "", f"no {column!r} column (columns: {columns}; use --text-field)"
            )
            return
        number, last_line = 0, reader.line_num
        for row in reader:
            first_line, last_line = last_line + 1, reader.line_num
            while over and over[0] < first_line:
                over.popleft()
            long_line = over[0] if over and over[0] <= last_line else None
            if row == [] and long_line is None:
                continue
            number += 1
            locator = f"row {number}"
            if long_line is not None:
                reason = f"line {long_line} is longer than {_LINE_CAP}: skipped"
                yield SourceError(path, locator, reason)
            elif len(row) > len(header):
                yield SourceError(path, locator, "more fields than the header has")
            elif reason := next(filter(None, map(_invalid_utf8, row)), None):
                yield SourceError(path, locator, f"not valid UTF-8 ({reason})")
            else:
                record = dict(zip(header, row, strict=False))
                yield locator, {**record, **dict.fromkeys(header[len(row) :])}
    except csv.Error as error:
        yield SourceError(path, f"row {reader.line_num}", f"bad CSV ({error})")
    except OSError as error:
        yield SourceError(path, f"line {reader.line_num + 1}", f"cannot read ({error.strerror})")


def _json_record(path: str, locator: str, line: str) -> tuple[str, dict] | SourceError:
    try:
        record = json.loads(line, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        return SourceError(path, locator, "not valid JSON (nested too deep)")
    except (ValueError, TypeError) as error:
        return SourceError(path, locator, f"not valid JSON ({error})")
    if not isinstance(record, dict):
        return SourceError(path, locator, "not a JSON object")
    return locator, record


def _not_json(constant: str):
    # Python's json reads NaN and Infinity; stored, they would make SQLite's json_extract fail on
    # every search that filters on metadata.
    raise ValueError(f"{constant} is not a JSON number")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is too large for a JSON number")
    return value


def read_lines(path: str) -> Iterator[tuple[str, str | SourceError]]:
    """(locator, line) of a UTF-8 text file, its end removed; a line that is not UTF-8 or is over
    MAX_LINE_BYTES as a SourceError (the reader goes on with the next line)."""
    text = _open_text(path)
    if isinstance(text, SourceError):
        yield "", text
        return
    with text:
        locator = "line 1"
        try:
            for number, line in enumerate(_capped_lines(text), start=1):
                locator = f"line {number}"
                if line is None:
                    reason = f"longer than {_LINE_CAP}: skipped"
                    yield locator, SourceError(path, locator, reason)
                elif reason := _invalid_utf8(line):
                    yield locator, SourceError(path, locator, f"not valid UTF-8 ({reason})")
                else:
                    yield locator, line.rstrip("\r\n")
        except OSError as error:
            yield locator, SourceError(path, locator, f"cannot read ({error.strerror})")


def _open_text(path: str):
    """A text file open for `_capped_lines`: bytes that are not UTF-8 are kept as surrogates
    (Python's surrogateescape), for `_invalid_utf8` to name the line or row that holds them."""
    try:
        binary = open_regular(path)
    except NotRegularFileError as error:
        return SourceError(path, "", error.reason)
    except OSError as error:
        return SourceError(path, "", f"cannot read ({error.strerror})")
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _capped_lines(text) -> Iterator[str | None]:
    """The lines of `text` with their ends ("\n", "\r\n" or a lone "\r", as bytes.splitlines
    splits); None for a line over MAX_LINE_BYTES, which is read past in pieces, never held."""
    limit = MAX_LINE_BYTES + 2  # characters: a line at the cap, and its "\r\n"
    line = text.readline(limit)
    while line:
        if len(line) == limit and not line.endswith("\n"):  # over the cap: read past the rest
            last = line
            while not last.endswith(("\n", "\r")) and (last := text.readline(1 << 16)):
                pass
            yield None
            line = text.readline(limit)
            if last.endswith("\r") and line == "\n":  # a "\r\n" split by a read's limit
                line = text.readline(limit)
            continue
        too_long = len(line.rstrip("\r\n").encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES
        yield None if too_long else line
        line = text.readline(limit)


def _invalid_utf8(text: str) -> str | None:
    """Why the bytes `text` was decoded from (by `_open_text`) are not UTF-8, or None."""
    if encodable(text):
        return None
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError as error:
        return str(getattr(error, "reason", error))
    return "a lone surrogate"
