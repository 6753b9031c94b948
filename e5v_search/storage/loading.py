"""Opening an index directory's indexes: the files a manifest names, checked and mapped, then
brought up to what the catalog has committed (in memory: a reader writes nothing).

A file that is missing, unreadable or miscounted is rebuilt from the stored vectors when that
fits the memory budget; an on-disk index, or one too large, is never rebuilt in memory (a reader
must not need 150 GB): its modality is named DAMAGED with the command that rebuilds it. Files
that lag the catalog (an ingest running, or one killed before it saved) are caught up from the
change counter; that is a state, not a repair (the writer that saves them says so once).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import index_memory
from ..errors import IndexDamagedError, IndexWriteError
from . import commits, segments
from .catalog import MODALITIES, Catalog
from .integrity import check_catalog_file, damage_of
from .locking import WriterLock
from .manifest import Manifest, read_copies, remove_leftovers
from .migrations import pending_migrations
from .rebuild import build


@dataclass
class Opened:
    manifest: Manifest
    indexes: dict = field(default_factory=dict)  # modality -> segments.Segments
    damaged: dict = field(default_factory=dict)  # modality -> what is wrong, what mends it
    repairs: list = field(default_factory=list)
    covered: int = 0  # the catalog change counter the indexes reflect
    lost: dict | None = None  # commits the catalog lost (commits.py), found now
    dirty: set = field(default_factory=set)  # modalities changed in memory: the next save


def read_manifest(folder: Path, catalog) -> tuple[Manifest, list[str]]:
    """The manifest (or its backup copy); when both are gone, the shape the catalog kept (each
    index's type, on disk, re-ranking; the budget), so a damaged manifest never changes a type."""
    manifest, problem = Manifest.read(folder)
    if not manifest.indexes and (problem or catalog.count()):
        shape = catalog.shape()
        if shape:
            manifest = Manifest.from_shape(shape)
    return manifest, [problem] if problem else []


def open_indexes(folder: Path, catalog) -> Opened:
    """Every modality's index as the manifest names it, caught up with the catalog. Read again
    from the start when a writer replaces the files while they are being opened."""
    while True:
        manifest, problems = read_manifest(folder, catalog)
        opened = Opened(manifest, repairs=problems)
        if _open(folder, catalog, opened):
            return opened


def moved(folder: Path, manifest: Manifest) -> bool:
    """Whether a writer saved since `manifest` was read (the files it named may be gone)."""
    return read_copies(folder)[0].get("save_id") != manifest.save_id


def _open(folder: Path, catalog, opened: Opened) -> bool:
    manifest, seq = opened.manifest, catalog.seq
    opened.lost = commits.loss(catalog.state(), [commits.recalled(folder), manifest.to_dict()])
    opened.covered = seq
    if manifest.covered_seq is not None and manifest.covered_seq > seq:
        # The files hold commits the catalog lost: rebuilt from what it has.
        for modality in MODALITIES:
            if catalog.count(modality) or modality in manifest.indexes:
                rebuild_in_memory(
                    folder, catalog, opened, modality, "they hold commits the catalog lost"
                )
        return True
    for modality in MODALITIES:
        if not _open_one(folder, catalog, opened, modality):
            return False
    return True


def _open_one(folder: Path, catalog, opened: Opened, modality: str) -> bool:
    manifest = opened.manifest
    entry = manifest.indexes.get(modality)
    if entry is None or not entry.written or not (folder / entry.names()[0]).exists():
        if moved(folder, manifest):
            return False
        if catalog.count(modality):
            why = "not in the manifest" if entry is None or not entry.written else "missing"
            name = entry.names()[0] if entry and entry.written else f"{modality}.faiss"
            rebuild_in_memory(folder, catalog, opened, modality, f"{name} {why}")
        return True
    damage = damage_of(folder, entry.files)
    if damage and moved(folder, manifest):
        return False  # a writer replaced the files as we read the manifest
    try:
        if damage:
            raise ValueError(damage)
        index = segments.load(folder, entry)  # mapped: O(1)
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        if moved(folder, manifest):
            return False
        rebuild_in_memory(
            folder, catalog, opened, modality, str(error) if damage else f"unreadable ({error})"
        )
        return True
    index.score_bound = segments.score_bound(entry.factory)
    opened.indexes[modality] = index
    if manifest.covered_seq is None:
        rebuild_in_memory(folder, catalog, opened, modality, "the manifest has no change counter")
    elif manifest.covered_seq < catalog.seq:
        applied = catch_up(index, entry, catalog, modality, manifest.covered_seq)
        if applied is None:
            rebuild_in_memory(folder, catalog, opened, modality, "missed changes, cannot remove")
        elif applied:
            opened.dirty.add(modality)
    if modality in opened.indexes:
        held = opened.indexes[modality].ntotal + len(manifest.indexes[modality].skipped)
        stored = catalog.count(modality)  # again: the catch-up read newer commits
        if held != stored:
            why = f"its files hold {held} vectors, the catalog {stored}"
            rebuild_in_memory(folder, catalog, opened, modality, why)
    return True


def take_over(store, purpose: str) -> None:
    """What a writer owes before it writes: a loss found is recorded (ids and counters
    continue above what was given), ids the files remember are never given again, a
    killed writer's leftovers go, and changes it did not save are said once."""
    if store.lost:
        store.catalog.record_loss(store.lost, store.lost["seq"][1], store.lost["ids"][1] + 1)
        store.covered, store.lost = store.catalog.seq, None
    remembered = commits.recalled(store.path).get("next_id", 1)
    store.catalog.never_reuse_below(max(store.manifest.next_id, remembered))
    remove_leftovers(store.path)
    behind = store.catalog.seq - (store.manifest.covered_seq or store.catalog.seq)
    if behind > 0:
        store.repairs.append(
            f"the index files missed {behind} change(s) of a writer that stopped before "
            "saving them (killed?): caught up from the catalog and saved now"
        )
    if store.damaged and purpose not in ("rebuild", "repair"):
        raise IndexDamagedError("; ".join(store.damaged.values()))


def follow(store) -> None:
    """What a store does when the catalog moved on and the files did not (an ingest of
    another process is committing): each index catches up in memory, or is rebuilt from the
    catalog as it was when its type cannot remove (HNSW) or it has none yet."""
    from .rebuild import rebuild_as_before

    for modality in MODALITIES:
        entry = store.manifest.entry(modality)
        if modality in store.indexes:
            index, covered = store.indexes[modality], store.covered
            applied = catch_up(index, entry, store.catalog, modality, covered)
            if applied is None:
                rebuild_as_before(store, modality, "missed changes, cannot remove")
            elif applied:
                store.changed(modality)
        elif store.catalog.count(modality) and modality not in store.damaged:
            rebuild_as_before(store, modality)
    store.covered = store.catalog.seq


def catch_up(index, entry, catalog, modality: str, covered: int) -> int | None:
    """Apply to `index`, in memory, the changes committed after `covered` (what a reader does
    while an ingest runs); how many ids it changed, or None when the type cannot remove
    (HNSW): rebuild it."""
    gone = catalog.deleted_since(covered)[modality]
    changed = list(catalog.iter_vectors(modality, since_seq=covered))
    changed_ids = np.concatenate([c[0] for c in changed]) if changed else np.empty(0, np.int64)
    written = catalog.ids(modality, where="seq > ?", params=(covered,))
    entry.skip(resolved=[*changed_ids, *gone], skipped=np.setdiff1d(written, changed_ids))
    if not len(changed_ids) and not len(gone):
        return 0  # the changes it missed were all in the other modality
    # An updated item is removed then added again with its new vector.
    if not index.remove(np.concatenate([gone, changed_ids])):
        return None
    for ids, vectors in changed:
        index.add(ids, vectors)
    return len(changed_ids) + len(gone)


def rebuild_in_memory(folder: Path, catalog, opened: Opened, modality: str, reason: str) -> None:
    """A repair on open: the index rebuilt from the stored vectors, in memory, when it is an
    in-memory type that fits the memory budget; else named DAMAGED with the command that
    rebuilds it."""
    manifest = opened.manifest
    entry = manifest.indexes.get(modality)
    factory = manifest.factory_of(modality)
    on_disk = (entry is not None and entry.ondisk) or any(folder.glob(f"{modality}.*.ivfdata"))
    size = memory_of(factory, catalog.count(modality), catalog.dim or 0)
    budget = manifest.max_memory or index_memory()
    opened.indexes.pop(modality, None)
    if on_disk or size > budget:
        where = "on disk" if on_disk else f"{_size(size)} in memory, over {_size(budget)}"
        opened.damaged[modality] = (
            f"the {modality} index ({factory}, {where}) cannot be used: {reason}. "
            f"`e5v-search rebuild --index {folder}` rebuilds it from the catalog, its type kept"
        )
        return
    previous = entry or manifest.entry(modality)
    built = build(
        folder,
        catalog,
        manifest,
        modality,
        factory,
        rerank=previous.rerank,
        search=previous.search,
        reason=reason,
    )
    built.entry.chosen_by, built.entry.reason = previous.chosen_by, previous.reason
    manifest.indexes[modality] = built.entry
    opened.indexes[modality] = built.index
    opened.repairs.append(built.repair)
    opened.dirty.add(modality)


def memory_of(factory: str, n: int, dim: int) -> int:
    """About what an index of this type holds in memory for n vectors."""
    pq = re.findall(r"PQ(\d+)", factory)
    if pq:
        return n * (int(pq[-1]) + 16)
    if re.search(r"SQ[468]", factory):
        return n * (dim + 24)
    return n * (4 * dim + 24) * (2 if "HNSW" in factory else 1)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def open_catalog(path: Path, exists: bool, lock_timeout, on_wait) -> Catalog:
    """The catalog read-only when it needs no migration; else migrated (or created) under the
    writer lock, which media that cannot be written cannot give: said so."""
    if exists:
        try:
            check_catalog_file(path / "catalog.sqlite")
        except IndexDamagedError:
            if not os.access(path, os.W_OK):
                raise
            # Another process may be creating it (SQLite has not written its first page
            # yet): the creator holds the writer lock, so look again once we have it.
            with WriterLock(path, "open", lock_timeout, on_wait):
                check_catalog_file(path / "catalog.sqlite")
        catalog = Catalog(path / "catalog.sqlite", writable=False)
        pending = pending_migrations(catalog.conn)
        if not pending:
            return catalog
        catalog.close()
        if not os.access(path, os.W_OK):
            raise IndexWriteError(
                f"{path}'s catalog was made by an earlier version and needs migrating "
                f"({', '.join(pending)}), which writes it: open it once where {path} can "
                "be written"
            )
    else:
        path.mkdir(parents=True, exist_ok=True)
    with WriterLock(path, "migration" if exists else "creation", lock_timeout, on_wait):
        return Catalog(path / "catalog.sqlite")
