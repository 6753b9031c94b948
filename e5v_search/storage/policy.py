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

from ..errors import IndexBuildError, InputError
from . import ondisk
from .catalog import MODALITIES

GROWTH = 8  # a switch to PQ picks codes that fit 8x the vectors: no rebuild at each doubling


def follow(store, budget: int) -> list[str]:
    """Rebuild what no longer suits `budget` bytes; one line per change, saying why."""
    counts = {m: store.catalog.count(m) for m in MODALITIES if store.catalog.count(m)}
    if not counts:
        return []
    try:
        needed = ondisk.plan(counts, store.catalog.dim, budget)
        roomy = ondisk.plan(counts, store.catalog.dim, budget, growth=GROWTH)
    except InputError as error:
        return [f"index types kept: {error}"]
    changes = []
    for modality, need in needed.items():
        entry = store.manifest.get("indexes", {}).get(modality, {})
        current = entry.get("factory", "Flat")
        # An index saved before the policy existed: a type other than Flat was someone's choice.
        chooser = entry.get("chosen_by") or ("policy" if current == "Flat" else "user")
        if chooser == "user" or _still_fits(current, bool(entry.get("ondisk")), need):
            continue
        choice = roomy[modality] if _kind(need.factory) == "PQ" else need
        if entry.get("failed") == choice.factory:
            continue  # tried at this size already: too few vectors to train it
        try:
            store.rebuild_modality(modality, choice.factory, choice.ondisk)
        except IndexBuildError as error:
            entry["failed"] = choice.factory
            changes.append(f"{modality}: kept {current}; {choice.factory} cannot be built yet "
                           f"({error})")  # fmt: skip
            continue
        entry = store.manifest["indexes"][modality]
        entry["reason"] = choice.reason
        if choice.factory != "Flat" and not entry.get("rerank"):
            entry["rerank"] = ondisk.RERANK  # compressed: rescore candidates exactly
        what = f"{current} -> {choice.factory}"
        changes.append(f"{modality}: {what} ({counts[modality]:,} vectors; {choice.reason})")
    return changes


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
