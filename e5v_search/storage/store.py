"""An index directory: the catalog (the source of truth) and one index per modality (its
sealed segments, delta and masks: segments.py), kept in step; the one way to write it. One
index per modality makes a modality-restricted search exact in count (10 images asked, 10
returned, even when images are 1% of the corpus). The jobs live beside this class: opening
(loading.py), the manifest (manifest.py), building and the type policy (rebuild.py), checks.

Many processes may use one directory (a server, a cron ingest, a rebuild). Writes happen inside
`writing()`, which holds the writer lock (locking.py), brings the indexes up to everything
committed (another writer's work, a killed writer's unsaved changes) and saves once, when the
outermost block ends. Opening writes nothing; `refresh()` follows what writers commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..closing import Closing
from ..config import HYBRID_WEIGHT, RRF_K, index_home
from ..errors import IndexBusyError, IndexDamagedError, IndexNotFoundError, InputError
from ..spec import Spec
from . import faiss_ops as fx
from . import loading, rebuild, segments
from .blobs import as_stored
from .catalog import MODALITIES, Catalog, now
from .integrity import catalog_damage
from .keywords import fuse, keyword_search, pooled
from .locking import CreationHold, WriterLock
from .manifest import DEFAULT_FACTORY
from .problems import write_error
from .search import Hit, check_request, recall, search
from .verify import verify

CATALOG = "catalog.sqlite"
log = logging.getLogger(__name__)


def _refuse_foreign(path: Path) -> Path | None:
    """Before an index is made at `path`: refuse a file, or a folder with files in it that is
    not an index (a photo folder); return the first folder that will be made (None: it exists),
    which closing removes again when nothing was committed."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not an index directory: give a folder or a name")
    if path.is_dir():
        if any(path.iterdir()):
            raise InputError(
                f"{path} is a folder with files in it but not an index: an index is made only "
                "in a new or empty folder. Give a name (--index NAME, kept in the index home) "
                "or another folder"
            )
        return None
    first = path
    while not first.parent.exists() and first.parent != first:
        first = first.parent
    return first


def _clear(folder: Path) -> None:
    """Remove what is in `folder`."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


class Store(Closing):
    def __init__(self, path: Path, catalog: Catalog, opened: loading.Opened):
        self.path = path
        self.catalog = catalog
        self._take(opened)
        self.lock_timeout: float | None = None
        self.on_wait = None  # told once when another writer holds the lock
        self.acknowledged: list[dict] = []  # losses a rebuild acknowledged (said once)
        self._writing = 0  # depth of nested writing() blocks
        self._state = threading.RLock()  # searches vs a refresh, in a threaded server
        self._need = 0  # bytes the write in progress needs (a full disk's message)
        self.created: Path | None = None  # the first folder this open made, until a commit
        self.hold: CreationHold | None = None  # while this open may create the index

    def _take(self, opened: loading.Opened) -> None:
        self.manifest = opened.manifest
        self.indexes = opened.indexes  # modality -> segments.Segments
        self.damaged = opened.damaged  # modality -> what is wrong and what fixes it
        self.repairs = opened.repairs
        self.covered = opened.covered  # the catalog change counter the indexes reflect
        self.lost = opened.lost  # commits the catalog lost, found now (commits.py)
        self._dirty = opened.dirty

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
        created = hold = None
        if not exists:
            created = _refuse_foreign(path)
            path.mkdir(parents=True, exist_ok=True)
            hold = CreationHold(path)  # before the catalog exists: no opener takes it as left
        try:
            try:
                catalog = loading.open_catalog(path, exists, lock_timeout, on_wait)
                store = cls(path, catalog, loading.open_indexes(path, catalog))
            except sqlite3.DatabaseError as error:
                raise IndexDamagedError(catalog_damage(path / CATALOG, error)) from error
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        store.lock_timeout, store.on_wait = lock_timeout, on_wait
        store.created, store.hold = created, hold
        if exists and store._left_behind():
            return cls.open(path, create, lock_timeout, on_wait)  # it is gone: create or say
        if exists and create:  # one of its creators too: no other removes it while this is open
            store.hold = CreationHold(path)
        for line in store.repairs:
            log.warning("%s: %s", path, line)
        return store

    def _left_behind(self) -> bool:
        """Remove this index when a creator that died before its first commit left it (nothing
        committed, no creator holding it, no writer) and say whether it was removed."""
        if not self._nothing_committed() or not os.access(self.path, os.W_OK):
            return False
        with contextlib.suppress(IndexBusyError), WriterLock(self.path, "removal", 0):
            if not CreationHold.held(self.path) and self._nothing_committed():
                log.warning(
                    "%s: removed the empty index a first ingest left when it stopped before "
                    "its first commit",
                    self.path,
                )
                self.catalog.close()
                self._remove_created()
                return not (self.path / CATALOG).exists()
        return False

    def close(self) -> None:
        """Close the catalog; an index this open may create (create=True) that nothing was
        committed to (a first ingest that failed or found nothing) is removed with the folders
        made for it, unless another process opened it to create it too."""
        try:
            if self.hold is not None and self.path.is_dir():
                with contextlib.suppress(IndexBusyError):  # another process is writing it
                    with WriterLock(self.path, "removal", 0):
                        if self._nothing_committed() and self.hold.alone():
                            self.catalog.close()
                            self._remove_created()
            self.created = None
        finally:
            self.catalog.close()
            if self.hold is not None:
                self.hold.release()
                self.hold = None

    def _nothing_committed(self) -> bool:
        """No item, no error, no commit, and no folder made inside (an evaluation's gallery)."""
        catalog = self.catalog
        if catalog.seq or catalog.count() or catalog.errors():
            return False
        return not any(entry.is_dir() for entry in self.path.iterdir())

    def _remove_created(self) -> None:
        """This index's files; then its folder and the folders made for it, if this open made
        them, while they are empty (a folder given empty is left empty)."""
        _clear(self.path)
        if self.created is None:
            if self.path.parent == index_home():  # a named index's folder is ours
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            return
        with contextlib.suppress(OSError):
            self.path.rmdir()
        folder = self.path
        while folder != self.created and self.created in folder.parents:
            folder = folder.parent
            with contextlib.suppress(OSError):  # another index appeared beside it
                folder.rmdir()

    @property
    def factory(self) -> str:
        return self.manifest.factory

    @property
    def save_id(self) -> str | None:
        """Changes with every save of any process: what a reader compares to see new files."""
        return self.manifest.save_id

    # -- many processes: the writer lock, refresh -----------------------------------------------

    @contextmanager
    def writing(self, purpose: str = "write"):
        """Hold the writer lock for the block (nested blocks share it). On entry the indexes
        catch up with every committed change; when the outermost block succeeds the changed
        files are saved, once. On an error nothing is saved: the next writer catches up from
        the catalog. A full disk or read-only media end it with one IndexWriteError."""
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
                    loading.take_over(self, purpose)
                    yield self
                    self._save()
            finally:
                self._writing, self._need = 0, 0

    @contextmanager
    def _write_errors(self):
        try:
            yield
        except (sqlite3.OperationalError, OSError, RuntimeError) as error:
            refused = write_error(self.path, self.catalog.count() or 0, self._need, error)
            if refused is None:
                raise
            raise refused from error

    def refresh(self) -> bool:
        """Bring the in-memory indexes up to what is committed now: files another process saved
        are loaded, changes committed since are applied (in memory). True when anything
        changed. Cheap when nothing did: one small file read and one query."""
        with self._state:
            if loading.moved(self.path, self.manifest):
                self._take(loading.open_indexes(self.path, self.catalog))
                return True
            if self.catalog.seq == self.covered:
                return False
            loading.follow(self)
            return True

    # -- saving ----------------------------------------------------------------------------

    def save(self) -> None:
        """Inside a `writing()` block: nothing now, the block saves when it ends (one save, one
        generation per write). Outside one: take the lock and save."""
        if not self._writing:
            with self.writing("save"):
                pass

    def _save(self) -> None:
        manifest = self.manifest
        manifest.save_files(self.path, self.indexes, self._dirty)
        manifest.covered_seq = self.covered
        manifest.next_id = max(self.catalog.next_id, manifest.next_id)
        manifest.saved_at, manifest.save_id = now(), uuid.uuid4().hex
        manifest.write(self.path)
        self.catalog.set_shape(manifest.shape())
        self.catalog.prune_deleted(self.covered)
        self._dirty.clear()
        manifest.remove_unused(self.path, MODALITIES)

    def drop_index(self, modality: str) -> None:
        self.indexes.pop(modality, None)

    def install(self, built: rebuild.Built) -> None:
        """A rebuilt index in place of the old one, saved with the block."""
        self.indexes[built.modality] = built.index
        self.manifest.indexes[built.modality] = built.entry
        self.damaged.pop(built.modality, None)
        self._dirty.add(built.modality)
        if built.repair:
            self.repairs.append(built.repair)

    # -- writes ------------------------------------------------------------------------------

    def add(self, items: list[dict], vectors: np.ndarray, spec: Spec) -> list[int]:
        """Commit items and vectors to the catalog, then add them to the in-memory indexes
        (saved when the outermost `writing()` block ends)."""
        with self.writing("add"):
            ids = np.array(self.catalog.add(items, vectors, spec), dtype=np.int64)
            vectors = as_stored(vectors, spec)
            self._need = vectors.nbytes
            modalities = np.array([item["modality"] for item in items])
            for modality in MODALITIES:
                mask = modalities == modality
                if mask.any():
                    self._index_for(modality).add(ids[mask], vectors[mask])
                    self.changed(modality)
            self.covered = self.catalog.seq
            return ids.tolist()

    def update(self, ids: list[int], items: list[dict], vectors: np.ndarray, spec: Spec) -> None:
        with self.writing("update"):
            self.catalog.update(ids, items, vectors, spec)
            modality_of = {int(i): item["modality"] for i, item in zip(ids, items, strict=True)}
            self._reindex(np.array(ids, dtype=np.int64), modality_of, as_stored(vectors, spec))
            self.covered = self.catalog.seq

    def delete(self, ids) -> int:
        with self.writing("delete"):
            ids = np.array([int(i) for i in ids], dtype=np.int64)
            modality_of = {r["id"]: r["modality"] for r in self.catalog.get(ids)}
            removed = self.catalog.delete(ids)
            self._reindex(ids, modality_of)
            self.covered = self.catalog.seq
            return removed

    def delete_where(self, where: str, params=()) -> int:
        return self.delete(self.catalog.ids(where=where, params=params))

    def delete_source_prefix(self, prefix: str) -> int:
        return self.delete_where("substr(source, 1, ?) = ?", (len(prefix), prefix))

    def _reindex(self, ids: np.ndarray, modality_of: dict, vectors=None) -> None:
        """Take `ids` out of their modality's index, and with `vectors` put their new ones in
        (an index type that cannot remove is rebuilt from the catalog instead)."""
        for modality in MODALITIES:
            mask = np.array([modality_of.get(int(i)) == modality for i in ids], dtype=bool)
            if not mask.any():
                continue
            self.manifest.entry(modality).skip(resolved=ids[mask])
            if modality in self.indexes:
                index = self.indexes[modality]
                if not index.remove(ids[mask]):
                    rebuild.rebuild_as_before(self, modality)
                elif vectors is not None:
                    index.add(ids[mask], vectors[mask])
                self.changed(modality)

    def _index_for(self, modality: str) -> segments.Segments:
        if modality not in self.indexes:
            factory = self.factory
            index = fx.make(factory, self.catalog.dim)
            if not index.is_trained:
                # A trained type cannot take its first vectors untrained: exact until rebuilt.
                factory, index = DEFAULT_FACTORY, fx.make(DEFAULT_FACTORY, self.catalog.dim)
            self.indexes[modality] = segments.Segments.new(index)
            self.manifest.entry(modality).factory = factory
        return self.indexes[modality]

    def changed(self, modality: str) -> None:
        self._dirty.add(modality)

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
        never by cutting its results (search.search)."""
        with self._state:
            return search(self, queries, k, modality, where, params, among)

    def search_keywords(self, text: str, k: int = 10, modality=None, where=None, params=()):
        """Top-k hits for the words of `text` by BM25 (keywords.py; score: -bm25), of one
        modality or both, among the items `where` selects."""
        check_request(k, modality)
        with self._state:
            return keyword_search(self.catalog, text, k, modality, where, params)

    def search_hybrid(
        self,
        query: np.ndarray,
        text: str,
        k: int = 10,
        modality=None,
        where=None,
        params=(),
        weight: float = HYBRID_WEIGHT,
        rrf_k: int = RRF_K,
    ) -> list[Hit]:
        """Top-k hits of the vector and the keyword rankings fused (keywords.fuse) over the
        candidates both sides pooled under the same filter (keywords.pooled); `weight` is the
        vector side's share."""
        if not 0.0 <= float(weight) <= 1.0:
            raise InputError(f"the hybrid weight must be between 0 and 1, got {weight}")
        if int(rrf_k) < 1:
            raise InputError(f"the fusion's k (rrf_k) must be at least 1, got {rrf_k}")
        with self._state:
            vector, words = pooled(self, query, text, k, modality, where, params)
        return fuse(vector, words, k, float(weight), int(rrf_k))

    # -- maintenance -------------------------------------------------------------------------

    def rebuild(
        self, factory=None, nprobe=None, ef_search=None, max_memory=None, rerank=None, say=None
    ) -> list[dict]:
        """Under the writer lock: every modality rebuilt from the stored vectors (see
        rebuild.rebuild), `say(line)` hearing its phases; saved, then each index's size
        measured."""
        with self.writing("rebuild"):
            stats = rebuild.rebuild(self, factory, nprobe, ef_search, max_memory, rerank, say)
        for entry in stats:  # saved now: their sizes
            files = self.manifest.indexes[entry["modality"]].paths(self.path)
            entry["bytes"] = sum(p.stat().st_size for p in files)
        return stats

    def follow_policy(self, budget: int, say=None) -> list[str]:
        """Each modality given the type `budget` calls for (rebuild.follow_policy), `say(line)`
        hearing the phases of each switch."""
        with self.writing("ingest"):
            return rebuild.follow_policy(self, budget, say)

    def recall(self, k: int = 10, sample: int = 200, seed: int = 0) -> dict[str, float]:
        """recall@k of each modality's index against exact search (search.recall)."""
        return recall(self, k, sample, seed)

    def verify(self) -> dict:
        """Every byte of the directory against what was recorded at writing (verify.py)."""
        with self._state:
            return verify(self)

    def repair(self) -> list[str]:
        """Under the writer lock: verify, then mend what it found (rebuild.repair)."""
        with self.writing("repair"):
            return rebuild.repair(self, verify(self))

    def info(self) -> dict:
        entries = self.manifest.indexes
        return {
            "path": str(self.path),
            "generation": self.save_id,  # of the files in use (changes at every save)
            "covered_seq": self.covered,  # the catalog changes they reflect, in memory
            "spec": self.catalog.spec(),
            "model_repairs": self.catalog.model_repairs(),
            "counts": {m: self.catalog.count(m) for m in MODALITIES},
            "factory": self.factory,
            "indexes": {
                m: segments.describe(index, entries[m], self.path)
                for m, index in self.indexes.items()
            },
            "damaged": dict(self.damaged),
            "lost": [*self.catalog.lost(), *([self.lost] if self.lost else [])],
            # changes committed and not yet in the files (an ingest running, or one killed)
            "unsaved_changes": self.catalog.seq - (self.manifest.covered_seq or 0),
            "skipped_rows": {m: e.skipped for m, e in entries.items() if e.skipped},
            "catalog_bytes": (self.path / CATALOG).stat().st_size,
            "errors": len(self.catalog.errors()),
        }
