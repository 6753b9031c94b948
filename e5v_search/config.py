"""Defaults shared by the library, the CLI and the scripts, and where things live on disk.

Light on purpose (standard library only): `e5v-search --help` imports it.
"""

import os
import re
from pathlib import Path

DEFAULT_MODEL = "royokong/e5-v"
MAX_BATCH_TOKENS = 16384  # padded tokens in one forward pass; an image is 1,176-2,928
MAX_PIXELS = 100_000_000  # 100 MP: past any camera; PIL itself refuses above ~179 MP
MAX_UPLOAD_BYTES = 20 * 2**20  # the server's upload limit
MAX_LINE_BYTES = 2**20  # a line of a .txt, .jsonl or .csv file: a longer one is skipped unread
MAX_JSON_DEPTH = 64  # nesting of a record's values: deeper ones are refused, never stored
LOCK_TIMEOUT = 600.0  # seconds a writer waits for another: a cron ingest beside a long one
MAX_ID = 2**63 - 1  # item ids are SQLite integers
# Results whose vectors are at least this similar (cosine) are shown as one picture's copies:
# clip-retrieval's deduplication threshold (Engine.collapse). Measured on the tiny trained model
# (scripts/bench_dedupe.py, docs/benchmarks.md): resized, re-encoded and EXIF-rotated copies are
# >= 0.998 to their original; E5-V's own copies could not be measured (no hub here)
DUPLICATE_COSINE = 0.94
MAX_K = 10_000  # results per query: beyond this, page through a filter instead
SEARCH_MODES = ("vector", "keyword", "hybrid")  # how a search ranks (README: Search modes)
RRF_K = 60  # reciprocal rank fusion's k, as in Qdrant, LanceDB and Milvus
HYBRID_WEIGHT = 0.5  # the vector side's share of a hybrid score; the keyword side has the rest
HYBRID_CANDIDATES = 100  # each side of a hybrid search gives at least this many candidates
OLD_INDEXES = Path("indexes")  # where named indexes lived before, relative to the working folder


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B?)\s*$", re.I)


def parse_bytes(text: str) -> int:
    """'8GB' -> 8e9, '512MiB' -> 512 * 2**20, '1.5G' -> 1.5e9."""
    from .errors import InputError

    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"{text!r} is not a size: write 8GB, 512MB or 2GiB")
    number, unit, binary = match.groups()
    base = 1024 if binary.upper().startswith("I") else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def index_memory() -> int:
    """The memory the index of a collection may take, which decides its type: $E5V_MAX_MEMORY,
    else half of this machine's RAM (the model and the rest of the work need the other half)."""
    env = os.environ.get("E5V_MAX_MEMORY")
    if env:
        return parse_bytes(env)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def default_workers() -> int:
    """Image decoding threads: one per core, at most 8 (past that the model is the bottleneck)."""
    return min(8, os.cpu_count() or 1)


def index_home() -> Path:
    """Where named indexes live, whatever the working folder: $E5V_INDEX_HOME, else the
    platform's per-user data folder (platformdirs: ~/.local/share/e5v-search/indexes on Linux,
    ~/Library/Application Support/e5v-search/indexes on macOS)."""
    env = os.environ.get("E5V_INDEX_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_data_path("e5v-search") / "indexes"


def is_index_name(value: str | Path) -> bool:
    """A bare name (no path separator, not . or .., not ~): a named index, never a folder."""
    text = str(value)
    separators = "/" + os.sep + (os.altsep or "")
    return (
        bool(text)
        and not any(c in text for c in separators)
        and text not in (".", "..")
        and (not text.startswith("~"))
    )


def index_path(value: str | Path, notify=None) -> Path:
    """Where an index lives: a bare NAME is index_home()/NAME (a folder NAME in the working
    folder is never taken for it); anything else (./x, /x, x/y, ~/x) is a directory path.
    A named index that an earlier version kept in ./indexes/NAME is still found there while
    the home has none of that name; `notify` is then told where. Every command and script
    resolves with this."""
    if not is_index_name(value):
        return Path(str(value)).expanduser()
    home = index_home() / str(value)
    old = OLD_INDEXES / str(value)
    if not (home / "catalog.sqlite").exists() and (old / "catalog.sqlite").exists():
        if notify is not None:
            notify(
                f"index {value}: using {old.resolve()}, found where earlier versions kept named "
                f"indexes (./indexes, relative to the working folder); move it to {home} to use "
                "it by name from any folder"
            )
        return old
    return home


def cache_home() -> Path:
    """Where built artefacts (tiny test checkpoints, thumbnails) live: $E5V_SEARCH_CACHE."""
    env = os.environ.get("E5V_SEARCH_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "e5v-search"
