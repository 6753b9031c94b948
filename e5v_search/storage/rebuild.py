"""Building a modality's index from the stored vectors (no model), and the commands made of it:
`rebuild` (every modality: a type, a budget, or each as it was) and `repair` (what verify found).

`build` reads the catalog a chunk at a time and returns the new index as one sealed segment
(written on disk for an on-disk IVF type, in memory otherwise: the next save writes it) with its
manifest entry; the caller (store.py) installs it. The store drops the old index first, so memory
holds one index, not two (the catalog holds every vector). Rows whose vectors are damaged are
left out and listed in the entry, so the count stays known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IndexBuildError
from . import faiss_ops as fx
from . import ondisk, policy, segments
from .catalog import MODALITIES
from .catalog_reads import READ_CHUNK
from .keywords import rebuild_keywords
from .manifest import DEFAULT_FACTORY, IndexEntry
from .phases import Phases


@dataclass
class Built:
    modality: str
    index: segments.Segments
    entry: IndexEntry
    stats: dict = field(default_factory=dict)
    repair: str | None = None  # said when the build repaired something


def build(
    folder: Path,
    catalog,
    manifest,
    modality: str,
    factory: str,
    *,
    on_disk: bool = False,
    rerank: int | None = None,
    search: dict | None = None,
    reason: str | None = None,
    release=None,
    say=None,
    training: fx.Training = fx.TRAINING,
) -> Built:
    """The modality's index of type `factory` from every stored vector. `on_disk`: an IVF type
    built shard by shard, its lists merged into a file (ondisk.py). `reason`: a repair, which
    falls back to exact Flat when there are too few vectors to train the type. `release()`
    is called once the type is trained, before any vector is added: the caller drops the old
    index there, so memory holds one index, not two (and keeps it when training fails).
    `say(line)` hears each phase (sampling, training, adding, merging), timed in the stats;
    `training`: how codebooks are trained (faiss_ops.Training)."""
    started = time.perf_counter()
    phases = Phases(say)
    count = catalog.count(modality)
    index = fx.make(factory, catalog.dim)
    train_seconds, trained_on = 0.0, 0
    if not index.is_trained:
        wanted = fx.train_sample_size(factory, count, catalog.dim)
        with phases.phase(
            "sample", f"{modality}: reading {wanted:,} of {count:,} stored vectors to train on"
        ):
            sample = catalog.readable_vectors(catalog.sample_ids(modality, wanted))[1]
        began = time.perf_counter()
        try:
            with phases.phase(
                "train", f"{modality}: training {factory} on {len(sample):,} vectors"
            ):
                fx.train(index, sample, factory, training)
        except IndexBuildError:
            if reason is None:
                raise
            # A repair must not leave the index unopenable: exact search until rebuilt.
            reason += f"; too few vectors for {factory}, Flat instead"
            factory, index = DEFAULT_FACTORY, fx.make(DEFAULT_FACTORY, catalog.dim)
        train_seconds, trained_on = time.perf_counter() - began, len(sample)
        del sample
    search = search or {}
    fx.set_search_defaults(index, search.get("nprobe"), search.get("ef_search"))
    entry = IndexEntry(factory=factory, rerank=rerank)
    if release:
        release()
    adding = f"{modality}: adding {count:,} vectors to {factory}"
    chunks = phases.counted(catalog.iter_vectors(modality, batch=READ_CHUNK), adding, count)
    template = segments.emptied(index)
    if on_disk and fx.ivf_of(index) is not None:
        name = manifest.new_name(modality, "s")
        held = ondisk.build(index, chunks, folder, name, phases, adding)
        segments.write_ids(folder / f"{name}.ids.npy", held)
        sealed = segments.open_segment(folder, name, True, np.empty(0, dtype=np.int64))
        entry.ondisk = True
    else:
        with phases.phase("add", adding):
            for ids, vectors in chunks:
                fx.add(index, ids, vectors)
        sealed = segments.Segment("", index, np.sort(fx.ids_of(index)), written=False)
    skipped = np.setdiff1d(catalog.ids(modality), sealed.ids)  # damaged rows, not indexed
    entry.skip(skipped=skipped)
    built = segments.Segments(
        template, [sealed] if sealed.live else [], segments.emptied(template), entry.ondisk
    )
    built.score_bound = segments.score_bound(factory)
    stats = {
        "modality": modality,
        "factory": factory,
        "vectors": count - len(skipped),
        "skipped": skipped.tolist(),
        "train_seconds": train_seconds,
        "train_points": trained_on,
        "seconds": time.perf_counter() - started,
        "phases": dict(phases.seconds),
    }
    said = f"{modality} index rebuilt from {count} stored vectors: {reason}" if reason else None
    return Built(modality, built, entry, stats, said)


def rebuild(store, factory, nprobe, ef_search, max_memory, rerank, say=None) -> list[dict]:
    """`e5v-search rebuild` under the writer lock: every modality (rebuild_all), older float32
    rows of a half-precision catalog rewritten, losses the catalog was told of acknowledged."""
    compacted = store.catalog.compact_vectors()
    stats = rebuild_all(store, factory, nprobe, ef_search, max_memory, rerank, say)
    if compacted and stats:
        said = f"{compacted:,} stored vectors rewritten as float16"
        stats[0]["note"] = f"{stats[0]['note']}; {said}" if "note" in stats[0] else said
    store.acknowledged += store.catalog.acknowledge_loss()  # a rebuild says what was lost
    return stats


def rebuild_all(store, factory, nprobe, ef_search, max_memory, rerank, say=None) -> list[dict]:
    """Every modality rebuilt: in `factory` (a FAISS type); or with `max_memory` (bytes) the
    type chosen per modality to fit its share of the budget (ondisk.plan), IVF lists merged
    on disk; or, given neither, each as it was (type, on disk or not, re-ranking). `rerank`:
    rescore that many candidates exactly. A modality too small to train the type gets Flat,
    said in its note. The store installs each build before the next starts; `say` hears
    each build's phases (build)."""
    catalog, manifest = store.catalog, store.manifest
    keep = factory is None and max_memory is None
    if factory:
        fx.make(factory, catalog.dim or 64)  # a bad factory string fails before work
    counts = {m: catalog.count(m) for m in MODALITIES if catalog.count(m)}
    choices = ondisk.plan(counts, catalog.dim, int(max_memory)) if max_memory else {}
    stats, failures = [], []
    for modality, count in counts.items():
        current = manifest.indexes.get(modality) or IndexEntry(factory=manifest.factory)
        chosen, on_disk, note, chosen_rerank = factory, False, None, rerank
        if keep:
            chosen = current.factory
            on_disk = current.ondisk or any(store.path.glob(f"{modality}.*.ivfdata"))
            chosen_rerank = current.rerank if rerank is None else rerank
        if modality in choices:
            choice = choices[modality]
            chosen, on_disk, note = choice.factory, choice.ondisk, choice.reason
            if chosen != "Flat" and rerank is None:
                chosen_rerank = ondisk.RERANK  # compressed codes rank roughly: rescore them
        chosen_by = current.chosen_by if keep else "user" if factory else "policy"
        search = {"nprobe": nprobe, "ef_search": ef_search}
        try:
            built = build(
                store.path,
                catalog,
                manifest,
                modality,
                chosen,
                on_disk=on_disk,
                rerank=chosen_rerank,
                search=search,
                release=lambda m=modality: store.drop_index(m),
                say=say,
            )
        except IndexBuildError as error:
            failures.append((modality, count, chosen, error))
            continue
        built.entry.chosen_by = chosen_by
        store.install(built)
        notes = [note] if note else []
        if built.stats["skipped"]:
            left_out = built.stats["skipped"]
            notes.append(f"{len(left_out)} damaged rows left out (ids {left_out[:5]})")
        if notes:
            built.stats["note"] = "; ".join(notes)
        stats.append(built.stats)
    if failures and not stats:
        raise failures[0][3]
    for modality, count, chosen, error in failures:
        built = build(
            store.path,
            catalog,
            manifest,
            modality,
            DEFAULT_FACTORY,
            release=lambda m=modality: store.drop_index(m),
            say=say,
        )
        too_few = f"{count} vectors are too few for {chosen}: exact Flat instead ({error})"
        built.stats["note"] = too_few
        store.install(built)
        stats.append(built.stats)
    if factory:
        manifest.factory = factory
    if max_memory:  # later ingests keep to it (policy.py)
        manifest.max_memory = int(max_memory)
    return stats


def rebuild_as_before(store, modality: str, reason: str | None = None) -> dict:
    """One modality rebuilt as its entry says (type, on disk, re-ranking, who chose it)."""
    entry = store.manifest.indexes.get(modality) or IndexEntry(factory=store.manifest.factory)
    on_disk = entry.ondisk or any(store.path.glob(f"{modality}.*.ivfdata"))
    built = build(
        store.path,
        store.catalog,
        store.manifest,
        modality,
        entry.factory,
        on_disk=on_disk,
        rerank=entry.rerank,
        search=entry.search,
        reason=reason,
        release=lambda m=modality: store.drop_index(m),
    )
    built.entry.chosen_by, built.entry.reason = entry.chosen_by, entry.reason
    store.install(built)
    return built.stats


def repair(store, report: dict) -> list[str]:
    """Mend what `verify` reported, under the writer lock, one line each: damaged index files
    rebuilt as they were; damaged rows marked to be embedded again by the next ingest of their
    source; a keyword index out of step or damaged made anew from the items; damaged manifest
    copies and commits.json written again; lost commits acknowledged."""
    from .commits import describe

    catalog, said = store.catalog, []
    broken = {f["modality"] for f in report["files"] if f["problem"]} | set(store.damaged)
    if report["manifest"] and catalog.count():
        broken |= {m for m in MODALITIES if catalog.count(m)}
    for modality in sorted(broken):
        if catalog.count(modality):
            stats = rebuild_as_before(store, modality)
            said.append(
                f"{modality}: rebuilt as {stats['factory']} from {stats['vectors']:,} stored "
                "vectors"
            )
    rows = report["catalog"]["damaged_rows"]
    if rows:
        catalog.forget_content({r["id"] for r in rows})
        said += [
            f"item {r['id']} ({r['source']}): {r['problem']}; the next ingest of its source "
            f"embeds it again (if its source is gone, `e5v-search delete --id {r['id']}`)"
            for r in rows
        ]
    said += [f"catalog.sqlite: {line}" for line in report["catalog"]["integrity"]]
    if report["catalog"]["keywords"]:
        written = rebuild_keywords(catalog.conn)
        said.append(f"keyword index: made anew from the items ({written:,} documents)")
    if report["commits"]:
        catalog.remember()
        said.append(f"{report['commits'].split(' (')[0]}: written again")
    said += [  # the save that ends the writing block writes both copies anew
        f"{name} {problem}: written again"
        for name, problem in report["manifest"].items()
        if name.endswith(".json")
    ]
    said += [f"acknowledged: {describe(lost)}" for lost in catalog.acknowledge_loss()]
    return said or ["nothing to repair: every file and row is whole"]


def follow_policy(store, budget: int, say=None) -> list[str]:
    """What policy.changes says no longer suits `budget`, rebuilt (the caller holds the writer
    lock): one line per change, saying why. A type that cannot be trained yet is kept, and not
    tried again at this size. `say` hears each switch's phases (build)."""
    catalog = store.catalog
    counts = {m: catalog.count(m) for m in MODALITIES if catalog.count(m)}
    planned, said = policy.changes(store.manifest, counts, catalog.dim, budget)
    for change in planned:
        try:
            if say:
                say(f"index: {change} ...")
            switch(store, change.modality, change.factory, change.ondisk, change.reason, say)
            entry = store.manifest.indexes[change.modality]
            if change.factory != "Flat" and not entry.rerank:
                entry.rerank = ondisk.RERANK  # compressed: rescore candidates exactly
        except IndexBuildError as error:
            store.manifest.entry(change.modality).failed = change.factory
            said.append(
                f"{change.modality}: kept {change.was}; {change.factory} cannot be built yet "
                f"({error})"
            )
            continue
        said.append(str(change))
    return said


def switch(
    store, modality: str, factory: str, on_disk: bool, reason: str | None = None, say=None
) -> dict:
    """One modality rebuilt in another type for the index policy, its re-ranking kept; the
    caller holds the writer lock and the block's end saves."""
    entry = store.manifest.entry(modality)
    built = build(
        store.path,
        store.catalog,
        store.manifest,
        modality,
        factory,
        on_disk=on_disk,
        rerank=entry.rerank,
        search=entry.search,
        release=lambda: store.drop_index(modality),
        say=say,
    )
    built.entry.chosen_by, built.entry.reason = "policy", reason
    store.install(built)
    segments.failpoint("rebuilt")
    return built.stats
