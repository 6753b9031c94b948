"""The index type follows the collection: nobody has to choose a FAISS type.

After every ingest (in the same write, under the writer lock) each modality's index is compared
with what `ondisk.plan` chooses for the memory budget at its current size: exact Flat while it
fits, then 8-bit scalar quantization, then IVF-PQ with its lists on disk (OPQ-rotated at 64
bytes a vector and fewer); searches of a compressed type are re-ranked from the stored vectors
(ondisk.RERANK candidates). A modality is rebuilt
from the stored vectors (no model) only when its kind of type changes (Flat, SQ8, PQ) or its PQ
codes no longer fit: growing within a kind costs nothing more than adds, which land in the delta
and are sealed into segments (segments.py) with the trained structure the rebuild made. A type
the user chose (`rebuild --type`) is left alone; a budget given to `rebuild --max-memory` is
kept for later ingests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError
from . import ondisk
from .manifest import IndexEntry

GROWTH = 8  # a switch to PQ picks codes that fit 8x the vectors: no rebuild at each doubling


@dataclass
class Change:
    modality: str
    was: str  # the type it has
    factory: str  # the type it should have
    ondisk: bool
    count: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.modality}: {self.was} -> {self.factory} ({self.count:,} vectors; {self.reason})"
        )


def changes(
    manifest, counts: dict[str, int], dim: int, budget: int
) -> tuple[list[Change], list[str]]:
    """What no longer suits `budget` bytes at these counts (a pure function: the store makes
    the changes), and lines for what is kept and why."""
    if not counts:
        return [], []
    try:
        needed = ondisk.plan(counts, dim, budget)
        roomy = ondisk.plan(counts, dim, budget, growth=GROWTH)
    except InputError as error:
        return [], [f"index types kept: {error}"]
    out = []
    for modality, need in needed.items():
        entry = manifest.indexes.get(modality) or IndexEntry()
        # An index saved before the policy existed: a type other than Flat was someone's choice.
        chooser = entry.chosen_by or ("policy" if entry.factory == "Flat" else "user")
        if chooser == "user" or _still_fits(entry.factory, entry.ondisk, need):
            continue
        choice = roomy[modality] if _kind(need.factory) == "PQ" else need
        if entry.failed == choice.factory:
            continue  # tried at this size already: too few vectors to train it
        out.append(
            Change(
                modality,
                entry.factory,
                choice.factory,
                choice.ondisk,
                counts[modality],
                choice.reason,
            )
        )
    return out, []


def _kind(factory: str) -> str:
    return "PQ" if "PQ" in factory else "SQ8" if factory.startswith("SQ8") else factory


def _still_fits(current: str, on_disk: bool, choice) -> bool:
    """The current type is kept while it is the kind the budget calls for: a PQ index whose
    codes are as small as (or smaller than) the choice's, more lists or not."""
    if _kind(current) != _kind(choice.factory) or on_disk != choice.ondisk:
        return False
    if _kind(current) != "PQ":
        return True
    return _pq_bytes(current) <= _pq_bytes(choice.factory)


def _pq_bytes(factory: str) -> int:
    return int(re.findall(r"PQ(\d+)", factory)[-1])
