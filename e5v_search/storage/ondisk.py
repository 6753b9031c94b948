"""Indexes past RAM: choosing an index type for a memory budget, and building an IVF index
shard by shard with its inverted lists merged into one file on disk (`<stem>.ivfdata`, paged in
by the OS as searches touch it). Such a file becomes a sealed segment (segments.py): later adds
go to the delta, compressed with the same trained structure, and are sealed into segments of
their own.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import InputError
from . import faiss_ops as fx
from .phases import Phases

ID_BYTES = 8
RERANK = 100  # candidates a compressed index's searches rescore exactly from the stored vectors
FLAT_OVERHEAD = 24  # IndexIDMap2: the id and its reverse-map entry, per vector


@dataclass
class Choice:
    factory: str
    estimated_bytes: int
    ondisk: bool
    reason: str


def choose(n: int, dim: int, budget: int, growth: int = 1) -> Choice:
    """The index type for `n` vectors of `dim` in `budget` bytes, as autofaiss chooses: the
    most exact one that fits. Flat; else 8-bit scalar quantization (in memory); else IVF-PQ with
    as many bytes per vector as fit (OPQ-rotated at 64 bytes and fewer), its lists on disk.
    `growth`: choose PQ codes that still fit `growth` times as many vectors (when there are
    codes that do), so a growing collection is not rebuilt at every doubling."""
    flat = n * (dim * 4 + FLAT_OVERHEAD)
    if flat <= budget:
        return Choice("Flat", flat, False, f"Flat fits ({_gib(flat)} <= {_gib(budget)})")
    over = f"Flat needs {_gib(flat)} > {_gib(budget)}"
    sq8 = n * (dim + FLAT_OVERHEAD)
    if sq8 <= budget:
        return Choice("SQ8", sq8, False, f"{over}; SQ8 ~{_gib(sq8)}")
    nlist = _nlist(n)
    for grown in (n * growth, n) if growth > 1 else (n,):
        for m in (512, 256, 128, 64, 48, 32, 16, 8):
            reduced = dim if m > 64 else min(dim, 8 * m)
            if m > reduced or reduced % m:
                continue
            size = grown * (m + ID_BYTES) + _fixed_bytes(n, dim, reduced, rotated=m <= 64)
            if size <= budget:
                rotation = "" if m > 64 else f"OPQ{m}_{reduced},"
                factory = f"{rotation}IVF{nlist},PQ{m}"
                room = f", room for {grown:,}" if grown > n else ""
                return Choice(factory, size, True, f"{over}; {factory} ~{_gib(size)}{room}")
    smallest = n * (8 + ID_BYTES) + _fixed_bytes(n, dim, min(dim, 64))
    raise InputError(
        f"{_gib(budget)} is too little for {n:,} vectors of {dim} values: the smallest "
        f"compressed index needs about {_gib(smallest)}"
    )


def plan(counts: dict[str, int], dim: int, budget: int, growth: int = 1) -> dict[str, Choice]:
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
        share = max(int(left * n / total), 0)
        try:
            choices[modality] = choose(n, dim, share, growth)
        except InputError as error:
            exact = (
                f", {_gib(budget - left)} of it for the small exact ones" if left < budget else ""
            )
            raise InputError(
                f"a budget of {_gib(budget)} is too little: it leaves {_gib(share)} for the "
                f"{n:,} {modality} vectors{exact} ({error})"
            ) from error
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
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 / 10 else f"{n / 2**10:.0f} KiB"


def build(
    trained, chunks, folder: Path, stem: str, phases: Phases | None = None, adding: str = "adding"
) -> np.ndarray:
    """Add (ids, vectors) chunks shard by shard to copies of the trained index, write each
    shard, merge their inverted lists into one `<stem>.ivfdata` file, and write `<stem>.faiss`,
    the index that points at it. Memory stays at one shard. Returns the sorted ids it holds.
    `phases` hears the adding (said as `adding`) and the merging."""
    phases = phases or Phases()
    shards, held = [], []
    with tempfile.TemporaryDirectory(dir=folder, prefix=stem + ".shards.") as tmp:
        with phases.phase("add", adding):
            for number, (ids, vectors) in enumerate(chunks):
                shard = faiss.clone_index(trained)
                fx.add(shard, ids, vectors)
                held.append(ids)
                shards.append(str(Path(tmp) / f"{number}.index"))
                faiss.write_index(shard, shards[-1])
                del shard
        merging = f"{stem}: merging {len(shards)} shards' lists into {stem}.ivfdata"
        with phases.phase("merge", merging):
            write_lists(faiss.clone_index(trained), shards, folder, stem)
    return np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


def write_lists(empty, shards: list[str], folder: Path, stem: str) -> None:
    """Merge the inverted lists of the shard files into `<stem>.ivfdata` and write
    `<stem>.faiss`: `empty` (the trained structure) pointing at it."""
    from faiss.contrib.ondisk import merge_ondisk

    with fx.native_output():  # "resizing ..." lines
        if shards:
            merge_ondisk(empty, shards, str(folder / f"{stem}.ivfdata"))
    fx.save(empty, folder / f"{stem}.faiss")
