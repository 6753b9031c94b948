"""Reading corpora: image folders and globs, and text files (.txt lines, .jsonl, .csv).

`scan()` yields one `SourceItem` per image or text and one `SourceError` per input it cannot use
(naming the file, the line or row, and why), in a stable order, so that a run can go on past a
bad input and a rerun meets the same items in the same order. Nothing here reads pixels: images
are decoded later, in workers ahead of the model.

Reads are bounded, so that no corpus can hang or stop a run: only regular files are opened (a
fifo, a device or a link to one is named and skipped first), text files are read through the
record reader (records.py: line by line with MAX_LINE_BYTES a line), and whatever is wrong with
one record (bad JSON of any kind, text that is not valid Unicode, nesting past MAX_JSON_DEPTH, a
file name that is not UTF-8) is that record's error: an item that comes out of here can be
hashed, stored and printed.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MAX_JSON_DEPTH
from ..errors import InputError, NotRegularFileError
from ..files import check_regular
from ..images import IMAGE_EXTENSIONS
from ..records import SourceError, encodable, printable, read_lines, read_records

TEXT_EXTENSIONS = (".txt", ".jsonl", ".csv", ".tsv")
STDIN = "-"  # the source that reads standard input (its items' source: STDIN_SOURCE)
STDIN_SOURCE = "<stdin>"
STDIN_FORMATS = ("txt", "jsonl", "csv", "tsv")
INDEX_MARK = "catalog.sqlite"  # a folder holding one is an index: never scanned
DEFAULT_TEXT_FIELD = "text"
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


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scan(
    sources,
    text_field: str | None = None,
    id_field: str | None = None,
    exclude=(),
    stdin_format: str = "txt",
) -> Iterator[SourceItem | SourceError]:
    """Items and errors from folders (images, recursively), globs and files, in order; `-`
    reads standard input as `stdin_format`. A path that an `exclude` glob matches (its full
    path, or any one of its folder or file names) is left out, and so is every index folder."""
    excluded = _excluder(exclude)
    for source in sources:
        source = str(source)
        if source == STDIN:
            yield from _stdin(stdin_format, text_field, id_field)
        elif os.path.isdir(source):
            for path in _walk_images(source, excluded):
                yield _image(path)
        elif os.path.exists(source):  # a file, or a fifo or device that _file names
            if not excluded(source):
                yield from _file(source, text_field, id_field)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
            files = [m for m in matches if _not_folder(m) and not _hidden(m)]
            files = [m for m in files if not excluded(m) and not _in_index(m)]
            if not files:
                yield SourceError(source, "", "the pattern matches no file")
            for path in files:
                yield from _file(path, text_field, id_field)
        else:
            yield SourceError(source, "", "no such file, folder or pattern")


def check_sources(sources, index: Path) -> list[str]:
    """The sources as `scan` takes them, `~` expanded; InputError for one that does not exist
    (a glob may match nothing yet: that is the run's error, recorded) and for a folder that
    holds the index itself, whose files it would take in."""
    index = Path(index).resolve()
    checked = []
    for source in sources:
        text = str(source) if str(source) == STDIN else os.path.expanduser(str(source))
        if text != STDIN and not os.path.lexists(text) and not glob.has_magic(text):
            raise InputError(
                f"{printable(str(source))}: no such file, folder or pattern. Sources are image "
                f"folders, globs, images and text files ({', '.join(TEXT_EXTENSIONS)}), or - "
                "for standard input"
            )
        if os.path.isdir(text):
            folder = Path(text).resolve()
            if folder == index or folder in index.parents:
                raise InputError(
                    f"the index {index} is inside the source {printable(text)}, which would "
                    "take in its files: keep the index elsewhere (--index NAME keeps it in "
                    "the index home)"
                )
        checked.append(text)
    if checked.count(STDIN) > 1:
        raise InputError("standard input (-) can be read once: give - once")
    return checked


def _excluder(patterns):
    patterns = [str(p) for p in patterns]

    def excluded(path: str) -> bool:
        if not patterns:
            return False
        parts = Path(path).parts
        full = os.path.abspath(path)
        return any(
            fnmatch.fnmatch(full, p) or any(fnmatch.fnmatch(x, p) for x in parts) for p in patterns
        )

    return excluded


def _in_index(path: str) -> bool:
    return any((folder / INDEX_MARK).exists() for folder in Path(os.path.abspath(path)).parents)


def _stdin(fmt: str, text_field, id_field) -> Iterator[SourceItem | SourceError]:
    """Standard input read as a file of `fmt` (spooled to a temporary file, so that the same
    bounded readers read it), its items' source STDIN_SOURCE. Each is known by its --id-field
    key, else by its text (a line number would make the next pipe overwrite this one's): the
    same lines piped again add nothing, other lines add to them."""
    if fmt not in STDIN_FORMATS:
        raise InputError(f"stdin format {fmt!r}: use one of {', '.join(STDIN_FORMATS)}")
    with tempfile.TemporaryDirectory(prefix="e5v-stdin-") as folder:
        spooled = os.path.join(folder, f"stdin.{fmt}")
        with open(spooled, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        for entry in _texts(spooled, f".{fmt}", text_field, id_field):
            entry.source = STDIN_SOURCE
            if isinstance(entry, SourceItem) and not id_field:
                entry.locator = f"text {text_hash(entry.text)[:16]}"
            yield entry


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
            scope += [os.path.abspath(m) for m in matches if encodable(m)]  # others: not stored
    return scope


def _not_folder(path: str) -> bool:
    return os.path.exists(path) and not os.path.isdir(path)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(path).parts)


def _walk_images(root: str, excluded) -> Iterator[str]:
    """Image files under `root`, sorted, hidden files and folders skipped, and index folders
    (their thumbnails) and what `excluded` says. Symbolic links are followed once: a folder
    already visited (a link loop) is not entered again."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen or INDEX_MARK in files or excluded(folder):
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                if not excluded(path):
                    yield path


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
    if not encodable(path):
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
    for locator, line in read_lines(path):
        if isinstance(line, SourceError):
            yield line
        elif line.strip():  # a .txt file has one text per non-empty line
            yield SourceItem("text", path, locator, text=line.strip())


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
            if isinstance(value, str) and not encodable(value):
                return f"{name} holds a lone surrogate (not valid Unicode): skipped"
            if isinstance(value, (dict, list)):
                if depth > MAX_JSON_DEPTH:
                    return f"{name} is nested deeper than {MAX_JSON_DEPTH} levels: skipped"
                if isinstance(value, dict):
                    stack += [(k, depth) for k in value]
                    value = value.values()
                stack += [(v, depth + 1) for v in value]
    return None
