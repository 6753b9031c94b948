"""Segments: one modality's index as immutable sealed segments plus one small mutable delta, so
a save writes what changed, never the whole index (as Lucene, Qdrant or LanceDB keep theirs).

    <modality>.t<N>.faiss      the template: the trained structure, no vectors (quantizer,
                               rotation, codebooks; for Flat, next to nothing)
    <modality>.s<N>.faiss      a sealed segment, read mapped; on disk (IVF past RAM) its lists
    <modality>.s<N>.ivfdata    are in .ivfdata, paged in by the OS as searches touch them
    <modality>.s<N>.ids.npy    the sorted ids it holds (mapped: membership without reading it)
    <modality>.d<N>.faiss|npz  the delta: items added or updated since the last seal, stored
                               as the template stores them (an IVF delta as its lists' codes)
    <modality>.m<N>.npz        per segment, the ids deleted or updated since it was sealed

The segments and the delta share the template's trained structure, so a vector is stored the
same way wherever it lives: searching each segment (masked ids excluded inside FAISS) and
merging by score (faiss_ops.top_k) equals searching one index of the same vectors. A written file
is never changed: a save writes the delta and the masks under new names, the manifest then names
them, and files it no longer names are removed after it, so a crash anywhere leaves the last
manifest's files whole (the catalog's later commits are caught up on open).

When the delta passes SEAL_BYTES it is sealed: written as a new segment, O(delta). Then the
newest segment is merged with the one before it while it is at least half that one's size and
the two stay under MERGE_MAX_BYTES (size-tiered, as Lucene merges); a merge drops masked ids,
and a segment more than half masked is rewritten alone. So N vectors make O(log N) segments and
each vector is rewritten O(log N) times, in pieces of at most MERGE_MAX_BYTES: a save's memory
and time stay bounded however large the collection grows.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist, get_invlist_sizes

from ..errors import IndexDamagedError
from ..files import write_bytes
from . import faiss_ops as fx
from . import ondisk
from .integrity import digest_damage

SEAL_BYTES = 64 * 2**20
MERGE_MAX_BYTES = 256 * 2**20
MASKED_SHARE = 0.5
FAILPOINT = "E5V_FAILPOINT"  # crash tests stop a writer at a named point (see failpoint)
NO_IDS = np.empty(0, dtype=np.int64)


@dataclass
class Segment:
    name: str  # file stem, e.g. image.s12
    index: object
    ids: np.ndarray  # sorted
    masked: np.ndarray = field(default_factory=lambda: NO_IDS)
    written: bool = True
    ids_written: bool = True

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.masked)


class Segments:
    """Sealed segments, a delta and the template: one modality's index, searched and changed
    through its own methods (search, add, remove, ids, set_search)."""

    def __init__(self, template, sealed: list[Segment], delta, ondisk: bool, template_name=None):
        self.template = template
        self.template_name = template_name  # None until written
        self.sealed = sealed
        self.delta = delta
        self.ondisk = ondisk
        self.delta_name = "the delta in memory"  # the file it was read from, once it is
        self.score_bound = 1.01  # see score_bound(); the Store sets it from the type

    @classmethod
    def new(cls, template, ondisk: bool = False) -> Segments:
        return cls(template, [], emptied(template), ondisk)

    @property
    def ntotal(self) -> int:
        return sum(s.live for s in self.sealed) + int(self.delta.ntotal)

    @property
    def mapped(self) -> bool:
        return any(s.written for s in self.sealed)

    def add(self, ids, vectors) -> None:
        fx.add(self.delta, ids, vectors)

    def remove(self, ids) -> bool:
        """Remove from the delta; mask in the segments that hold them (never rewritten here).
        False when the type cannot remove (HNSW): the caller rebuilds."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not fx.remove(self.delta, ids):
            return False
        for segment in self.sealed:
            held = ids[_holds(segment.ids, ids)]
            if len(held):
                segment.masked = np.union1d(segment.masked, held)
        return True

    def search(self, queries, k: int, among=None):
        """Each segment and the delta searched, their answers checked (a score no index of
        unit vectors gives, or an id the segment does not hold, is damage: IndexDamagedError
        naming the file, before anything is served), merged by score."""
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        parts = []
        for segment in self.sealed:
            parts.append(_search_segment(segment, queries, k, among))
            self._check(parts[-1], norms, segment)
        parts.append(fx.search(self.delta, queries, k, among=among))
        self._check(parts[-1], norms, None)
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        return fx.top_k(scores, np.concatenate([p[1] for p in parts], axis=1), k)

    def _check(self, part, norms, segment: Segment | None) -> None:
        scores, ids = part
        found = ids >= 0
        bound = self.score_bound * norms + 1e-6
        bad = found & ~(np.abs(np.nan_to_num(scores, nan=np.inf)) <= bound)
        if segment is not None and found.any() and not bad.any():
            held = _holds(segment.ids, ids[found])
            if not held.all():
                missing = ids[found][~held][0]
                raise IndexDamagedError(
                    f"{self._file_of(segment)} is damaged: a search returned id {missing}, "
                    "which it does not hold"
                )
        if bad.any():
            where = self._file_of(segment) if segment is not None else self.delta_name
            raise IndexDamagedError(
                f"{where} is damaged: a search scored {scores[bad][0]:.4g} on unit vectors "
                f"(at most {self.score_bound:g} times the query's length is possible)"
            )

    def _file_of(self, segment: Segment) -> str:
        return f"{segment.name}.ivfdata" if self.ondisk else f"{segment.name}.faiss"

    def ids(self) -> np.ndarray:
        live = [np.setdiff1d(s.ids, s.masked, assume_unique=True) for s in self.sealed]
        return np.concatenate([*live, fx.ids_of(self.delta)]).astype(np.int64)

    def set_search(self, nprobe=None, ef_search=None) -> None:
        for index in [self.template, self.delta, *(s.index for s in self.sealed)]:
            fx.set_search_defaults(index, nprobe, ef_search)

    def search_settings(self) -> dict:
        return fx.search_settings(self.template)

    # -- saving: seal, merge, write ------------------------------------------------------------

    def save(self, folder: Path, new_name, records: dict | None = None) -> dict:
        """Seal and merge as the module says, write what is not written yet (the template, new
        segments, ids of segments loaded from an older layout), then the delta and the masks
        under new names. `new_name(kind)` gives a fresh file stem; `records` (the manifest's
        file records) let a merge check every byte of the segments it reads first, so damage
        is never copied into a new segment with a fresh checksum. Returns the manifest entry's
        part that names the files."""
        if self.template_name is None:
            self.template_name = new_name("t")
            fx.save(self.template, folder / f"{self.template_name}.faiss")
        for segment in list(self.sealed):
            if not segment.written:
                self._replace([segment], self._write(folder, new_name("s"), segment.index))
            elif not segment.ids_written:
                write_ids(folder / f"{segment.name}.ids.npy", segment.ids)
                segment.ids_written = True
        if self.delta.ntotal and self.delta.ntotal * self._vector_bytes() >= SEAL_BYTES:
            self.sealed.append(self._write(folder, new_name("s"), self.delta))
            self.delta = emptied(self.template)
            failpoint("sealed")
        while chosen := self._to_merge():
            for segment in chosen:
                _check_whole(folder, segment, self.ondisk, records or {})
            merged = self._merged(chosen)
            written = self._write(folder, new_name("s"), merged) if merged.ntotal else None
            self._replace(chosen, written)
            failpoint("merged")
        delta = new_name("d")
        if fx.ivf_of(self.delta) is not None:
            delta += ".npz"
            write_bytes(folder / delta, lambda f: np.savez(f, **_lists_of(self.delta)))
        else:
            delta += ".faiss"
            fx.save(self.delta, folder / delta)
        masks = new_name("m") + ".npz"
        arrays = {s.name: np.asarray(s.masked, dtype=np.int64) for s in self.sealed}
        write_bytes(folder / masks, lambda f: np.savez(f, **arrays))
        self.delta_name = delta
        return {
            "template": f"{self.template_name}.faiss",
            "segments": [s.name for s in self.sealed],
            "delta": delta,
            "masks": masks,
        }

    def _vector_bytes(self) -> int:
        return vector_bytes(self.template)

    def _to_merge(self) -> list[Segment]:
        if fx.hnsw_of(self.template) is not None:
            return []  # FAISS cannot merge graphs (nor remove from them): a rebuild does
        for segment in self.sealed:
            if len(segment.masked) > MASKED_SHARE * len(segment.ids):
                return [segment]
        if len(self.sealed) >= 2:
            older, newer = self.sealed[-2:]
            size = self._vector_bytes()
            if 2 * newer.live >= older.live and (older.live + newer.live) * size <= MERGE_MAX_BYTES:
                return [older, newer]
        return []

    def _merged(self, segments: list[Segment]):
        """One in-memory index of the segments' live vectors, codes copied as they are."""
        out = emptied(self.template)
        if fx.ivf_of(out) is None:
            for segment in segments:
                part = fx.owned(segment.index)
                fx.remove(part, np.asarray(segment.masked, dtype=np.int64))
                out.merge_from(part)
            return out
        for segment in segments:
            lists = fx.ivf_of(segment.index).invlists
            for number in np.flatnonzero(get_invlist_sizes(lists)):
                ids, codes = get_invlist(lists, int(number))
                keep = ~_holds(segment.masked, ids)
                _add_entries(out, int(number), ids[keep], codes[keep])
        return out

    def _write(self, folder: Path, name: str, index) -> Segment:
        """Write `index` as a sealed segment and return it read back (mapped, or on disk)."""
        ids = np.sort(fx.ids_of(index))
        if self.ondisk:
            _write_ondisk(index, emptied(self.template), folder, name)
        else:
            fx.save(index, folder / f"{name}.faiss")
        write_ids(folder / f"{name}.ids.npy", ids)
        return open_segment(folder, name, self.ondisk, NO_IDS)

    def _replace(self, old: list[Segment], new: Segment | None) -> None:
        at = self.sealed.index(old[0])
        self.sealed = [s for s in self.sealed if not any(s is o for o in old)]
        if new is not None:
            self.sealed.insert(at, new)


def describe(index: Segments, entry, folder: Path) -> dict:
    """What `info` says of one modality's index (entry: its manifest.IndexEntry)."""
    return {
        "factory": entry.factory,
        "vectors": int(index.ntotal),
        "bytes": sum(p.stat().st_size for p in entry.paths(folder)),
        "on_disk": entry.ondisk,
        "mapped": index.mapped,  # read from its files as searches need
        "segments": len(index.sealed),
        "delta": int(index.delta.ntotal),
        "rerank": entry.rerank,
        "chosen_by": entry.chosen_by or "policy",
        "reason": entry.reason,
        **index.search_settings(),
    }


def vector_bytes(template) -> int:
    """What one vector takes in an index of this trained structure (code, id, overhead)."""
    ivf = fx.ivf_of(template)
    if ivf is not None:
        return int(ivf.code_size) + 8
    inner = faiss.downcast_index(getattr(template, "index", template))
    try:
        return int(inner.sa_code_size()) + 24
    except RuntimeError:  # HNSW: its vectors plus its graph
        return 4 * int(template.d) + 24 + 256


def score_bound(factory: str) -> float:
    """The largest |score| / |query| a whole index of unit vectors can give: exactly stored
    vectors (Flat, HNSW, IVF-Flat, SQfp16) 1 + 1e-2 (float16 rounding, sums); compressed codes
    (SQ8, SQ4, PQ) 1.5, a wide margin over the 1.05 measured on SQ4 and PQ8 at 64-d. Anything
    above, or not finite, is damage (a flipped exponent bit gives 1e23), never a result."""
    return 1.5 if re.search(r"PQ\d|SQ[468]|RQ|LSQ", factory) else 1.01


def open_segment(folder: Path, name: str, ondisk: bool, masked: np.ndarray) -> Segment:
    file = str(folder / f"{name}.faiss")
    if ondisk:
        with fx.native_output():  # "updating ondisk filename" lines
            index = faiss.read_index(file, faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        index = fx.load(Path(file), mmap=True)  # never changed: mapped for writers too
    ids = np.load(folder / f"{name}.ids.npy", mmap_mode="r")
    return Segment(name, index, ids, np.asarray(masked, dtype=np.int64))


def load(folder: Path, entry) -> Segments:
    """The segments, delta and masks a manifest entry (manifest.IndexEntry) names; an entry
    saved before segments is read by older.py, once, and converted by the next save."""
    if not entry.template:
        from .older import load_older

        return load_older(folder, entry)
    for name in (entry.template, entry.delta, entry.masks):  # read whole: checked whole
        damage = digest_damage(folder, name, entry.files.get(name))
        if damage:
            raise ValueError(damage)
    template = fx.load(folder / entry.template)
    with np.load(folder / entry.masks) as masks:
        sealed = [
            open_segment(folder, name, entry.ondisk, masks[name] if name in masks else NO_IDS)
            for name in entry.segments
        ]
    if entry.delta.endswith(".npz"):
        delta = fx.load(folder / entry.template)  # read again: cheaper than a copy
        with np.load(folder / entry.delta) as data:
            fill(delta, data["lists"], data["sizes"], data["ids"], data["codes"])
    else:
        delta = fx.load(folder / entry.delta)
    name = entry.template.removesuffix(".faiss")
    segments = Segments(template, sealed, delta, entry.ondisk, template_name=name)
    segments.delta_name = entry.delta
    segments.set_search(entry.search.get("nprobe"), entry.search.get("ef_search"))
    return segments


def failpoint(name: str) -> None:
    """Where crash tests kill a writer: with E5V_FAILPOINT=name the process says so on stderr
    and waits to be killed (SIGKILL), between writing new files and the manifest."""
    if os.environ.get(FAILPOINT) == name:
        print(f"failpoint {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


def _check_whole(folder: Path, segment: Segment, ondisk: bool, records: dict) -> None:
    names = [f"{segment.name}.faiss", f"{segment.name}.ids.npy"]
    for name in names + ([f"{segment.name}.ivfdata"] if ondisk else []):
        damage = digest_damage(folder, name, records.get(name))
        if damage:
            raise IndexDamagedError(f"{damage}: not merged")


def _holds(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of `ids` are in `sorted_ids` (a binary search: a mapped array stays on disk)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[at] == ids)


def _search_segment(segment: Segment, queries, k: int, among):
    if among is not None:
        return fx.search(segment.index, queries, k, among=np.setdiff1d(among, segment.masked))
    if not len(segment.masked):
        return fx.search(segment.index, queries, k)
    excluded = faiss.IDSelectorNot(faiss.IDSelectorBatch(segment.masked))
    return fx.search(segment.index, queries, k, selector=excluded)


def emptied(index):
    """A copy of the trained structure with no vectors, its lists (IVF) in memory."""
    empty = fx.owned(index)  # not clone_index: its Flat copy is another type to merge_from
    empty.reset()
    return empty


def write_ids(path: Path, ids: np.ndarray) -> None:
    write_bytes(path, lambda f: np.save(f, np.asarray(ids, dtype=np.int64)))


def _write_ondisk(index, empty, folder: Path, name: str) -> None:
    """An IVF index in memory written as a base file and its lists' .ivfdata file."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=name + ".shards.") as tmp:
        shard = str(Path(tmp) / "0.index")
        faiss.write_index(index, shard)
        ondisk.write_lists(empty, [shard], folder, name)


def _lists_of(delta) -> dict[str, np.ndarray]:
    """The delta's non-empty lists: their numbers and sizes, and all ids and codes in order."""
    invlists = fx.ivf_of(delta).invlists
    sizes = get_invlist_sizes(invlists)
    numbers = np.flatnonzero(sizes)
    lists = [get_invlist(invlists, int(i)) for i in numbers]
    return {
        "lists": numbers.astype(np.int64),
        "sizes": sizes[numbers].astype(np.int64),
        "ids": np.concatenate([i for i, _ in lists]) if lists else np.empty(0, np.int64),
        "codes": np.concatenate([c.ravel() for _, c in lists]) if lists else np.empty(0, np.uint8),
    }


def fill(delta, numbers, sizes, ids, codes) -> None:
    """Lists (numbers, sizes, and all their ids and codes in order) into an IVF index."""
    code_size, start = fx.ivf_of(delta).code_size, 0
    for number, size in zip(numbers, sizes, strict=True):
        _add_entries(
            delta,
            int(number),
            ids[start : start + size],
            codes[start * code_size : (start + size) * code_size],
        )
        start += int(size)


def _add_entries(index, number: int, ids: np.ndarray, codes: np.ndarray) -> None:
    """Append ids and codes to one list of an IVF index (wrapped or not) in memory."""
    if not len(ids):
        return
    ivf = fx.ivf_of(index)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ivf.invlists.add_entries(number, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    ivf.ntotal += len(ids)
    index.ntotal = ivf.ntotal  # an OPQ rotation wraps the IVF index: both count
