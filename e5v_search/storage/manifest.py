"""The manifest: which files make each modality's index, and what they cover.

    manifest.json, manifest.backup.json   the same content, each with a checksum of itself

`Manifest` and `IndexEntry` are its typed form; every module reads and changes it through them.
A save writes the first copy, then the backup (both whole or not written: files.replacing), so
a damaged copy is known by its checksum and the other one used. File stems come from
`new_name`, whose numbers only grow, so a file a reader may still map is never overwritten;
files no manifest names any more are removed after the manifest that dropped them is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..files import write_json
from .integrity import file_records

MANIFEST, BACKUP = "manifest.json", "manifest.backup.json"
FORMAT = 1
DEFAULT_FACTORY = "Flat"
SHAPE = ("factory", "ondisk", "rerank", "chosen_by", "search", "reason")  # kept in the catalog


@dataclass
class IndexEntry:
    """One modality's index: its type, how it is searched, and the files that hold it."""

    factory: str = DEFAULT_FACTORY
    ondisk: bool = False  # IVF lists in .ivfdata files, paged from disk
    rerank: int | None = None  # candidates rescored exactly from the stored vectors
    search: dict = field(default_factory=dict)  # nprobe, ef_search
    chosen_by: str | None = None  # "policy" or "user" (rebuild --type)
    reason: str | None = None  # why the policy chose the type
    failed: str | None = None  # a type the policy could not build at this size
    count: int = 0
    template: str | None = None
    segments: list[str] = field(default_factory=list)
    delta: str | None = None
    masks: str | None = None
    files: dict = field(default_factory=dict)  # name -> size, probe, digest
    skipped: list[int] = field(default_factory=list)  # damaged rows not indexed
    file: str | None = None  # an index saved before segments (older.py)

    @classmethod
    def from_dict(cls, data: dict) -> IndexEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}

    @property
    def written(self) -> bool:
        """Whether its files were ever saved (an entry recovered from the catalog was not)."""
        return bool(self.template or self.file)

    def names(self) -> list[str]:
        """Every file this entry uses, existing or not."""
        if self.file:  # saved before segments
            stem = self.file.removesuffix(".faiss")
            older = ("ivfdata", "delta.npz", "delta.faiss", "masked.npy") if self.ondisk else ()
            return [self.file, *(f"{stem}.{part}" for part in older)]
        if not self.template:
            return []
        names = [self.template, self.delta, self.masks]
        for stem in self.segments:
            names += [f"{stem}.faiss", f"{stem}.ids.npy"]
            names += [f"{stem}.ivfdata"] if self.ondisk else []
        return names

    def paths(self, folder: Path) -> list[Path]:
        """The files this entry uses that exist (for its records, sizes and clean-up)."""
        return [folder / name for name in self.names() if (folder / name).exists()]

    def skip(self, resolved=(), skipped=()) -> None:
        """Keep the list of damaged rows left out of the index: `resolved` ids were written
        again or deleted, `skipped` ones were just left out."""
        now = (set(self.skipped) - {int(i) for i in resolved}) | {int(i) for i in skipped}
        self.skipped = sorted(now)


@dataclass
class Manifest:
    indexes: dict[str, IndexEntry] = field(default_factory=dict)
    factory: str = DEFAULT_FACTORY  # the type new modalities start with
    covered_seq: int | None = None  # the catalog change counter the files reflect
    next_id: int = 1  # ids below it were given (never given again)
    max_memory: int | None = None  # the budget a `rebuild --max-memory` recorded
    save_id: str | None = None  # changes at every save: the generation readers follow
    file_number: int = 0  # the last number new_name gave
    saved_at: str | None = None
    format: int = FORMAT

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        known = {f.name for f in fields(cls)} - {"indexes"}
        manifest = cls(**{k: v for k, v in data.items() if k in known and v is not None})
        manifest.file_number = data.get("file_number", data.get("generation", 0))
        manifest.indexes = {m: IndexEntry.from_dict(e) for m, e in data.get("indexes", {}).items()}
        return manifest

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "indexes" and v is not None}
        data["indexes"] = {m: e.to_dict() for m, e in sorted(self.indexes.items())}
        return data

    @classmethod
    def read(cls, folder: Path) -> tuple[Manifest, str | None]:
        """The manifest, and what was wrong when its first copy could not be used: the backup
        is used then, or an empty manifest when both are missing or damaged."""
        data, problem = read_copies(folder)
        return cls.from_dict(data), problem

    def write(self, folder: Path) -> None:
        """Both copies, each whole or not written (the first is what readers follow)."""
        data = self.to_dict()
        data["checksum"] = checksum(data)
        write_json(folder / MANIFEST, data)
        write_json(folder / BACKUP, data)

    def entry(self, modality: str) -> IndexEntry:
        """The modality's entry, made (with the default type) when it has none yet."""
        if modality not in self.indexes:
            self.indexes[modality] = IndexEntry(factory=self.factory)
        return self.indexes[modality]

    def factory_of(self, modality: str) -> str:
        entry = self.indexes.get(modality)
        return entry.factory if entry else self.factory

    def new_name(self, modality: str, kind: str) -> str:
        """A file stem no manifest has named: numbers only grow, so a reader's files are never
        overwritten, and a killed writer's leftovers are simply written over or removed."""
        self.file_number += 1
        return f"{modality}.{kind}{self.file_number}"

    def shape(self) -> dict:
        """What the catalog keeps of the manifest: enough to rebuild each index as it was."""
        return {
            "factory": self.factory,
            "max_memory": self.max_memory,
            "indexes": {
                m: {k: v for k, v in e.to_dict().items() if k in SHAPE}
                for m, e in self.indexes.items()
            },
        }

    @classmethod
    def from_shape(cls, shape: dict) -> Manifest:
        """A manifest that names no files, with the types a catalog kept (its files lost)."""
        return cls.from_dict(shape)

    def save_files(self, folder: Path, indexes: dict, changed: set) -> None:
        """Write the `changed` modalities' new files (segments.Segments.save) and record every
        entry's files: size, probe, digest (a file is never changed once written, so the
        records of the names an entry keeps are still true)."""
        for modality in sorted(changed):
            entry = self.entry(modality)
            entry.file = None  # a layout saved before segments is converted now
            names = indexes[modality].save(
                folder, lambda kind, m=modality: self.new_name(m, kind), entry.files
            )
            entry.template, entry.segments = names["template"], names["segments"]
            entry.delta, entry.masks = names["delta"], names["masks"]
        for modality, index in indexes.items():
            entry = self.entry(modality)
            entry.count, entry.search = int(index.ntotal), index.search_settings()
            if modality in changed or not entry.files:
                kept, paths = entry.files, entry.paths(folder)
                new = file_records([p for p in paths if p.name not in kept])
                entry.files = {p.name: kept.get(p.name) or new[p.name] for p in paths}

    def remove_unused(self, folder: Path, modalities) -> None:
        """Index files no entry names any more (after this manifest was written): merged
        segments, older deltas and masks, a killed writer's leftovers."""
        used = {name for entry in self.indexes.values() for name in entry.names()}
        for modality in modalities:
            for path in folder.glob(f"{modality}.*"):
                if path.name not in used:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def remove_leftovers(folder: Path) -> None:
    """Temporary files and on-disk build folders of a writer that was killed (only a writer
    makes them, and the caller holds the writer lock)."""
    for leftover in [*folder.glob("*.tmp"), *folder.glob("*.shards.*")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def read_copies(folder: Path) -> tuple[dict, str | None]:
    data, problem = _read(folder / MANIFEST)
    if problem is None and "checksum" in data:
        return data, None  # the usual case: one file read
    backup, backup_problem = _read(folder / BACKUP)
    if problem is None and "checksum" in backup:
        problem = "is damaged (it has lost its checksum)"
    if problem is None:
        return data, None  # saved before copies and checksums
    if backup_problem is None:
        return backup, f"{MANIFEST} {problem}: its copy {BACKUP} was used"
    if problem == "is missing" and backup_problem == "is missing":
        return {}, None  # a new index
    return {}, f"{MANIFEST} {problem} and {BACKUP} {backup_problem}"


def copy_problems(folder: Path) -> dict[str, str]:
    """What is wrong with each copy (verify). A missing copy is only a problem beside one
    written with a checksum (copies and checksums came together; older saves had one)."""
    read = {name: _read(folder / name) for name in (MANIFEST, BACKUP)}
    paired = any("checksum" in data for data, _ in read.values())
    return {
        name: problem
        for name, (_, problem) in read.items()
        if problem and (problem != "is missing" or paired)
    }


def _read(path: Path) -> tuple[dict, str | None]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, "is missing"
    except (OSError, ValueError) as error:
        return {}, f"is damaged ({type(error).__name__})"
    if not isinstance(data, dict):
        return {}, "is damaged (not an object)"
    if "checksum" in data and data["checksum"] != checksum(data):
        return {}, "is damaged (its checksum differs)"
    return data, None


def checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
