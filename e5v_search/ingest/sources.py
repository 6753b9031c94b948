"""Reading corpora: image folders and globs, and text files (.txt lines, .jsonl, .csv).

`scan()` yields one `SourceItem` per image or text and one `SourceError` per input it cannot use
(naming the file, the line or row, and why), in a stable order, so that a run can go on past a
bad input and a rerun meets the same items in the same order. Nothing here reads pixels: images
are decoded later, in workers ahead of the model.

Reads are bounded, so that no corpus can hang or stop a run: only regular files are opened (a
fifo, a device or a link to one is named and skipped first), text files are read line by line
with MAX_LINE_BYTES a line, and whatever is wrong with one record (bad JSON of any kind, text
that is not valid Unicode, nesting past MAX_JSON_DEPTH, a file name that is not UTF-8) is that
record's error: an item that comes out of here can be hashed, stored and printed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MAX_JSON_DEPTH, MAX_LINE_BYTES
from ..errors import NotRegularFileError
from ..files import check_regular, open_regular
from ..images import IMAGE_EXTENSIONS

TEXT_EXTENSIONS = (".txt", ".jsonl", ".csv")
DEFAULT_TEXT_FIELD = "text"
_LINE_CAP = f"{MAX_LINE_BYTES / 2**20:g} MiB (the cap on a line)"
_BAD_NAME = "the file name is not valid UTF-8: rename the file to ingest it"


@dataclass
class SourceItem:
    modality: str  # "image" or "text"
    source: str  # absolute path of the file
    locator: str = ""  # where in the file: "line 3", "row 7", "id=abc"; "" for an image
    text: str | None = None
    metadata: dict = field(default_factory=dict)
    file_size: int | None = (
        None  # images: with the mtime, tells an unchanged file without reading it
    )
    file_mtime_ns: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.source, self.locator


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


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def printable(text: str) -> str:
    """`text` as UTF-8 can hold it: the bytes of a file name that is not UTF-8 (which Python
    holds as surrogates) as \\xNN, any other lone surrogate as \\uNNNN."""
    if _encodable(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan(
    sources, text_field: str | None = None, id_field: str | None = None
) -> Iterator[SourceItem | SourceError]:
    """Items and errors from folders (images, recursively), globs and files, in order."""
    for source in sources:
        source = str(source)
        if os.path.isdir(source):
            for path in _walk_images(source):
                yield _image(path)
        elif os.path.exists(source):  # a file, or a fifo or device that _file names
            yield from _file(source, text_field, id_field)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
            files = [m for m in matches if _not_folder(m) and not _hidden(m)]
            if not files:
                yield SourceError(source, "", "the pattern matches no file")
            for path in files:
                yield from _file(path, text_field, id_field)
        else:
            yield SourceError(source, "", "no such file, folder or pattern")


def scope_of(sources) -> list[str]:
    """Absolute paths that the sources cover (a folder with a trailing separator): what `prune`
    may remove items of."""
    scope = []
    for source in map(str, sources):
        if os.path.isdir(source):
            scope.append(os.path.join(os.path.abspath(source), ""))
        elif os.path.isfile(source):
            scope.append(os.path.abspath(source))
        elif glob.has_magic(source):
            matches = glob.glob(source, recursive=True)
            scope += [os.path.abspath(m) for m in matches if _encodable(m)]  # others: not stored
    return scope


def _not_folder(path: str) -> bool:
    return os.path.exists(path) and not os.path.isdir(path)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(path).parts)


def _walk_images(root: str) -> Iterator[str]:
    """Image files under `root`, sorted, hidden files and folders skipped. Symbolic links are
    followed once: a folder already visited (a link loop) is not entered again."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(folder, name)


def _image(path: str) -> SourceItem | SourceError:
    status = _regular_file(path)
    if isinstance(status, SourceError):
        return status
    return SourceItem(
        "image",
        os.path.abspath(path),
        file_size=status.st_size,
        file_mtime_ns=status.st_mtime_ns,
    )


def _file(path: str, text_field, id_field) -> Iterator[SourceItem | SourceError]:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        yield _image(path)
    elif suffix in TEXT_EXTENSIONS:
        status = _regular_file(path)
        if isinstance(status, SourceError):
            yield status
        else:
            yield from _texts(os.path.abspath(path), suffix, text_field, id_field)
    else:
        kinds = ", ".join(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)
        yield SourceError(os.path.abspath(path), "", f"not a file type it reads ({kinds})")


def _regular_file(path: str) -> os.stat_result | SourceError:
    """The status of a regular file (or of the one a link points to) whose name can be stored;
    else the reason it is skipped, found before anything opens it."""
    path = os.path.abspath(path)
    if not _encodable(path):
        return SourceError(path, "", _BAD_NAME)
    try:
        status = os.stat(path)
        check_regular(path, status)
    except NotRegularFileError as error:
        return SourceError(path, "", error.reason)
    except OSError as error:
        return SourceError(path, "", f"cannot read ({error.strerror})")
    return status


def _texts(path, suffix, text_field, id_field) -> Iterator[SourceItem | SourceError]:
    text_field = text_field or DEFAULT_TEXT_FIELD
    if suffix != ".txt":
        for row in read_records(path, column=text_field):
            if isinstance(row, SourceError):
                yield row
            else:
                yield _record(path, *row, text_field, id_field)
        return
    for locator, line in _lines(path):
        if isinstance(line, SourceError):
            yield line
        elif line.strip():  # a .txt file has one text per non-empty line
            yield SourceItem("text", path, locator, text=line.strip())


def read_records(path: str, column: str | None = None) -> Iterator[tuple[str, dict] | SourceError]:
    """The records of a .jsonl or .csv file as (locator, record), each bad one (or the whole
    file, when it cannot be read) as a SourceError naming it: ingest and evaluation read with
    this. `column`: a .csv without it in its header is one error (a .jsonl record without it is
    the caller's to name)."""
    if Path(path).suffix.lower() != ".csv":
        for locator, line in _lines(path):
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
        yield from _csv_records(path, text, column)


def _csv_records(path: str, text, column: str | None) -> Iterator[tuple[str, dict] | SourceError]:
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
    reader = csv.reader(lines())
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


def _lines(path: str) -> Iterator[tuple[str, str | SourceError]]:
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
    if _encodable(text):
        return None
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError as error:
        return str(getattr(error, "reason", error))
    return "a lone surrogate"


def _record(path, locator, record: dict, text_field, id_field) -> SourceItem | SourceError:
    text = record.get(text_field)
    if text is None:
        return SourceError(path, locator, f"no {text_field!r} field (use --text-field)")
    if not isinstance(text, str):
        return SourceError(path, locator, f"{text_field!r} is not a string")
    if not text.strip():
        return SourceError(path, locator, "blank text")
    if reason := _unstorable(record):
        return SourceError(path, locator, reason)
    if id_field:
        if record.get(id_field) in (None, ""):
            return SourceError(path, locator, f"no {id_field!r} field (the --id-field)")
        if not isinstance(record[id_field], (str, int, float)):
            return SourceError(path, locator, f"{id_field!r} is not a string or a number")
        locator = f"id={record[id_field]}"
    metadata = {k: v for k, v in record.items() if k != text_field}
    return SourceItem("text", path, locator, text=text.strip(), metadata=metadata)


def _unstorable(record: dict) -> str | None:
    """Why a record cannot be stored, naming its field: a string in it (a key or a value) that
    is not valid Unicode (JSON's "\\ud800" escapes a lone surrogate, which UTF-8 cannot hold), or
    values nested past MAX_JSON_DEPTH (json.dumps, and SQLite's JSON functions, recurse). Walked
    with a list, not recursion, so a deep record cannot stop the walk itself."""
    for key, value in record.items():
        name = printable(repr(key))
        stack = [(key, 0), (value, 1)]
        while stack:
            value, depth = stack.pop()
            if isinstance(value, str) and not _encodable(value):
                return f"{name} holds a lone surrogate (not valid Unicode): skipped"
            if isinstance(value, (dict, list)):
                if depth > MAX_JSON_DEPTH:
                    return f"{name} is nested deeper than {MAX_JSON_DEPTH} levels: skipped"
                if isinstance(value, dict):
                    stack += [(k, depth) for k in value]
                    value = value.values()
                stack += [(v, depth + 1) for v in value]
    return None
