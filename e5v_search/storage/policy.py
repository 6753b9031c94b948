"""The index type follows the collection: nobody has to choose a FAISS type.

After every ingest (in the same write, under the writer lock) each modality's index is compared
with what `ondisk.plan` chooses for the memory budget at its current size: exact Flat while it
fits, then 8-bit scalar quantization, then IVF-PQ with its lists on disk (OPQ-rotated at 64
bytes a vector and fewer). A modality whose type differs is rebuilt from the stored vectors (no
model); an on-disk one whose delta has grown past a quarter of its base is rebuilt too, which
folds the delta in. Rebuilds happen when the size crosses a threshold or the IVF list count
doubles, so their cost stays proportional to what was added. A type the user chose (`rebuild
--type`) is left alone; a budget given to `rebuild --max-memory` is kept for later ingests.
"""

from __future__ import annotations

from ..errors import IndexBuildError, InputError
from . import ondisk
from .catalog import MODALITIES

FOLD_SHARE = 0.25  # an on-disk delta past this share of its base is folded into a new base


def follow(store, budget: int) -> list[str]:
    """Rebuild what no longer suits `budget` bytes; one line per change, saying why."""
    counts = {m: store.catalog.count(m) for m in MODALITIES if store.catalog.count(m)}
    if not counts:
        return []
    try:
        choices = ondisk.plan(counts, store.catalog.dim, budget)
    except InputError as error:
        return [f"index types kept: {error}"]
    changes = []
    for modality, choice in choices.items():
        entry = store.manifest.get("indexes", {}).get(modality, {})
        current = entry.get("factory", "Flat")
        # An index saved before the policy existed: a type other than Flat was someone's choice.
        chooser = entry.get("chosen_by") or ("policy" if current == "Flat" else "user")
        same = current == choice.factory and bool(entry.get("ondisk")) == choice.ondisk
        if chooser == "user" or (same and not _delta_too_big(store, modality)):
            continue
        if entry.get("failed") == choice.factory:
            continue  # tried at this size already: too few vectors to train it
        try:
            store.rebuild_modality(modality, choice.factory, choice.ondisk)
        except IndexBuildError as error:
            entry["failed"] = choice.factory
            changes.append(f"{modality}: kept {current}; {choice.factory} cannot be built yet "
                           f"({error})")  # fmt: skip
            continue
        store.manifest["indexes"][modality]["reason"] = choice.reason
        what = "delta folded into a new base" if same else f"{current} -> {choice.factory}"
        changes.append(f"{modality}: {what} ({counts[modality]:,} vectors; {choice.reason})")
    return changes


def _delta_too_big(store, modality: str) -> bool:
    index = store.indexes.get(modality)
    if not hasattr(index, "delta"):
        return False
    return index.delta.ntotal > FOLD_SHARE * max(index.base.ntotal, 1)
