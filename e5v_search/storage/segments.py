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

from ..errors import IndexDamagedError
from ..files import write_bytes
from . import faiss_ops as fx
from . import ondisk
from .integrity import digest_damage

SEAL_BYTES = 64 * 2**20
MERGE_MAX_BYTES = 256 * 2**20
MASKED_SHARE = 0.5
FAILPOINT = "E5V_FAILPOINT"  # crash tests stop a writer at a named point (see failpoint)
_NO_IDS = np.empty(0, dtype=np.int64)


@dataclass
class Segment:
    name: str  # file stem, e.g. image.s12
    index: object
    ids: np.ndarray  # sorted
    masked: np.ndarray = field(default_factory=lambda: _NO_IDS)
    written: bool = True
    ids_written: bool = True

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.masked)


class Segments:
    """Sealed segments, a delta and the template, searched and changed as one FAISS index."""

    is_trained = True

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

    def add_with_ids(self, vectors, ids) -> None:
        self.delta.add_with_ids(vectors, ids)

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

    def search_among(self, queries, k: int, among=None):
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

    def search(self, queries, k: int, params=None):
        return self.search_among(queries, k)

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
        if fx._ivf(self.delta) is not None:
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
        if fx._hnsw(self.template) is not None:
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
        if fx._ivf(out) is None:
            for segment in segments:
                part = fx.owned(segment.index)
                fx.remove(part, np.asarray(segment.masked, dtype=np.int64))
                out.merge_from(part)
            return out
        for segment in segments:
            lists = fx._ivf(segment.index).invlists
            for number in range(lists.nlist):
                size = lists.list_size(number)
                if not size:
                    continue
                ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
                codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
                keep = ~_holds(segment.masked, ids)
                _add_entries(out, number, ids[keep], codes.reshape(size, -1)[keep])
        return out

    def _write(self, folder: Path, name: str, index) -> Segment:
        """Write `index` as a sealed segment and return it read back (mapped, or on disk)."""
        ids = np.sort(fx.ids_of(index))
        if self.ondisk:
            _write_ondisk(index, emptied(self.template), folder, name)
        else:
            fx.save(index, folder / f"{name}.faiss")
        write_ids(folder / f"{name}.ids.npy", ids)
        return open_segment(folder, name, self.ondisk, _NO_IDS)

    def _replace(self, old: list[Segment], new: Segment | None) -> None:
        at = self.sealed.index(old[0])
        self.sealed = [s for s in self.sealed if not any(s is o for o in old)]
        if new is not None:
            self.sealed.insert(at, new)


def vector_bytes(template) -> int:
    """What one vector takes in an index of this trained structure (code, id, overhead)."""
    ivf = fx._ivf(template)
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
        with fx._native_stderr(), fx._native_stdout():  # "updating ondisk filename" lines
            index = faiss.read_index(file, faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        index = fx.load(Path(file), mmap=True)  # never changed: mapped for writers too
    ids = np.load(folder / f"{name}.ids.npy", mmap_mode="r")
    return Segment(name, index, ids, np.asarray(masked, dtype=np.int64))


def load(folder: Path, entry: dict) -> Segments:
    """The segments, delta and masks a manifest entry names; an entry written before segments
    (one file, or an on-disk base with a delta and a mask) is read as one segment."""
    if "segments" not in entry:
        return _load_older(folder, entry)
    ondisk = bool(entry.get("ondisk"))
    records = entry.get("files") or {}
    for name in (entry["template"], entry["delta"], entry["masks"]):  # read whole: checked whole
        damage = digest_damage(folder, name, records.get(name))
        if damage:
            raise ValueError(damage)
    template = fx.load(folder / entry["template"])
    with np.load(folder / entry["masks"]) as masks:
        sealed = [
            open_segment(folder, name, ondisk, masks[name] if name in masks else _NO_IDS)
            for name in entry["segments"]
        ]
    if entry["delta"].endswith(".npz"):
        delta = fx.load(folder / entry["template"])  # read again: cheaper than a copy
        with np.load(folder / entry["delta"]) as data:
            _fill(delta, data["lists"], data["sizes"], data["ids"], data["codes"])
    else:
        delta = fx.load(folder / entry["delta"])
    name = entry["template"].removesuffix(".faiss")
    segments = Segments(template, sealed, delta, ondisk, template_name=name)
    segments.delta_name = entry["delta"]
    settings = entry.get("search") or {}
    segments.set_search(settings.get("nprobe"), settings.get("ef_search"))
    return segments


def _load_older(folder: Path, entry: dict) -> Segments:
    """One file (`image.faiss`), or an on-disk base `image.g<N>.faiss` with `.delta.npz` (or a
    Flat `.delta.faiss`) and `.masked.npy`: the file becomes the first segment, as it is."""
    file = folder / entry["file"]
    stem = file.name.removesuffix(".faiss")
    ondisk = bool(entry.get("ondisk"))
    if ondisk:
        with fx._native_stderr(), fx._native_stdout():
            index = faiss.read_index(str(file), faiss.IO_FLAG_ONDISK_SAME_DIR)
        template = _template_of(file)
    else:
        index = fx.load(file, mmap=True)
        template = emptied(fx.owned(index))  # once: the next save writes a template file
    mask_file = folder / f"{stem}.masked.npy"
    masked = np.load(mask_file) if mask_file.exists() else _NO_IDS
    segment = Segment(stem, index, np.sort(fx.ids_of(index)), masked, ids_written=False)
    delta = emptied(template)
    if (folder / f"{stem}.delta.npz").exists():
        with np.load(folder / f"{stem}.delta.npz") as data:
            _fill(delta, data["lists"], data["sizes"], data["ids"], data["codes"])
    if (folder / f"{stem}.delta.faiss").exists():  # a Flat delta, before deltas were compressed
        flat = fx.load(folder / f"{stem}.delta.faiss")
        ids = fx.ids_of(flat)
        fx.add(delta, ids, flat.reconstruct_batch(ids))
    return Segments(template, [segment], delta, ondisk)


def files_of(folder: Path, entry: dict) -> list[Path]:
    """Every file an index entry uses (for its manifest record, sizes and clean-up)."""
    if "segments" in entry:
        names = [entry["template"], entry["delta"], entry["masks"]]
        for stem in entry["segments"]:
            names += [f"{stem}.faiss", f"{stem}.ids.npy"]
            if entry.get("ondisk"):
                names.append(f"{stem}.ivfdata")
    else:
        file = entry.get("file", "")
        stem = file.removesuffix(".faiss")
        names = [file] if file else []
        if entry.get("ondisk"):
            names += [f"{stem}.{s}" for s in ("ivfdata", "delta.npz", "delta.faiss", "masked.npy")]
    return [folder / name for name in names if (folder / name).exists()]


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


def _template_of(base_file: Path):
    """An on-disk base's trained structure, its lists left on disk unread."""
    with fx._native_stderr(), fx._native_stdout():
        template = faiss.read_index(str(base_file), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = fx._ivf(template)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns and frees it now, not Python
    ivf.ntotal = template.ntotal = 0
    return template


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
    invlists = fx._ivf(delta).invlists
    numbers = [i for i in range(invlists.nlist) if invlists.list_size(i)]
    sizes = [invlists.list_size(i) for i in numbers]
    code_size = invlists.code_size

    def gather(get, width, dtype):
        parts = [
            faiss.rev_swig_ptr(get(i), n * width).copy()
            for i, n in zip(numbers, sizes, strict=True)
        ]
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    return {
        "lists": np.array(numbers, dtype=np.int64),
        "sizes": np.array(sizes, dtype=np.int64),
        "ids": gather(invlists.get_ids, 1, np.int64),
        "codes": gather(invlists.get_codes, code_size, np.uint8),
    }


def _fill(delta, numbers, sizes, ids, codes) -> None:
    code_size, start = fx._ivf(delta).code_size, 0
    for number, size in zip(numbers, sizes, strict=True):
        _add_entries(delta, int(number), ids[start : start + size],
                     codes[start * code_size : (start + size) * code_size])  # fmt: skip
        start += int(size)


def _add_entries(index, number: int, ids: np.ndarray, codes: np.ndarray) -> None:
    """Append ids and codes to one list of an IVF index (wrapped or not) in memory."""
    if not len(ids):
        return
    ivf = fx._ivf(index)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ivf.invlists.add_entries(number, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    ivf.ntotal += len(ids)
    index.ntotal = ivf.ntotal  # an OPQ rotation wraps the IVF index: both count
