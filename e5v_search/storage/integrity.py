"""The checks of the files a manifest vouches for, and of the catalog's header.

The manifest names each modality's index files with their size, a probe (a SHA-256 of the file
up to 8 MiB, else of 32 blocks spread over it: O(1), checked on every open) and a SHA-256 of
all of it (`digest`, checked by `verify`, by a writer before it merges a segment, and when a
file read whole is loaded). The catalog is checked for SQLite's header before SQLite would take
an empty or foreign file for a new database.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import IndexDamagedError
from ..files import sha256_of

_SQLITE_HEADER = b"SQLite format 3\x00"


PROBE_WHOLE = 8 * 2**20  # files up to this size are hashed whole
PROBE_BLOCKS, PROBE_BLOCK = 32, 64 * 2**10


def file_records(files: list[Path]) -> dict:
    """Size, probe and digest of each file of an index entry (just written: in the page
    cache, so the digest costs a read of memory)."""
    records = {}
    for file in files:
        record = {"size": file.stat().st_size, "probe": probe(file)}
        record["digest"] = record["probe"] if record["size"] <= PROBE_WHOLE else sha256_of(file)
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


def damage_of(folder: Path, records: dict) -> str | None:
    """What is wrong with the files recorded at a save ({name: record}), or None: their sizes
    and probes."""
    for name, record in records.items():
        file = folder / name
        if not file.exists():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != record["size"]:
            return f"{name} is damaged ({size} bytes, {record['size']} when it was saved)"
        if "probe" in record and probe(file) != record["probe"]:
            return f"{name} is damaged (its checksum differs from the one saved)"
        if "probe" not in record and "sha256" in record:  # saved before probes
            if sha256_of(file) != record["sha256"]:
                return f"{name} is damaged (its checksum differs from the one saved)"
    return None


def digest_damage(folder: Path, name: str, record: dict | None) -> str | None:
    """Every byte of one file against the digest recorded when it was written (None: whole,
    or no digest recorded, as in files saved before digests)."""
    file = folder / name
    if not record:
        return None
    if not file.exists():
        return f"{name} is missing"
    if file.stat().st_size != record["size"]:
        return f"{name} is damaged ({file.stat().st_size} bytes, {record['size']} when saved)"
    expected = record.get("digest") or record.get("sha256")
    if expected and sha256_of(file) != expected:
        return f"{name} is damaged (its bytes differ from those written)"
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
