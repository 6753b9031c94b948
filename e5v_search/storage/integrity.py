"""The manifest and the checks of the files it vouches for.

The manifest (manifest.json) names each modality's index files with their size and a SHA-256
of those read whole when loaded, so a damaged or missing file is found on open, before FAISS
reads it; the catalog is checked for SQLite's header before SQLite would take an empty or
foreign file for a new database.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import IndexDamagedError
from ..files import sha256_of

_SQLITE_HEADER = b"SQLite format 3\x00"


def read_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # treated like a missing one: every file is checked and rebuilt if needed


PROBE_WHOLE = 8 * 2**20  # files up to this size are hashed whole
PROBE_BLOCKS, PROBE_BLOCK = 32, 64 * 2**10


def file_records(files: list[Path]) -> dict:
    """Size and probe of each file of an index entry (not of the .ivfdata lists, paged from
    disk and never read whole)."""
    records = {}
    for file in files:
        record = {"size": file.stat().st_size}
        if file.suffix != ".ivfdata":
            record["probe"] = probe(file)
        records[file.name] = record
    return records


def probe(path: Path) -> str:
    """A SHA-256 of the whole file when it is small, else of its size and 32 blocks of 64 KiB
    spread over it (first and last among them): O(1) in the collection's size, so opening an
    index stays cheap, yet a file cut short, swapped or overwritten in part is caught."""
    size = path.stat().st_size
    if size <= PROBE_WHOLE:
        return sha256_of(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(PROBE_BLOCKS):
            f.seek((size - PROBE_BLOCK) * i // (PROBE_BLOCKS - 1))
            digest.update(f.read(PROBE_BLOCK))
    return "probe:" + digest.hexdigest()


def damage_of(folder: Path, entry: dict) -> str | None:
    """What is wrong with the files an entry recorded at its save, or None."""
    for name, record in (entry.get("files") or {}).items():
        file = folder / name
        if not file.exists():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != record["size"]:
            return f"{name} is damaged ({size} bytes, {record['size']} when it was saved)"
        if "probe" in record and probe(file) != record["probe"]:
            return f"{name} is damaged (its checksum differs from the one saved)"
        if "sha256" in record and sha256_of(file) != record["sha256"]:  # saved before probes
            return f"{name} is damaged (its checksum differs from the one saved)"
    return None


def check_catalog_file(path: Path) -> None:
    """An empty or foreign file is refused before SQLite, which would take it for a new
    database and write an empty schema over it."""
    with open(path, "rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise IndexDamagedError(catalog_damage(path, "empty" if not header else "not SQLite"))


def catalog_damage(path: Path, error) -> str:
    return (
        f"{path} is damaged ({error}): the catalog is the index's source of truth and is never "
        "overwritten. Restore it from a backup; the .faiss files cannot rebuild it."
    )
