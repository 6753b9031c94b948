"""Indexes past RAM: choosing an index type for a memory budget, building an IVF index shard by
shard with its inverted lists merged on disk, and keeping such an index current without
rewriting it.

An on-disk index is an immutable base (`<modality>.g<N>.faiss` + `.ivfdata`, the lists paged in
by the OS) plus, for what changed since it was built, a delta (new and updated items) and a mask
(ids removed from, or updated in, the base). The delta is an empty copy of the base's trained
structure (the same coarse quantizer, rotation and codebooks), so new vectors are stored as
compressed as the base's: its file (`.delta.npz`) holds only its lists' ids and codes, and a save
writes O(vectors added since the build), not 16 KiB each. All files of one generation `N` belong
together; the manifest names the generation in use, so a crash mid-build leaves the old one
intact. A rebuild folds the delta back in.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import InputError
from ..files import write_bytes
from . import faiss_ops as fx

ID_BYTES = 8
FLAT_OVERHEAD = 24  # IndexIDMap2: the id and its reverse-map entry, per vector


@dataclass
class Choice:
    factory: str
    estimated_bytes: int
    ondisk: bool
    reason: str


def choose(n: int, dim: int, budget: int) -> Choice:
    """The index type for `n` vectors of `dim` in `budget` bytes, as autofaiss chooses: the
    most exact one that fits. Flat; else 8-bit scalar quantization (in memory); else IVF-PQ with
    as many bytes per vector as fit (OPQ-rotated at 64 bytes and fewer), its lists on disk."""
    flat = n * (dim * 4 + FLAT_OVERHEAD)
    if flat <= budget:
        return Choice("Flat", flat, False, f"Flat fits ({_gib(flat)} <= {_gib(budget)})")
    over = f"Flat needs {_gib(flat)} > {_gib(budget)}"
    sq8 = n * (dim + FLAT_OVERHEAD)
    if sq8 <= budget:
        return Choice("SQ8", sq8, False, f"{over}; SQ8 ~{_gib(sq8)}")
    nlist = _nlist(n)
    for m in (512, 256, 128, 64, 48, 32, 16, 8):
        reduced = dim if m > 64 else min(dim, 8 * m)
        if m > reduced or reduced % m:
            continue
        size = n * (m + ID_BYTES) + _fixed_bytes(n, dim, reduced, rotated=m <= 64)
        if size <= budget:
            rotation = "" if m > 64 else f"OPQ{m}_{reduced},"
            factory = f"{rotation}IVF{nlist},PQ{m}"
            return Choice(factory, size, True, f"{over}; {factory} ~{_gib(size)}")
    smallest = n * (8 + ID_BYTES) + _fixed_bytes(n, dim, min(dim, 64))
    raise InputError(
        f"{_gib(budget)} is too little for {n:,} vectors of {dim} values: the smallest "
        f"compressed index needs about {_gib(smallest)}"
    )


def plan(counts: dict[str, int], dim: int, budget: int) -> dict[str, Choice]:
    """A choice per modality within one budget. A modality whose Flat index is smaller than a
    compressed one's fixed cost (rotation, centroids, codebooks) stays exact; the rest of the
    budget is shared by vector count."""
    choices, left = {}, budget
    for modality, n in counts.items():
        flat = n * (dim * 4 + FLAT_OVERHEAD)
        if flat <= _fixed_bytes(n, dim, min(dim, 64)):
            choices[modality] = Choice("Flat", flat, False, "small: exact Flat is cheaper")
            left -= flat
    rest = {m: n for m, n in counts.items() if m not in choices}
    total = sum(rest.values())
    for modality, n in rest.items():
        choices[modality] = choose(n, dim, int(left * n / total))
    return choices


def _fixed_bytes(n: int, dim: int, reduced: int, rotated: bool = True) -> int:
    """Rotation matrix, IVF centroids and PQ codebooks: what a compressed index costs at any n."""
    rotation = dim * reduced * 4 if rotated else 0
    return rotation + _nlist(n) * reduced * 4 + 256 * reduced * 4


def _nlist(n: int) -> int:
    """The power of two at or above 4 sqrt(n) lists (autofaiss's range is 4-16 sqrt(n)), between
    16 and 65536."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65536, max(16, 2 ** math.ceil(math.log2(target)))))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class LayeredIndex:
    """An on-disk IVF base, an in-memory delta and a mask, searched as one index."""

    is_trained = True

    def __init__(self, base, delta, masked: np.ndarray, base_max_id: int):
        self.base = base
        self.delta = delta
        self.masked = np.unique(masked.astype(np.int64))
        self.base_max_id = base_max_id

    @property
    def ntotal(self) -> int:
        return int(self.base.ntotal - len(self.masked) + self.delta.ntotal)

    def add_with_ids(self, vectors, ids) -> None:
        self.delta.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> bool:
        """Remove from the delta; mask in the base (never rewritten). Ids are never reused, so
        an id up to the base's largest was in the base when it was built."""
        ids = np.asarray(ids, dtype=np.int64)
        fx.remove(self.delta, ids)
        in_base = ids[ids <= self.base_max_id]
        self.masked = np.union1d(self.masked, in_base)
        return True

    def search_among(self, queries, k: int, among=None):
        allowed = None if among is None else np.setdiff1d(np.asarray(among, np.int64), self.masked)
        delta_ivf = fx._ivf(self.delta)
        if delta_ivf is not None:  # the delta searches as deep as the base
            delta_ivf.nprobe = faiss.extract_index_ivf(self.base).nprobe
        base = self._search_base(queries, k, allowed)
        delta = fx.search(self.delta, queries, k, among=among)
        scores = np.concatenate([base[0], delta[0]], axis=1)
        return fx.top_k(scores, np.concatenate([base[1], delta[1]], axis=1), k)

    def search(self, queries, k: int, params=None):
        return self.search_among(queries, k)

    def _search_base(self, queries, k, allowed):
        ivf = faiss.extract_index_ivf(self.base)
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        elif len(self.masked):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.masked))
        else:
            return self.base.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        return self.base.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)

    def ids(self) -> np.ndarray:
        base = np.setdiff1d(fx.ids_of(self.base), self.masked)
        return np.concatenate([base, fx.ids_of(self.delta)])


def build(trained, chunks, folder: Path, modality: str, generation: int) -> tuple[str, int]:
    """Add (ids, vectors) chunks shard by shard to copies of the trained index, write each
    shard, merge their inverted lists into one .ivfdata file, and write the base index that
    points at it. Memory stays at one shard. Returns the base file's name and largest id."""
    from faiss.contrib.ondisk import merge_ondisk

    stem = f"{modality}.g{generation}"
    shards, largest = [], 0
    with tempfile.TemporaryDirectory(dir=folder, prefix=stem + ".shards.") as tmp:
        for number, (ids, vectors) in enumerate(chunks):
            shard = faiss.clone_index(trained)
            fx.add(shard, ids, vectors)
            largest = max(largest, int(ids.max()))
            shards.append(str(Path(tmp) / f"{number}.index"))
            faiss.write_index(shard, shards[-1])
            del shard
        merged = faiss.clone_index(trained)
        with fx._native_stderr(), _native_stdout():  # "resizing ..." lines
            if shards:
                merge_ondisk(merged, shards, str(folder / f"{stem}.ivfdata"))
    fx.save(merged, folder / f"{stem}.faiss")
    return f"{stem}.faiss", largest


def load(folder: Path, entry: dict) -> LayeredIndex:
    """The base (lists paged from disk), its delta and its mask, as the manifest names them."""
    stem = entry["file"].removesuffix(".faiss")
    with fx._native_stderr(), _native_stdout():  # "updating ondisk filename" lines
        base = faiss.read_index(str(folder / entry["file"]), faiss.IO_FLAG_ONDISK_SAME_DIR)
    delta = _empty_delta(folder / entry["file"])
    delta_file, mask_file = folder / f"{stem}.delta.npz", folder / f"{stem}.masked.npy"
    if delta_file.exists():
        with np.load(delta_file) as data:
            _fill(delta, data["lists"], data["sizes"], data["ids"], data["codes"])
    old = folder / f"{stem}.delta.faiss"  # a Flat delta, as saved before deltas were compressed
    if old.exists():
        flat = fx.load(old)
        ids = fx.ids_of(flat)
        fx.add(delta, ids, flat.reconstruct_batch(ids))
    masked = np.load(mask_file) if mask_file.exists() else np.empty(0, dtype=np.int64)
    return LayeredIndex(base, delta, masked, entry["base_max_id"])


def save(index: LayeredIndex, folder: Path, entry: dict) -> None:
    """Write the delta's lists and the mask atomically; the base is never rewritten."""
    stem = entry["file"].removesuffix(".faiss")
    arrays = _lists_of(index.delta)
    write_bytes(folder / f"{stem}.delta.npz", lambda f: np.savez(f, **arrays))
    write_bytes(folder / f"{stem}.masked.npy", lambda f: np.save(f, index.masked))
    (folder / f"{stem}.delta.faiss").unlink(missing_ok=True)  # converted: the .npz has it


def _empty_delta(base_file: Path):
    """The base's trained structure (quantizer, rotation, codebooks) with empty lists in
    memory: what it compresses new vectors with."""
    delta = faiss.read_index(str(base_file), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = fx._ivf(delta)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns and frees it now, not Python
    ivf.ntotal = delta.ntotal = 0
    return delta


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
    ivf = fx._ivf(delta)
    code_size, start = ivf.code_size, 0
    for number, size in zip(numbers, sizes, strict=True):
        part_ids = np.ascontiguousarray(ids[start : start + size], dtype=np.int64)
        part_codes = np.ascontiguousarray(codes[start * code_size : (start + size) * code_size])
        ivf.invlists.add_entries(int(number), int(size), faiss.swig_ptr(part_ids),
                                 faiss.swig_ptr(part_codes))  # fmt: skip
        start += int(size)
    ivf.ntotal = delta.ntotal = start


def files_of(folder: Path, entry: dict) -> list[Path]:
    """Every file an index entry uses (for sizes, and for cleaning up old generations)."""
    file = entry.get("file", "")
    if not entry.get("ondisk"):
        return [folder / file] if file else []
    stem = file.removesuffix(".faiss")
    names = [file, f"{stem}.ivfdata", f"{stem}.delta.npz", f"{stem}.delta.faiss"]
    names.append(f"{stem}.masked.npy")
    return [folder / name for name in names if (folder / name).exists()]


class _native_stdout:
    """Like index._native_stderr, for the lines FAISS's C++ code prints on stdout."""

    def __enter__(self):
        sys.stdout.flush()  # what Python buffered goes out before fd 1 is swapped
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)

    def __exit__(self, *exc):
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._file.close()
        return False
