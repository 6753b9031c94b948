"""An index directory: the catalog (source of truth) and one FAISS index per modality, kept in step.

    indexes/<name>/
      catalog.sqlite     items, vectors, embedding spec, ingest errors (catalog.py)
      image.*            the image vectors' FAISS index (ids = catalog item ids): sealed
                         segments, a delta and masks (segments.py)
      text.*             the text vectors' index
      manifest.json      per modality: its type, files (size, probe) and the catalog change
                         counter they cover

One index per modality makes a modality-restricted search exact in count (10 images asked, 10
images returned, even when images are 1% of the corpus) with no filtering inside FAISS. Index
files are never changed once written and the manifest is written last; on open, changes the
files missed (a crash between the catalog commit and the save, a deleted file) are applied or
the index is rebuilt from the stored vectors, and each repair is reported in `Store.repairs`.

Many processes may use one directory (a server, a cron ingest, a rebuild). Writes happen inside
`writing()`, which holds the directory's writer lock (locking.py), first brings the in-memory
indexes up to everything committed (another writer's work, a crashed writer's unsaved changes)
and saves on success. Opening never writes: a reader repairs in memory only, and `refresh()`
follows what writers commit (the server calls it between requests). Every public write method
takes the lock itself when the caller has not.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import index_memory
from ..errors import (
    IndexBuildError,
    IndexDamagedError,
    IndexNotFoundError,
    IndexWriteError,
    InputError,
)
from ..spec import Spec
from . import commits, ondisk, segments
from . import faiss_ops as fx
from .blobs import as_stored
from .catalog import MODALITIES, Catalog, now
from .integrity import (
    catalog_damage,
    check_catalog_file,
    damage_of,
    file_records,
    read_manifest,
    write_manifest,
)
from .locking import WriterLock
from .migrations import pending_migrations
from .search import Searchable, search_modality

log = logging.getLogger(__name__)

CATALOG = "catalog.sqlite"
MANIFEST_FORMAT = 1
DEFAULT_FACTORY = "Flat"
_READ_CHUNK = 20000


@dataclass
class Hit:
    id: int
    score: float
    modality: str


class Store:
    def __init__(self, path: Path, catalog: Catalog, manifest: dict):
        self.path = path
        self.catalog = catalog
        self.manifest = manifest
        self.indexes: dict[str, object] = {}
        self._gpu: dict[str, object] = {}
        self._dirty: set[str] = set()
        self.repairs: list[str] = []
        self.covered = 0  # the catalog change counter the in-memory indexes reflect
        self.lock_timeout: float | None = None
        self.on_wait = None  # told once when another writer holds the lock
        self._writing = 0  # depth of nested writing() blocks
        self._state = threading.RLock()  # searches vs a refresh, in a threaded server
        self.damaged: dict[str, str] = {}  # modality -> what is wrong and what fixes it
        self.lost: dict | None = None  # commits the catalog lost, found now (commits.py)
        self.manifest_problem: str | None = None
        self.acknowledged: list[dict] = []  # losses a rebuild acknowledged (said once)
        self._need = 0  # bytes the write in progress needs (a full disk's message)

    @classmethod
    def open(cls, path: str | Path, create: bool = False, lock_timeout=None, on_wait=None):
        """Open an index directory for reading (nothing is written, not even a lock file, so
        read-only media work; see `writing()`), or with `create` make it. Creating it or
        migrating its catalog takes the writer lock."""
        path = Path(path)
        exists = (path / CATALOG).exists()
        if not exists and not create:
            raise IndexNotFoundError(
                f"no index at {path}: create one with `e5v-search ingest SOURCES --index "
                f"{path}` (or Store.open(path, create=True))"
            )
        try:
            catalog = cls._open_catalog(path, exists, lock_timeout, on_wait)
            store = cls(path, catalog, {})
            store.lock_timeout, store.on_wait = lock_timeout, on_wait
            store._read_manifest()
            store._load()
        except sqlite3.DatabaseError as error:
            raise IndexDamagedError(catalog_damage(path / CATALOG, error)) from error
        return store

    @staticmethod
    def _open_catalog(path: Path, exists: bool, lock_timeout, on_wait) -> Catalog:
        if exists:
            try:
                check_catalog_file(path / CATALOG)
            except IndexDamagedError:
                if not os.access(path, os.W_OK):
                    raise
                # Another process may be creating it (SQLite has not written its first page
                # yet): the creator holds the writer lock, so look again once we have it.
                with WriterLock(path, "open", lock_timeout, on_wait):
                    check_catalog_file(path / CATALOG)
            catalog = Catalog(path / CATALOG, writable=False)
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
            return Catalog(path / CATALOG)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def factory(self) -> str:
        return self.manifest.get("factory", DEFAULT_FACTORY)

    @property
    def generation(self) -> str | None:
        """Changes with every save of any process: what a reader compares to see new files."""
        return self.manifest.get("save_id")

    # -- many processes: the writer lock, refresh -----------------------------------------------

    @contextmanager
    def writing(self, purpose: str = "write"):
        """Hold the writer lock for the block (nested blocks share it). On entry the indexes
        catch up with every committed change; on success the changed files are saved. On an
        error nothing is saved: the next writer catches up from the catalog. A full disk or
        read-only media end the block with one IndexWriteError saying what was kept."""
        if self._writing:
            self._writing += 1
            try:
                yield self
            finally:
                self._writing -= 1
            return
        with WriterLock(self.path, purpose, self.lock_timeout, self.on_wait):
            self._writing = 1
            try:
                with self._write_errors():
                    self.catalog.make_writable()
                    self.refresh()
                    self._take_over(purpose)
                    yield self
                    self._save()
            finally:
                self._writing, self._need = 0, 0

    def _take_over(self, purpose: str) -> None:
        """What a writer owes before it writes: a loss found is recorded (ids and counters
        continue above what was given), ids the files remember are never given again, a
        killed writer's leftovers go, and changes it did not save are said once."""
        if self.lost:
            self.catalog.record_loss(self.lost, self.lost["seq"][1], self.lost["ids"][1] + 1)
            self.covered, self.lost = self.catalog.seq, None
        self.catalog.never_reuse_below(
            max(self.manifest.get("next_id", 1), commits.recalled(self.path).get("next_id", 1))
        )
        self._remove_leftovers()
        behind = self.catalog.seq - (self.manifest.get("covered_seq") or self.catalog.seq)
        if behind > 0:
            self.repairs.append(
                f"the index files missed {behind} change(s) of a writer that stopped before "
                "saving them (killed?): caught up from the catalog and saved now"
            )
        if self.damaged and purpose not in ("rebuild", "repair"):
            raise IndexDamagedError("; ".join(self.damaged.values()))

    @contextmanager
    def _write_errors(self):
        try:
            yield
        except (sqlite3.OperationalError, OSError, RuntimeError) as error:
            problem = write_problem(error)
            if problem is None and "disk i/o error" in str(error).lower():
                # SQLite says no more than this when it cannot grow its -shm or -wal file.
                problem = "full" if shutil.disk_usage(self.path).free < 2**20 else None
            named = getattr(error, "filename", None)
            if problem is None or (named and self.path.resolve() not in Path(named).parents):
                raise  # not this directory's (a source file the caller reads, say)
            raise IndexWriteError(self._write_message(problem, error)) from error

    def _write_message(self, problem: str, error) -> str:
        kept = (
            f"Nothing committed was lost: the catalog holds {self.catalog.count() or 0} items "
            "and the index files their last save (the next write catches up)"
        )
        if problem == "read-only":
            return f"{self.path} cannot be written ({error}); reading it still works. {kept}."
        free = shutil.disk_usage(self.path).free
        need = f"; this write needed about {_size(self._need)} more" if self._need else ""
        return (
            f"{self.path}: its disk is full ({_size(free)} free{need}). {kept}. Free some "
            "space and run the command again: it continues where this one stopped."
        )

    def refresh(self) -> bool:
        """Bring the in-memory indexes up to what is committed now: files another process saved
        are loaded, changes committed since are applied (in memory). True when anything
        changed. Cheap when nothing did: one small file read and one query."""
        with self._state:
            manifest, _ = read_manifest(self.path)
            if manifest.get("save_id") != self.manifest.get("save_id"):
                self.indexes, self._gpu = {}, {}
                self._dirty.clear()
                self.damaged.clear()
                self.repairs = []  # what the new files need, not what the old ones did
                self._read_manifest()
                self._load()
                return True
            seq = self.catalog.seq
            if seq == self.covered:
                return False
            for modality in MODALITIES:
                if modality in self.indexes:
                    self._catch_up(modality, self.covered)
                elif self.catalog.count(modality) and modality not in self.damaged:
                    self._rebuild_in_memory(modality, "new items")
            self.covered = seq
            return True

    # -- keeping the files in step with the catalog ------------------------------------------

    def _read_manifest(self) -> None:
        """The manifest (or its backup copy); when both are gone, the shape the catalog kept
        (type, on disk, re-ranking, budget), so a damaged manifest never changes the type."""
        self.manifest, self.manifest_problem = read_manifest(self.path)
        if self.manifest_problem:
            self.repairs.append(self.manifest_problem)
        if not self.manifest and (self.manifest_problem or self.catalog.count()):
            shape = self.catalog.shape()
            self.manifest = {k: v for k, v in shape.items() if k != "indexes"}
            self.manifest["indexes"] = {m: dict(e) for m, e in shape.get("indexes", {}).items()}

    def _load(self) -> None:
        """Load the index files the manifest names and catch up, in memory, with the catalog;
        a file that is missing, unreadable or miscounted is rebuilt from the stored vectors
        when that fits in memory (never an on-disk index: it is named DAMAGED instead). Each
        repair is listed in `repairs` and is written by the next writer's save."""
        seq = self.catalog.seq
        covered = self.manifest.get("covered_seq")
        self.lost = commits.loss(self.catalog.state(), [commits.recalled(self.path), self.manifest])
        if covered is not None and covered > seq:
            # The files hold commits the catalog lost: rebuilt from what it has.
            for modality in MODALITIES:
                if self.catalog.count(modality) or modality in self.manifest.get("indexes", {}):
                    self._rebuild_in_memory(modality, "they hold commits the catalog lost")
            self.covered = seq
            return
        for modality in MODALITIES:
            if self._load_one(modality, covered, seq) == "moved":
                return self._load()
        self.covered = seq
        for line in self.repairs:
            log.warning("%s: %s", self.path, line)

    def _load_one(self, modality: str, covered, seq) -> str | None:
        entry = self.manifest.get("indexes", {}).get(modality)
        stored = self.catalog.count(modality)
        entry_file = (entry or {}).get("template") or (entry or {}).get("file")
        file = self.path / (entry_file or f"{modality}.faiss")
        if entry is None or not file.exists():
            if self._manifest_moved():
                return "moved"
            if stored:
                why = "not in the manifest" if entry is None else f"{file.name} missing"
                self._rebuild_in_memory(modality, why)
            return None
        damage = damage_of(self.path, entry)
        if damage and self._manifest_moved():
            return "moved"  # a writer replaced the files as we read the manifest
        try:
            if damage:
                raise ValueError(damage)
            self.indexes[modality] = segments.load(self.path, entry)  # mapped: O(1)
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            if self._manifest_moved():
                return "moved"
            self._rebuild_in_memory(modality, str(error) if damage else f"unreadable ({error})")
            return None
        self.indexes[modality].score_bound = segments.score_bound(self._factory_of(modality))
        if covered is None:
            self._rebuild_in_memory(modality, "the manifest has no change counter")
        elif covered < seq:
            self._catch_up(modality, covered)  # an ingest running, or one that stopped
        entry = self.manifest.get("indexes", {}).get(modality, {})
        held = self.indexes[modality].ntotal if modality in self.indexes else stored
        held += len(entry.get("skipped", []))  # damaged rows, known and not indexed
        stored = self.catalog.count(modality)  # again: the catch-up read newer commits
        if held != stored:
            why = f"its files hold {held} vectors, the catalog {stored}"
            self._rebuild_in_memory(modality, why)
        return None

    def _rebuild_in_memory(self, modality: str, reason: str) -> None:
        """A repair on open: the index rebuilt from the stored vectors, in memory, when it is
        an in-memory type that fits the memory budget. An on-disk index, or one too large, is
        named DAMAGED with the command that rebuilds it: a reader must not need 150 GB."""
        entry = self.manifest.get("indexes", {}).get(modality, {})
        factory = self._factory_of(modality)
        on_disk = entry.get("ondisk") or any(self.path.glob(f"{modality}.*.ivfdata"))
        size = _memory_of(factory, self.catalog.count(modality), self.catalog.dim or 0)
        budget = self.manifest.get("max_memory") or index_memory()
        if on_disk or size > budget:
            where = "on disk" if on_disk else f"{_size(size)} in memory, over {_size(budget)}"
            self.indexes.pop(modality, None)
            self.damaged[modality] = (
                f"the {modality} index ({factory}, {where}) cannot be used: {reason}. "
                f"`e5v-search rebuild --index {self.path}` rebuilds it from the catalog, "
                "its type kept"
            )
            return
        self._rebuild(modality, factory, reason)

    def _manifest_moved(self) -> bool:
        """True, with the new manifest taken and the half-loaded state dropped, when a writer
        saved since this store read the manifest (the files it named may be gone)."""
        manifest, _ = read_manifest(self.path)
        if manifest.get("save_id") == self.manifest.get("save_id"):
            return False
        self.indexes, self._gpu, self.repairs = {}, {}, []
        self.damaged.clear()
        self._read_manifest()
        return True

    def _catch_up(self, modality: str, covered: int) -> None:
        """Apply, in memory, the changes committed after `covered`: what a reader does while an
        ingest runs (not a repair: a writer saves them; see `_take_over`)."""
        gone = self.catalog.deleted_since(covered)[modality]
        changed = [chunk for chunk in self.catalog.iter_vectors(modality, since_seq=covered)]
        changed_ids = np.concatenate([c[0] for c in changed]) if changed else np.empty(0, np.int64)
        written = self.catalog.ids(modality, where="seq > ?", params=(covered,))
        self._note_skipped(modality, [*changed_ids, *gone], np.setdiff1d(written, changed_ids))
        if not len(changed_ids) and not len(gone):
            return  # the changes it missed were all in the other modality
        index = self.indexes[modality]
        # An updated item is removed then added again with its new vector.
        if not fx.remove(index, np.concatenate([gone, changed_ids])):
            self._rebuild(modality, self._factory_of(modality), "missed changes, cannot remove")
            return
        for ids, vectors in changed:
            fx.add(index, ids, vectors)
        self._changed(modality)

    def _note_skipped(self, modality: str, resolved, skipped=()) -> None:
        """Keep the entry's list of damaged rows left out of the index: `resolved` ids were
        written again or deleted, `skipped` ones were just left out."""
        entry = self.manifest.setdefault("indexes", {}).setdefault(modality, {})
        now = set(entry.get("skipped", [])) - {int(i) for i in resolved}
        now |= {int(i) for i in skipped}
        if now:
            entry["skipped"] = sorted(now)
        else:
            entry.pop("skipped", None)

    def _rebuild(
        self, modality: str, factory: str, reason: str | None = None, on_disk: bool = False
    ) -> dict:
        """Build one modality's index from the stored vectors, as one sealed segment; no model
        needed. `on_disk`: an IVF type is built shard by shard with its lists merged into a file
        (ondisk.py). The old index is dropped first (the catalog holds every vector): memory
        holds one index, not two."""
        started = time.perf_counter()
        count = self.catalog.count(modality)
        index = fx.make(factory, self.catalog.dim)
        train_seconds = 0.0
        if not index.is_trained:
            size = fx.train_sample_size(factory, count, self.catalog.dim)
            sample = self.catalog.sample_ids(modality, size)
            began = time.perf_counter()
            try:
                fx.train(index, self.catalog.readable_vectors(sample)[1], factory)
            except IndexBuildError:
                if reason is None:
                    raise
                # A repair must not leave the index unopenable: exact search until rebuilt.
                reason += f"; too few vectors for {factory}, Flat instead"
                factory, index = DEFAULT_FACTORY, fx.make(DEFAULT_FACTORY, self.catalog.dim)
            train_seconds = time.perf_counter() - began
        previous = self.manifest.get("indexes", {}).get(modality, {})
        settings = previous.get("search", {})
        fx.set_search_defaults(index, settings.get("nprobe"), settings.get("ef_search"))
        entry = {"factory": factory, "rerank": previous.get("rerank")}
        chunks = self.catalog.iter_vectors(modality, batch=_READ_CHUNK)
        self.indexes.pop(modality, None)
        self._gpu.pop(modality, None)
        template = segments.emptied(index)
        if on_disk and fx._ivf(index) is not None:
            name = self._new_name(modality, "s")
            self._need = 2 * segments.vector_bytes(template) * count  # shards, then lists
            segments.write_ids(
                self.path / f"{name}.ids.npy", ondisk.build(index, chunks, self.path, name)
            )
            built = segments.open_segment(self.path, name, True, np.empty(0, dtype=np.int64))
            entry["ondisk"] = True
        else:
            for ids, vectors in chunks:
                fx.add(index, ids, vectors)
            built = segments.Segment("", index, np.sort(fx.ids_of(index)), written=False)
        # Rows whose vectors are damaged were not indexed: remembered, so the count is known.
        skipped = np.setdiff1d(self.catalog.ids(modality), built.ids)
        if len(skipped):
            entry["skipped"] = skipped.tolist()
        self.indexes[modality] = segments.Segments(
            template, [built] if built.live else [], segments.emptied(template), bool(on_disk)
        )
        self.indexes[modality].score_bound = segments.score_bound(factory)
        self.damaged.pop(modality, None)
        self._dirty.add(modality)
        self.manifest.setdefault("indexes", {})[modality] = entry
        if reason:
            self.repairs.append(f"{modality} index rebuilt from {count} stored vectors: {reason}")
        return {
            "modality": modality,
            "factory": factory,
            "vectors": count - len(skipped),
            "skipped": skipped.tolist(),
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - started,
        }

    def save(self) -> None:
        """Write the changed index files atomically, then the manifest that vouches for them
        (under the writer lock; a save outside `writing()` takes it)."""
        if self._writing:
            self._save()
            return
        with self.writing("save"):
            pass  # saved on leaving the block

    def _save(self) -> None:
        entries = self.manifest.setdefault("indexes", {})
        for modality in sorted(self._dirty):
            entry = entries.setdefault(modality, {"factory": self.factory})
            for older in ("file", "base_max_id"):  # an entry written before segments
                entry.pop(older, None)
            self._need = max(self._need, segments.SEAL_BYTES)
            names = self.indexes[modality].save(
                self.path, lambda kind, m=modality: self._new_name(m, kind), entry.get("files")
            )
            entry.update(names)
        for modality, index in self.indexes.items():
            entry = entries.setdefault(modality, {"factory": self.factory})
            entry["count"] = int(index.ntotal)
            entry["search"] = fx.search_settings(index)
            if modality in self._dirty or "files" not in entry:
                # A file is never changed once written: records of names kept are still true.
                kept = entry.get("files") or {}
                files = segments.files_of(self.path, entry)
                new = file_records([p for p in files if p.name not in kept])
                entry["files"] = {p.name: kept.get(p.name) or new[p.name] for p in files}
        seq = self.covered
        next_id = max(self.catalog.next_id, self.manifest.get("next_id", 1))
        self.manifest.update(
            format=MANIFEST_FORMAT,
            factory=self.factory,
            covered_seq=seq,
            next_id=next_id,
            saved_at=now(),
            save_id=uuid.uuid4().hex,
        )
        write_manifest(self.path, self.manifest)
        self.catalog.set_shape(self._shape())
        self.catalog.prune_deleted(seq)
        self._dirty.clear()
        self._remove_unused_files()

    def _shape(self) -> dict:
        """What the catalog keeps of the manifest: enough to rebuild each index as it was."""
        kept = ("factory", "ondisk", "rerank", "chosen_by", "search", "reason")
        return {
            "factory": self.factory,
            "max_memory": self.manifest.get("max_memory"),
            "indexes": {
                m: {k: e[k] for k in kept if k in e}
                for m, e in self.manifest.get("indexes", {}).items()
            },
        }

    def _new_name(self, modality: str, kind: str) -> str:
        """A file stem no manifest has named: numbers only grow, so a reader's files are never
        overwritten, and a crashed writer's leftovers are simply written over or removed."""
        self.manifest["generation"] = self.manifest.get("generation", 0) + 1
        return f"{modality}.{kind}{self.manifest['generation']}"

    def _remove_leftovers(self) -> None:
        """Temporary files and on-disk build folders of a writer that was killed (only a
        writer creates them, and we hold the lock)."""
        for leftover in [*self.path.glob("*.tmp"), *self.path.glob("*.shards.*")]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def _remove_unused_files(self) -> None:
        """Index files the manifest no longer names (after it was written): merged segments,
        older deltas and masks, a crashed writer's leftovers."""
        used = {
            p.name
            for e in self.manifest.get("indexes", {}).values()
            for p in segments.files_of(self.path, e)
        }
        for modality in MODALITIES:
            for path in self.path.glob(f"{modality}.*"):
                if path.name not in used:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # -- writes ------------------------------------------------------------------------------

    def add(self, items: list[dict], vectors: np.ndarray, spec: Spec) -> list[int]:
        """Commit items and vectors to the catalog, then add them to the in-memory indexes.
        Saved when the outermost `writing()` block ends (here, when the caller holds none)."""
        with self.writing("add"):
            ids = np.array(self.catalog.add(items, vectors, spec), dtype=np.int64)
            vectors = as_stored(vectors, spec)
            modalities = np.array([item["modality"] for item in items])
            self._need = vectors.nbytes
            for modality in MODALITIES:
                mask = modalities == modality
                if mask.any():
                    self._index_for(modality)
                    fx.add(self.indexes[modality], ids[mask], vectors[mask])
                    self._changed(modality)
            self.covered = self.catalog.seq
            return ids.tolist()

    def update(self, ids: list[int], items: list[dict], vectors: np.ndarray, spec: Spec) -> None:
        with self.writing("update"):
            self.catalog.update(ids, items, vectors, spec)
            self._reindex(np.array(ids, dtype=np.int64), vectors=as_stored(vectors, spec))
            self.covered = self.catalog.seq

    def delete(self, ids) -> int:
        with self.writing("delete"):
            ids = np.array([int(i) for i in ids], dtype=np.int64)
            known = self.catalog.get(ids)
            removed = self.catalog.delete(ids)
            by_modality = {
                m: np.array([r["id"] for r in known if r["modality"] == m]) for m in MODALITIES
            }
            for modality, gone in by_modality.items():
                if len(gone):
                    self._note_skipped(modality, gone)
                if len(gone) and modality in self.indexes:
                    if not fx.remove(self.indexes[modality], gone.astype(np.int64)):
                        self._rebuild(modality, self._factory_of(modality))
                    self._changed(modality)
            self.covered = self.catalog.seq
            return removed

    def delete_where(self, where: str, params=()) -> int:
        return self.delete(self.catalog.ids(where=where, params=params))

    def delete_source_prefix(self, prefix: str) -> int:
        return self.delete_where("substr(source, 1, ?) = ?", (len(prefix), prefix))

    def _reindex(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        rows = {r["id"]: r["modality"] for r in self.catalog.get(ids)}
        for modality in MODALITIES:
            mask = np.array([rows.get(int(i)) == modality for i in ids])
            if mask.any():
                self._note_skipped(modality, ids[mask])
            if mask.any() and modality in self.indexes:
                if not fx.remove(self.indexes[modality], ids[mask]):
                    self._rebuild(modality, self._factory_of(modality))
                else:
                    fx.add(self.indexes[modality], ids[mask], vectors[mask])
                self._changed(modality)

    def _index_for(self, modality: str):
        if modality not in self.indexes:
            factory = self.factory
            index = fx.make(factory, self.catalog.dim)
            if not index.is_trained:
                # A trained type cannot take its first vectors untrained: exact until rebuilt.
                factory, index = DEFAULT_FACTORY, fx.make(DEFAULT_FACTORY, self.catalog.dim)
            self.indexes[modality] = segments.Segments.new(index)
            self.manifest.setdefault("indexes", {})[modality] = {"factory": factory}
        return self.indexes[modality]

    def _factory_of(self, modality: str) -> str:
        return self.manifest.get("indexes", {}).get(modality, {}).get("factory", self.factory)

    def _changed(self, modality: str) -> None:
        self._dirty.add(modality)
        self._gpu.pop(modality, None)

    # -- search ------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        modality: str | None = None,
        where: str | None = None,
        params=(),
        among=None,
    ) -> list[list[Hit]]:
        """Top-k hits per query row, best first, from one modality or both (merged by score).
        `where` (SQL on the items table) and `among` (item ids) restrict the search inside it,
        never by cutting its results."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if modality is not None and modality not in MODALITIES:
            raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if self.catalog.dim is not None and queries.shape[1] != self.catalog.dim:
            raise InputError(
                f"queries have {queries.shape[1]} values, the index {self.catalog.dim}"
            )
        found = []  # (scores, ids, modality) of each modality searched
        for mod in [modality] if modality else list(MODALITIES):
            if mod in self.damaged:
                raise IndexDamagedError(self.damaged[mod])
            if mod in self.indexes:
                with self._state:
                    try:
                        found.append(
                            (*self._search_one(mod, queries, k, where, params, among), mod)
                        )
                    except IndexDamagedError as error:
                        self.damaged[mod] = (
                            f"{error}. `e5v-search rebuild --index {self.path}` rebuilds the "
                            f"{mod} index from the catalog; `e5v-search verify` checks every file"
                        )
                        raise IndexDamagedError(self.damaged[mod]) from error
        if not found:
            return [[] for _ in queries]
        scores, ids = fx.top_k(
            np.hstack([f[0] for f in found]), np.hstack([f[1] for f in found]), k
        )
        modality_of = {int(i): m for _, row_ids, m in found for i in row_ids.ravel() if i >= 0}
        return [
            [
                Hit(int(i), float(s), modality_of[int(i)])
                for s, i in zip(srow, irow, strict=True)
                if i >= 0
            ]
            for srow, irow in zip(scores, ids, strict=True)
        ]

    def _search_one(self, modality, queries, k, where, params, among=None):
        entry = self.manifest.get("indexes", {}).get(modality, {})
        index = Searchable(self.indexes[modality], self._searchable(modality), modality)
        return search_modality(index, self.catalog, queries, k, where, params, among,
                               entry.get("rerank"))  # fmt: skip

    def _searchable(self, modality: str):
        if modality not in self._gpu:
            self._gpu[modality] = fx.to_gpu(self.indexes[modality])
        return self._gpu[modality] or self.indexes[modality]

    # -- maintenance -------------------------------------------------------------------------

    def rebuild(
        self, factory=None, nprobe=None, ef_search=None, max_memory=None, rerank=None
    ) -> list[dict]:
        """Under the writer lock: see `_rebuild_all`."""
        with self.writing("rebuild"):
            return self._rebuild_all(factory, nprobe, ef_search, max_memory, rerank)

    def _rebuild_all(self, factory, nprobe, ef_search, max_memory, rerank) -> list[dict]:
        """Rebuild every modality's index from the stored vectors and save. `factory`: a FAISS
        type (default: the current one); or `max_memory` (bytes): the type is chosen per
        modality to fit its share of the budget (ondisk.choose), IVF lists merged on disk.
        `rerank`: rescore that many candidates exactly from the stored vectors. Neither type nor
        budget: each modality keeps its current type, on disk or not, and its re-ranking. A
        modality too small to train the type gets Flat, said so in its entry's note."""
        keep = factory is None and max_memory is None
        compacted = self.catalog.compact_vectors()  # a half-precision catalog written before
        if factory:
            fx.make(factory, self.catalog.dim or 64)  # a bad factory string fails before work
        counts = {m: self.catalog.count(m) for m in MODALITIES if self.catalog.count(m)}
        choices = ondisk.plan(counts, self.catalog.dim, int(max_memory)) if max_memory else {}
        stats, failures = [], []
        for modality, count in counts.items():
            chosen, on_disk, note = factory, False, None
            current = self.manifest.get("indexes", {}).get(modality, {})
            if keep:
                chosen = current.get("factory", self.factory)
                on_disk = bool(
                    current.get("ondisk") or any(self.path.glob(f"{modality}.*.ivfdata"))
                )
                rerank = current.get("rerank") if rerank is None else rerank
            if modality in choices:
                choice = choices[modality]
                chosen, on_disk, note = choice.factory, choice.ondisk, choice.reason
            chosen_rerank = rerank
            if modality in choices and chosen != "Flat" and rerank is None:
                chosen_rerank = ondisk.RERANK  # compressed codes rank roughly: rescore them
            self.manifest.setdefault("indexes", {})[modality] = {
                "search": {"nprobe": nprobe, "ef_search": ef_search},
                "rerank": chosen_rerank,
            }
            chosen_by = current.get("chosen_by") if keep else "user" if factory else "policy"
            try:
                entry = self._rebuild(modality, chosen, on_disk=on_disk)
            except IndexBuildError as error:
                failures.append((modality, count, chosen, error))
                continue
            self.manifest["indexes"][modality]["chosen_by"] = chosen_by
            if note:
                entry["note"] = note
            if entry["skipped"]:
                left_out = (
                    f"{len(entry['skipped'])} damaged rows left out (ids {entry['skipped'][:5]})"
                )
                entry["note"] = f"{note}; {left_out}" if note else left_out
            stats.append(entry)
        if failures and not stats:
            raise failures[0][3]
        for modality, count, chosen, error in failures:
            entry = self._rebuild(modality, DEFAULT_FACTORY)
            entry["note"] = (
                f"{count} vectors are too few for {chosen}: exact Flat instead ({error})"
            )
            stats.append(entry)
        if compacted and stats:
            said = f"{compacted:,} stored vectors rewritten as float16"
            stats[0]["note"] = f"{stats[0]['note']}; {said}" if "note" in stats[0] else said
        if factory:
            self.manifest["factory"] = factory
        if max_memory:  # later ingests keep to it (policy.py)
            self.manifest["max_memory"] = int(max_memory)
        self.acknowledged += self.catalog.acknowledge_loss()  # a rebuild says what was lost
        self.save()
        for entry in stats:
            files = segments.files_of(self.path, self.manifest["indexes"][entry["modality"]])
            entry["bytes"] = sum(p.stat().st_size for p in files)
        return stats

    def rebuild_modality(self, modality: str, factory: str, on_disk: bool) -> dict:
        """Rebuild one modality in another type for the index policy (policy.py); the caller
        holds the writer lock and the save happens when it ends."""
        stats = self._rebuild(modality, factory, on_disk=on_disk)  # keeps the re-ranking
        self.manifest["indexes"][modality]["chosen_by"] = "policy"
        segments.failpoint("rebuilt")
        return stats

    def follow_policy(self, budget: int) -> list[str]:
        """Give each modality the type `budget` calls for at its size (policy.follow)."""
        from .policy import follow

        with self.writing("ingest"):
            return follow(self, budget)

    def set_search(self, modality: str, rerank=None, nprobe=None, ef_search=None) -> None:
        """Change how a modality's index is searched, without rebuilding it; saved."""
        with self.writing("set-search"):
            index = self.indexes[modality]
            fx.set_search_defaults(index, nprobe, ef_search)
            self.manifest["indexes"][modality]["rerank"] = rerank
            self._changed(modality)

    def recall(self, k: int = 10, sample: int = 200, seed: int = 0) -> dict[str, float]:
        """recall@k of each modality's index against exact search, with a sample of stored
        vectors of each modality as queries (their own id excluded): 'text->image' etc."""
        out = {}
        for query_modality in MODALITIES:
            query_ids = self.catalog.sample_ids(query_modality, sample, seed)
            if not len(query_ids):
                continue
            query_ids, queries = self.catalog.readable_vectors(query_ids)
            for target in self.indexes:
                _, found = self._search_one(target, queries, k + 1, None, ())  # as users search
                found = np.array(
                    [
                        [i for i in row if i != q][:k]
                        for row, q in zip(found, query_ids, strict=True)
                    ]
                )
                chunks = self.catalog.iter_vectors(target, batch=_READ_CHUNK)
                _, exact = fx.exact_search((query_ids, queries), chunks, k, exclude_self=True)
                out[f"{query_modality}->{target}"] = fx.neighbour_recall(found, exact)
        return out

    def info(self) -> dict:
        entries = self.manifest.get("indexes", {})
        files = {m: segments.files_of(self.path, entries.get(m, {})) for m in self.indexes}
        return {
            "path": str(self.path),
            "generation": self.generation,  # of the files in use (changes at every save)
            "covered_seq": self.covered,  # the catalog changes they reflect, in memory
            "spec": self.catalog.spec(),
            "counts": {m: self.catalog.count(m) for m in MODALITIES},
            "factory": self.factory,
            "indexes": {
                m: {
                    "factory": self._factory_of(m),
                    "vectors": int(self.indexes[m].ntotal),
                    "bytes": sum(p.stat().st_size for p in files[m] if p.exists()),
                    "on_disk": bool(entries.get(m, {}).get("ondisk")),
                    "mapped": self.indexes[m].mapped,  # read from its files as searches need
                    "segments": len(self.indexes[m].sealed),
                    "delta": int(self.indexes[m].delta.ntotal),
                    "rerank": entries.get(m, {}).get("rerank"),
                    "chosen_by": entries.get(m, {}).get("chosen_by") or "policy",
                    "reason": entries.get(m, {}).get("reason"),
                    **fx.search_settings(self.indexes[m]),
                }
                for m in self.indexes
            },
            "damaged": dict(self.damaged),
            "lost": [*self.catalog.lost(), *([self.lost] if self.lost else [])],
            # changes committed and not yet in the files (an ingest running, or one killed)
            "unsaved_changes": self.catalog.seq - (self.manifest.get("covered_seq") or 0),
            "skipped_rows": {m: e["skipped"] for m, e in entries.items() if e.get("skipped")},
            "catalog_bytes": (self.path / CATALOG).stat().st_size,
            "errors": len(self.catalog.errors()),
        }

    def verify(self) -> dict:
        """Every byte of the directory against what was recorded at writing (verify.py)."""
        from .verify import verify

        with self._state:
            return verify(self)

    def repair(self) -> list[str]:
        """Under the writer lock: verify, then mend what it found, each said in one line.
        Modalities whose files are damaged are rebuilt from the catalog as they were (type, on
        disk, re-ranking); damaged rows are marked to be embedded again by the next ingest of
        their source; commits the catalog lost are acknowledged."""
        from .commits import describe
        from .verify import verify

        with self.writing("repair"):
            report = verify(self)
            said = []
            broken = {f["modality"] for f in report["files"] if f["problem"]} | set(self.damaged)
            if report["manifest"] and self.catalog.count():
                broken |= {m for m in MODALITIES if self.catalog.count(m)}
            for modality in sorted(broken):
                if self.catalog.count(modality):
                    stats = self._rebuild_as_before(modality)
                    said.append(f"{modality}: rebuilt as {stats['factory']} from "
                                f"{stats['vectors']:,} stored vectors")  # fmt: skip
            rows = report["catalog"]["damaged_rows"]
            if rows:
                self.catalog.forget_content({r["id"] for r in rows})
                said += [
                    f"item {r['id']} ({r['source']}): {r['problem']}; the next ingest of its "
                    "source embeds it again (if its source is gone, `e5v-search delete --id "
                    f"{r['id']}`)"
                    for r in rows
                ]
            said += [f"catalog.sqlite: {line}" for line in report["catalog"]["integrity"]]
            if report["commits"]:
                self.catalog.remember()
                said.append(f"{report['commits'].split(' (')[0]}: written again")
            said += [  # the save that ends this block writes both copies anew
                f"{name} {problem}: written again"
                for name, problem in report["manifest"].items()
                if name.endswith(".json")
            ]
            acknowledged = self.catalog.acknowledge_loss()
            said += [f"acknowledged: {describe(lost)}" for lost in acknowledged]
            return said or ["nothing to repair: every file and row is whole"]

    def _rebuild_as_before(self, modality: str) -> dict:
        entry = dict(self.manifest.get("indexes", {}).get(modality, {}))
        on_disk = bool(entry.get("ondisk") or any(self.path.glob(f"{modality}.*.ivfdata")))
        stats = self._rebuild(modality, self._factory_of(modality), on_disk=on_disk)
        for key in ("chosen_by", "reason", "search"):
            if key in entry:
                self.manifest["indexes"][modality][key] = entry[key]
        return stats


def write_problem(error) -> str | None:
    """Which write problem `error` is ("full" or "read-only"), or None for any other error."""
    code = getattr(error, "errno", None)
    text = str(error).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text or "no space left" in text:
        return "full"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly database" in text:
        return "read-only"
    if "read-only file system" in text or "permission denied" in text:
        return "read-only"
    return None


def _memory_of(factory: str, n: int, dim: int) -> int:
    """About what an index of this type holds in memory for n vectors."""
    pq = re.findall(r"PQ(\d+)", factory)
    if pq:
        return n * (int(pq[-1]) + 16)
    if re.search(r"SQ[468]\b|SQ8", factory):
        return n * (dim + 24)
    return n * (4 * dim + 24) * (2 if "HNSW" in factory else 1)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
