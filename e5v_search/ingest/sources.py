"""Reading corpora: image folders and globs, and text files (.txt lines, .jsonl, .csv).

`scan()` yields one `SourceItem` per image or text and one `SourceError` per input it cannot use
(naming the file, the line or row, and why), in a stable order, so that a run can go on past a
bad input and a rerun meets the same items in the same order. Nothing here reads pixels: images
are decoded later, in workers ahead of the model.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..model.images import IMAGE_EXTENSIONS

TEXT_EXTENSIONS = (".txt", ".jsonl", ".csv")
DEFAULT_TEXT_FIELD = "text"


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

    def __str__(self) -> str:
        return f"{self.source}{f' ({self.locator})' if self.locator else ''}: {self.reason}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scan(
    sources, text_field: str | None = None, id_field: str | None = None
) -> Iterator[SourceItem | SourceError]:
    """Items and errors from folders (images, recursively), globs and files, in order."""
    for source in sources:
        source = str(source)
        if os.path.isdir(source):
            for path in _walk_images(source):
                yield _image(path)
        elif os.path.isfile(source):
            yield from _file(source, text_field, id_field)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
            files = [m for m in matches if os.path.isfile(m) and not _hidden(m)]
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
            scope += [os.path.abspath(m) for m in glob.glob(source, recursive=True)]
    return scope


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
    try:
        stat = os.stat(path)
    except OSError as error:
        return SourceError(os.path.abspath(path), "", f"cannot read ({error.strerror})")
    return SourceItem(
        "image",
        os.path.abspath(path),
        file_size=stat.st_size,
        file_mtime_ns=stat.st_mtime_ns,
    )


def _file(path: str, text_field, id_field) -> Iterator[SourceItem | SourceError]:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        yield _image(path)
    elif suffix in TEXT_EXTENSIONS:
        yield from _texts(os.path.abspath(path), suffix, text_field, id_field)
    else:
        kinds = ", ".join(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)
        yield SourceError(os.path.abspath(path), "", f"not a file type it reads ({kinds})")


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
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as error:
        yield SourceError(path, "", f"cannot read ({error.strerror})")
        return
    except UnicodeDecodeError as error:
        yield SourceError(path, "", f"not valid UTF-8 ({error.reason} at byte {error.start})")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or (column is not None and column not in reader.fieldnames):
        columns = ", ".join(reader.fieldnames or []) or "none"
        yield SourceError(path, "", f"no {column!r} column (columns: {columns}; use --text-field)")
        return
    try:
        for number, row in enumerate(reader, start=1):
            if None in row:
                yield SourceError(path, f"row {number}", "more fields than the header has")
                continue
            yield f"row {number}", row
    except csv.Error as error:
        yield SourceError(path, f"row {reader.line_num}", f"bad CSV ({error})")


def _json_record(path: str, locator: str, line: str) -> tuple[str, dict] | SourceError:
    try:
        record = json.loads(line)
    except ValueError as error:
        return SourceError(path, locator, f"not valid JSON ({error})")
    if not isinstance(record, dict):
        return SourceError(path, locator, "not a JSON object")
    return locator, record


def _lines(path: str) -> Iterator[tuple[str, str | SourceError]]:
    """(locator, line) of a UTF-8 text file; a line that is not UTF-8 as a SourceError."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        yield "", SourceError(path, "", f"cannot read ({error.strerror})")
        return
    for number, raw in enumerate(data.splitlines(), start=1):
        locator = f"line {number}"
        try:
            yield locator, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            yield locator, SourceError(path, locator, f"not valid UTF-8 ({error.reason})")


def _record(path, locator, record: dict, text_field, id_field) -> SourceItem | SourceError:
    text = record.get(text_field)
    if text is None:
        return SourceError(path, locator, f"no {text_field!r} field (use --text-field)")
    if not isinstance(text, str):
        return SourceError(path, locator, f"{text_field!r} is not a string")
    if not text.strip():
        return SourceError(path, locator, "blank text")
    if id_field:
        if record.get(id_field) in (None, ""):
            return SourceError(path, locator, f"no {id_field!r} field (the --id-field)")
        locator = f"id={record[id_field]}"
    metadata = {k: v for k, v in record.items() if k != text_field}
    return SourceItem("text", path, locator, text=text.strip(), metadata=metadata)
