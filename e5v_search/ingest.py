"""One ingest run: scan the sources, skip what the catalog holds already, embed the rest in
chunks, and commit each chunk to the catalog before the next, so a run killed at any moment
loses nothing committed and a rerun continues where it stopped.

What counts as the same item: the same (source file, locator); it is unchanged when its content
hash is (for an image file, first by size and mtime, so an unchanged file is not even read).
The work between planning and committing (hashing and decoding images, embedding) is done by a
backend: threads ahead of the local model here, or a Ray Data pipeline (distributed.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import EmbeddingError, InputError
from .images import DEFAULT_MAX_PIXELS
from .sources import SourceError, SourceItem, file_hash, scan, scope_of, text_hash

CHUNK = 64  # items committed together; bounds the decoded images held ahead of the model


@dataclass
class Outcome:
    """One item's way through a run: planned, then hashed and prepared, then embedded."""

    item: SourceItem
    row: dict | None  # the stored row with the same source and locator, if any
    content_hash: str | None = None
    size: tuple[int, int] | None = None  # images: (height, width)
    payload: Any = None  # what to embed: the text, or a PreparedImage
    vector: Any = None
    error: SourceError | None = None

    @property
    def unchanged(self) -> bool:
        return self.row is not None and self.row["content_hash"] == self.content_hash

    @property
    def needs_vector(self) -> bool:
        return self.error is None and not self.unchanged


def prepare_outcome(outcome: Outcome, preprocessor, max_pixels: int) -> Outcome:
    """Hash and decode an image outcome (texts are ready at planning); errors are recorded in
    the outcome, never raised, so one bad file cannot stop a run."""
    item = outcome.item
    if item.modality == "text":
        return outcome
    try:
        outcome.content_hash = file_hash(item.source)
        if not outcome.unchanged:  # a touched file with the same bytes needs no decoding
            outcome.payload = preprocessor.prepare_image(item.source, max_pixels)
            outcome.size = outcome.payload.size
    except InputError as error:
        outcome.error = SourceError(item.source, "", str(error).removeprefix(f"{item.source}: "))
    except OSError as error:
        outcome.error = SourceError(item.source, "", f"cannot read ({error.strerror or error})")
    return outcome


class Ingestion:
    def __init__(
        self, engine, report, *, workers=None, on_error=None, progress=None, max_pixels=None
    ):
        self.engine = engine
        self.store = engine.store
        self.catalog = engine.store.catalog
        self.report = report
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.on_error = on_error
        self.progress = progress
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.spec = None

    def run(self, sources, *, text_field=None, id_field=None, prune=False, backend=None) -> None:
        from tqdm.auto import tqdm

        entries = list(scan(sources, text_field, id_field))
        seen: set[tuple[str, str]] = set()
        chunks = [entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK)]
        plans = ((self._plan(chunk, seen), len(chunk)) for chunk in chunks)
        backend = backend or ThreadBackend(self)
        # progress None: a bar on a terminal only (tqdm's disable=None); True: always; False: never
        disable = {None: None, True: False, False: True}[self.progress]
        with tqdm(total=len(entries), unit="item", desc="ingest", disable=disable) as bar:
            for outcomes, size in backend.process(plans):
                self._commit(outcomes)
                bar.update(size)
        self.store.save()
        if prune:
            keys = self.catalog.keys_in(scope_of(sources))
            stale = [i for key, i in keys.items() if key not in seen]
            self.report.pruned = self.store.delete(stale) if stale else 0
            self.store.save()

    def ensure_spec(self) -> dict:
        """The encoder's spec, checked against the index; loads the model, once."""
        if self.spec is None:
            self.spec = self.engine.spec()
        return self.spec

    # -- planning and committing (the backend does what lies between) -------------------------

    def _plan(self, chunk, seen) -> list[Outcome]:
        """Errors recorded, unchanged image files (same size and mtime) counted, the rest
        returned as outcomes to work on; texts are hashed here."""
        items = []
        for entry in chunk:
            if isinstance(entry, SourceError):
                self._fail(entry)
            elif entry.key in seen:
                self._fail(SourceError(entry.source, entry.locator, "appears twice: skipped"))
            else:
                seen.add(entry.key)
                items.append(entry)
        stored = self.catalog.lookup([item.key for item in items])
        outcomes = []
        for item in items:
            row = stored.get(item.key)
            if item.modality == "text":
                outcomes.append(Outcome(item, row, text_hash(item.text), payload=item.text))
            elif row and (row["file_size"], row["file_mtime_ns"]) == (
                item.file_size,
                item.file_mtime_ns,
            ):
                self.report.unchanged += 1
            else:
                outcomes.append(Outcome(item, row))
        return outcomes

    def _commit(self, outcomes: list[Outcome]) -> None:
        new, changed = [], []
        for outcome in outcomes:
            if outcome.error:
                self._fail(outcome.error)
                continue
            record = _record(outcome)
            if outcome.unchanged:
                fields = ("metadata",) if outcome.item.modality == "text" else _FILE_STATE
                self._unchanged(outcome.row, record, fields)
            else:
                (changed if outcome.row else new).append((outcome, record))
        if new:
            vectors = [o.vector for o, _ in new]
            self.store.add([r for _, r in new], _stack(vectors), self.ensure_spec())
        if changed:
            ids = [o.row["id"] for o, _ in changed]
            vectors = _stack([o.vector for o, _ in changed])
            self.store.update(ids, [r for _, r in changed], vectors, self.ensure_spec())
        self.catalog.clear_errors([(r["source"], r["locator"]) for _, r in new + changed])
        self.report.added += len(new)
        self.report.updated += len(changed)

    def _unchanged(self, row, record, fields) -> None:
        differ = {f: record[f] for f in fields if row.get(f) != record.get(f)}
        if differ:
            self.catalog.touch(row["id"], **differ)
        self.catalog.clear_errors([(record["source"], record["locator"])])
        self.report.unchanged += 1

    def _fail(self, error: SourceError) -> None:
        self.catalog.record_error(error.source, error.reason, error.locator)
        self.report.failed += 1
        self.report.errors.append(str(error))
        if self.on_error:
            self.on_error(error)


class ThreadBackend:
    """The local model, with images hashed and decoded in threads one chunk ahead of it.
    Content the catalog already holds is copied, not embedded again."""

    def __init__(self, ingestion: Ingestion):
        self.run = ingestion

    def process(self, plans):
        with ThreadPoolExecutor(self.run.workers) as pool:
            ahead = None
            for plan in plans:
                started = self._start(plan, pool)
                if ahead is not None:
                    yield self._finish(*ahead)
                ahead = started
            if ahead is not None:
                yield self._finish(*ahead)

    def _start(self, plan, pool):
        outcomes, size = plan
        images = [o for o in outcomes if o.item.modality == "image"]
        if images:
            self.run.ensure_spec()  # loads the model here, before any thread needs it
        preprocessor = self.run.engine.encoder.preprocessor if images else None
        futures = [
            pool.submit(prepare_outcome, o, preprocessor, self.run.max_pixels) for o in images
        ]
        return outcomes, size, futures

    def _finish(self, outcomes, size, futures):
        for future in futures:
            future.result()
        self._embed([o for o in outcomes if o.needs_vector])
        return outcomes, size

    def _embed(self, outcomes: list[Outcome]) -> None:
        catalog, texts, images = self.run.catalog, [], []
        for outcome in outcomes:
            copy = catalog.find_hash(outcome.item.modality, outcome.content_hash)
            if copy is not None:
                outcome.vector = catalog.vectors([copy])[0]
            else:
                (texts if outcome.item.modality == "text" else images).append(outcome)
        if not texts and not images:
            return
        self.run.ensure_spec()
        encoder = self.run.engine.encoder
        if texts:
            _embed_each(encoder.embed_texts, texts)
        if images:
            _embed_each(encoder.embed_prepared, images)


def _embed_each(embed, outcomes: list[Outcome]) -> None:
    """Vectors into the outcomes; an item the model gives a non-finite vector for (even alone)
    fails as that item's error and the others keep theirs."""
    try:
        vectors, failed = embed([o.payload for o in outcomes], progress=False), []
    except EmbeddingError as error:
        vectors, failed = error.vectors, error.indices
    for i, (outcome, vector) in enumerate(zip(outcomes, vectors, strict=True)):
        if i in failed:
            item = outcome.item
            outcome.error = SourceError(item.source, item.locator, "the model gave a non-finite "
                                        "vector (NaN or inf): not stored")  # fmt: skip
        else:
            outcome.vector = vector


_FILE_STATE = ("file_size", "file_mtime_ns")


def _record(outcome: Outcome) -> dict:
    item = outcome.item
    height, width = outcome.size if outcome.size else (None, None)
    return {
        "modality": item.modality,
        "source": item.source,
        "locator": item.locator,
        "text": item.text,
        "content_hash": outcome.content_hash,
        "width": width,
        "height": height,
        "metadata": item.metadata,
        "file_size": item.file_size,
        "file_mtime_ns": item.file_mtime_ns,
    }


def _stack(vectors):
    import numpy as np

    return np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
