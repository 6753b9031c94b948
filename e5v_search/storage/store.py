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

import logging
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexBuildError, IndexDamagedError, IndexNotFoundError, InputError
from ..files import write_json
from ..spec import Spec
from . import faiss_ops as fx
from . import ondisk, segments
from .catalog import MODALITIES, Catalog, as_stored, now
from .integrity import (
    catalog_damage,
    check_catalog_file,
    damage_of,
    file_records,
    read_manifest,
)
from .locking import WriterLock
from .migrations import pending_migrations
from .search import Searchable, search_modality

log = logging.getLogger(__name__)

CATALOG = "catalog.sqlite"
MANIFEST = "manifest.json"
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

    @classmethod
    def open(cls, path: str | Path, create: bool = False, lock_timeout=None, on_wait=None):
        """Open an index directory for reading (nothing is written; see `writing()`), or with
        `create` make it. Creating it or migrating its catalog takes the writer lock."""
        path = Path(path)
        exists = (path / CATALOG).exists()
        if not exists and not create:
            raise IndexNotFoundError(
                f"no index at {path}: create one with `e5v-search ingest SOURCES --index "
                f"{path}` (or Store.open(path, create=True))"
            )
        path.mkdir(parents=True, exist_ok=True)
        if exists:
            try:
                check_catalog_file(path / CATALOG)
            except IndexDamagedError:
                # Another process may be creating it (SQLite has not written its first page
                # yet): the creator holds the writer lock, so look again once we have it.
                with WriterLock(path, "open", lock_timeout, on_wait):
                    check_catalog_file(path / CATALOG)
        try:
            if exists and not pending_migrations(path / CATALOG):
                catalog = Catalog(path / CATALOG)
            else:
                with WriterLock(path, "creation" if not exists else "migration", lock_timeout,
                                on_wait):  # fmt: skip
                    catalog = Catalog(path / CATALOG)
            store = cls(path, catalog, read_manifest(path / MANIFEST))
            store.lock_timeout, store.on_wait = lock_timeout, on_wait
            store._load()
        except sqlite3.DatabaseError as error:
            raise IndexDamagedError(catalog_damage(path / CATALOG, error)) from error
        return store

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
        error nothing is saved: the next writer catches up from the catalog."""
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
                self.refresh()
                self.catalog.never_reuse_below(self.manifest.get("next_id", 1))
                self._remove_leftovers()
                if self.damaged and purpose != "rebuild":
                    raise IndexDamagedError("; ".join(self.damaged.values()))
                yield self
                self._save()
            finally:
                self._writing = 0

    def refresh(self) -> bool:
        """Bring the in-memory indexes up to what is committed now: files another process saved
        are loaded, changes committed since are applied (in memory). True when anything
        changed. Cheap when nothing did: one small file read and one query."""
        with self._state:
            manifest = read_manifest(self.path / MANIFEST)
            if manifest.get("save_id") != self.manifest.get("save_id"):
                self.manifest, self.indexes, self._gpu = manifest, {}, {}
                self._dirty.clear()
                self.damaged.clear()
                self.repairs = []  # what the new files need, not what the old ones did
                self._load()
                return True
            seq = self.catalog.seq
            if seq == self.covered:
                return False
            for modality in MODALITIES:
                if modality in self.indexes:
                    self._catch_up(modality, self.covered, repair=False)
                elif self.catalog.count(modality):
                    self._rebuild(modality, self._factory_of(modality))
            self.covered = seq
            return True

    # -- keeping the files in step with the catalog ------------------------------------------

    def _load(self) -> None:
        """Load the index files the manifest names and catch up, in memory, with the catalog;
        a file that is missing, unreadable or miscounted is rebuilt from the stored vectors.
        Each repair is listed in `repairs` and is written by the next writer's save."""
        seq = self.catalog.seq
        covered = self.manifest.get("covered_seq")
        if covered is not None and covered > seq:
            # The files are newer than the catalog: it lost its last writes. Not their fault.
            self.repairs.append(
                f"{CATALOG} is older than the index files (its change counter is {seq}, the "
                f"files cover {covered}): its last writes were lost (a lost {CATALOG}-wal file, "
                "a restored backup?). The index files are rebuilt from it; ids given before are "
                "never given again"
            )
            for modality in MODALITIES:
                if self.catalog.count(modality):
                    self._rebuild(modality, self._factory_of(modality))
            self.covered = seq
            return
        for modality in MODALITIES:
            entry = self.manifest.get("indexes", {}).get(modality)
            stored = self.catalog.count(modality)
            entry_file = (entry or {}).get("template") or (entry or {}).get("file")
            file = self.path / (entry_file or f"{modality}.faiss")
            if entry is None or not file.exists():
                if self._manifest_moved():
                    return self._load()
                if stored:
                    why = "not in the manifest" if entry is None else "missing"
                    self._rebuild(modality, self._factory_of(modality), f"{file.name} {why}")
                continue
            damage = damage_of(self.path, entry)
            if damage and self._manifest_moved():
                return self._load()  # a writer replaced the files as we read the manifest
            if damage and entry.get("ondisk"):
                # Never mapped: a truncated .ivfdata would kill a search with SIGBUS.
                self.damaged[modality] = (
                    f"{damage}: the {modality} index cannot be searched; `e5v-search rebuild "
                    f"--index {self.path} --max-memory SIZE` rebuilds it from the catalog"
                )
                continue
            try:
                if damage:
                    raise ValueError(damage)
                self.indexes[modality] = segments.load(self.path, entry)  # mapped: O(1)
            except (RuntimeError, OSError, KeyError, ValueError) as error:
                if self._manifest_moved():
                    return self._load()
                self._rebuild(modality, self._factory_of(modality), f"unreadable ({error})")
                continue
            if covered is None:
                self._rebuild(
                    modality, self._factory_of(modality), "manifest has no change counter"
                )
            elif covered < seq:
                self._catch_up(modality, covered)
            held = self.indexes[modality].ntotal
            stored = self.catalog.count(modality)  # again: the catch-up read newer commits
            if held != stored:
                why = f"its files hold {held} vectors, the catalog {stored}"
                self._rebuild(modality, self._factory_of(modality), why)
        self.covered = seq
        for line in self.repairs:
            log.warning("%s: %s", self.path, line)

    def _manifest_moved(self) -> bool:
        """True, with the new manifest taken and the half-loaded state dropped, when a writer
        saved since this store read the manifest (the files it named may be gone)."""
        manifest = read_manifest(self.path / MANIFEST)
        if manifest.get("save_id") == self.manifest.get("save_id"):
            return False
        self.manifest, self.indexes, self._gpu, self.repairs = manifest, {}, {}, []
        self.damaged.clear()
        return True

    def _catch_up(self, modality: str, covered: int, repair: bool = True) -> None:
        gone = self.catalog.deleted_since(covered)[modality]
        changed = [chunk for chunk in self.catalog.iter_vectors(modality, since_seq=covered)]
        changed_ids = np.concatenate([c[0] for c in changed]) if changed else np.empty(0, np.int64)
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
        if repair:
            self.repairs.append(
                f"{modality} index missed changes (a crash before the index was saved?): "
                f"added {len(changed_ids)}, removed {len(gone)}"
            )

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
                fx.train(index, self.catalog.vectors(sample), factory)
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
            segments.write_ids(
                self.path / f"{name}.ids.npy", ondisk.build(index, chunks, self.path, name)
            )
            built = segments.open_segment(self.path, name, True, np.empty(0, dtype=np.int64))
            entry["ondisk"] = True
        else:
            for ids, vectors in chunks:
                fx.add(index, ids, vectors)
            built = segments.Segment("", index, np.sort(fx.ids_of(index)), written=False)
        self.indexes[modality] = segments.Segments(
            template, [built] if built.live else [], segments.emptied(template), bool(on_disk)
        )
        self.damaged.pop(modality, None)
        self._dirty.add(modality)
        self.manifest.setdefault("indexes", {})[modality] = entry
        if reason:
            self.repairs.append(f"{modality} index rebuilt from {count} stored vectors: {reason}")
        return {
            "modality": modality,
            "factory": factory,
            "vectors": count,
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
            names = self.indexes[modality].save(
                self.path, lambda kind, m=modality: self._new_name(m, kind)
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
        self.manifest.update(format=MANIFEST_FORMAT, factory=self.factory, covered_seq=seq,
                             next_id=next_id, saved_at=now(), save_id=uuid.uuid4().hex)  # fmt: skip
        write_json(self.path / MANIFEST, self.manifest)
        self.catalog.prune_deleted(seq)
        self._dirty.clear()
        self._remove_unused_files()

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
                    found.append((*self._search_one(mod, queries, k, where, params, among), mod))
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
                chosen, on_disk = current.get("factory", self.factory), bool(current.get("ondisk"))
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
            queries = self.catalog.vectors(query_ids)
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
            "catalog_bytes": (self.path / CATALOG).stat().st_size,
            "errors": len(self.catalog.errors()),
        }
