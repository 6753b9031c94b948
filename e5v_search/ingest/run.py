"""One ingest run: scan the sources, decide what needs a vector, have a backend embed exactly
that, and commit each chunk to the catalog before the next, so a run killed at any moment loses
nothing committed and a rerun continues where it stopped.

The run is handed its collaborators (the store, the spec of the vectors it will get, a backend);
it never sees the engine. Every "does this need a vector?" decision is made here, once, for both
backends (threads.py, ray_backend.py), which only prepare and embed what they are handed:
- the same item is the same (source file, locator); it is unchanged when its content hash is
  (for an image file, first by size and mtime, so an unchanged file is not even read);
- content the catalog already holds, or that an earlier item of this run will hold, is copied,
  never embedded again (same modality, same content hash: same bytes, same prompt, same vector).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..config import default_workers
from ..errors import EmbeddingError, NotRegularFileError
from ..files import sha256_of
from ..records import SourceError
from ..spec import Spec
from .photo_metadata import merged, photo_metadata
from .sources import SourceItem, scan, scope_of, text_hash

CHUNK = 64  # items committed together; bounds the decoded images held ahead of the model


@dataclass
class Outcome:
    """One item's way through a run: planned (hashed, decided), then embedded or copied."""

    item: SourceItem
    row: dict | None  # the stored row with the same source and locator, if any
    content_hash: str | None = None
    size: tuple[int, int] | None = None  # images: (height, width)
    payload: Any = None  # what to embed: the text, or a PreparedImage
    vector: Any = None
    error: SourceError | None = None
    copy: bool = False  # identical content is (or will be) stored: its vector is copied
    copy_of: int | None = None  # the stored item it copies, when planning found one
    photo: dict | None = None  # images: the metadata read from the file (photo_metadata.py)
    refresh_only: bool = False  # an unchanged file read again for its metadata only

    @property
    def unchanged(self) -> bool:
        return self.row is not None and self.row["content_hash"] == self.content_hash

    @property
    def needs_vector(self) -> bool:
        """What a backend must embed: not failed, not unchanged, not a copy."""
        return self.error is None and not self.unchanged and not self.copy

    @property
    def content_key(self) -> tuple[str, str | None]:
        return self.item.modality, self.content_hash

    def fail(self, reason: str) -> None:
        self.error = SourceError(self.item.source, self.item.locator, reason)


class Ingestion:
    def __init__(
        self,
        store,
        spec,
        backend,
        report,
        *,
        workers=None,
        on_error=None,
        progress=None,
        refresh_metadata=False,
    ):
        """`spec()` gives the checked spec of the vectors the backend makes (loading what it
        needs on first call); `backend.process(plans)` embeds each plan's outcomes that need a
        vector and yields the plans back in order. `refresh_metadata`: image files unchanged
        since they were stored (same size and mtime) are read again for their photo metadata
        (never embedded again)."""
        self.refresh_metadata = refresh_metadata
        self.store = store
        self.catalog = store.catalog
        self.spec = spec
        self.backend = backend
        self.report = report
        self.workers = workers or default_workers()
        self.on_error = on_error
        self.progress = progress
        self._pending: set[tuple[str, str | None]] = set()  # content to be embedded this run

    def run(
        self,
        sources,
        *,
        text_field=None,
        id_field=None,
        prune=False,
        exclude=(),
        stdin_format="txt",
    ) -> None:
        from tqdm.auto import tqdm

        entries = list(scan(sources, text_field, id_field, exclude, stdin_format))
        seen: set[tuple[str, str]] = set()
        chunks = [entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK)]
        # progress None: a bar on a terminal only (tqdm's disable=None); True: always; False: never
        disable = {None: None, True: False, False: True}[self.progress]
        with (
            ThreadPoolExecutor(self.workers) as hashers,
            tqdm(total=len(entries), unit="item", desc="ingest", disable=disable) as bar,
        ):
            plans = ((self._plan(chunk, seen, hashers), len(chunk)) for chunk in chunks)
            for outcomes, size in self.backend.process(plans):
                self._commit(outcomes)
                bar.update(size)
        self.store.save()
        if prune:
            keys = self.catalog.keys_in(scope_of(sources))
            stale = [i for key, i in keys.items() if key not in seen]
            self.report.pruned = self.store.delete(stale) if stale else 0
            self.store.save()

    # -- planning: every decision about what needs a vector -------------------------------------

    def _plan(self, chunk, seen, hashers) -> list[Outcome]:
        """Errors recorded, unchanged image files (same size and mtime) counted; the rest hashed
        (images in threads) and decided; returns the outcomes a backend and the commit need."""
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
                if self.refresh_metadata:  # its stored hash stands: the file is not hashed
                    outcomes.append(Outcome(item, row, row["content_hash"], refresh_only=True))
                else:
                    self.report.unchanged += 1
            else:
                outcomes.append(Outcome(item, row))
        list(hashers.map(_read_image, [o for o in outcomes if o.item.modality == "image"]))
        held = self._held(
            o.content_key
            for o in outcomes
            if o.error is None and not o.unchanged and o.content_key not in self._pending
        )
        for outcome in outcomes:
            self._decide(outcome, held)
        if any(o.needs_vector for o in outcomes):
            self.spec()  # refuse a model the index was not built with before any work
        return outcomes

    def _decide(self, outcome: Outcome, held: dict[tuple[str, str], int]) -> None:
        """The one dedupe rule: content stored already (`held`: what `_held` found), or to be
        stored by an earlier item of this run, is copied; anything else new or changed is
        embedded."""
        if outcome.error is not None or outcome.unchanged:
            return
        key = outcome.content_key
        outcome.copy_of = None if key in self._pending else held.get(key)
        outcome.copy = key in self._pending or outcome.copy_of is not None
        if not outcome.copy:
            self._pending.add(key)

    def _held(self, keys) -> dict[tuple[str, str], int]:
        """(modality, content hash) -> a stored item with that content, for those of `keys` the
        catalog holds: one lookup per modality (an `IN (...)`), not one per item."""
        hashes: dict[str, list[str]] = {}
        for modality, content_hash in keys:
            hashes.setdefault(modality, []).append(content_hash)
        return {
            (modality, content_hash): item_id
            for modality, values in hashes.items()
            for content_hash, item_id in self.catalog.find_hashes(modality, values).items()
        }

    # -- committing ----------------------------------------------------------------------------

    def _commit(self, outcomes: list[Outcome]) -> None:
        self._fill_copies(outcomes)
        new, changed = [], []
        for outcome in outcomes:
            self._pending.discard(outcome.content_key)  # stored now, or failed
            if outcome.error:
                self._fail(outcome.error)
                continue
            record = _record(outcome)
            if outcome.unchanged:
                fields = ("metadata",) if outcome.item.modality == "text" else _IMAGE_STATE
                self._unchanged(outcome.row, record, fields)
            else:
                (changed if outcome.row else new).append((outcome, record))
        if new or changed:
            spec = self._spec_of([o for o, _ in new + changed])
        if new:
            vectors = [o.vector for o, _ in new]
            self.store.add([r for _, r in new], _stack(vectors), spec)
        if changed:
            ids = [o.row["id"] for o, _ in changed]
            vectors = _stack([o.vector for o, _ in changed])
            self.store.update(ids, [r for _, r in changed], vectors, spec)
        self.catalog.clear_errors([(r["source"], r["locator"]) for _, r in new + changed])
        self.report.added += len(new)
        self.report.updated += len(changed)

    def _spec_of(self, outcomes: list[Outcome]) -> Spec:
        """Copied vectors are the catalog's own: a chunk of copies only needs no model."""
        if all(o.copy for o in outcomes):
            return Spec.from_dict(self.catalog.spec())
        return self.spec()

    def _fill_copies(self, outcomes: list[Outcome]) -> None:
        """Copies take the vector (and an image's size) of the same content embedded in this
        chunk, or stored by an earlier one."""
        here = {o.content_key: o for o in outcomes if o.vector is not None and not o.copy}
        held = self._held(
            o.content_key
            for o in outcomes
            if o.copy and not o.error and o.content_key not in here and o.copy_of is None
        )
        for outcome in outcomes:
            if not outcome.copy or outcome.error:
                continue
            twin = here.get(outcome.content_key)
            if twin is not None:
                outcome.vector, outcome.size = twin.vector, twin.size
                continue
            found = outcome.copy_of or held.get(outcome.content_key)
            if found is None:  # its twin failed (a non-finite vector): so does it
                outcome.fail("the same content as an item that could not be embedded")
                continue
            row = self.catalog.get([found])[0]
            outcome.vector = self.catalog.vectors([found])[0]
            outcome.size = (row["height"], row["width"]) if row["width"] else None

    def _unchanged(self, row, record, fields) -> None:
        differ = {f: record[f] for f in fields if row.get(f) != record.get(f)}
        if differ:
            self.catalog.touch(row["id"], **differ)
            self.report.refreshed += "metadata" in differ
        self.catalog.clear_errors([(record["source"], record["locator"])])
        self.report.unchanged += 1

    def _fail(self, error: SourceError) -> None:
        self.catalog.record_error(error.source, error.reason, error.locator)
        self.report.failed += 1
        self.report.errors.append(str(error))
        if self.on_error:
            self.on_error(error)


def _read_image(outcome: Outcome) -> None:
    """An image file's content hash (unless only its metadata is refreshed) and its photo
    metadata, in a planning thread."""
    try:
        if not outcome.refresh_only:
            outcome.content_hash = sha256_of(outcome.item.source)
    except NotRegularFileError as error:  # swapped for a fifo or device since the scan
        outcome.fail(error.reason)
    except OSError as error:
        outcome.fail(f"cannot read ({error.strerror or error})")
    else:
        outcome.photo = photo_metadata(outcome.item.source)


def embed_each(embed, outcomes: list[Outcome]) -> None:
    """Vectors into the outcomes; an item the model gives a non-finite vector for (even alone)
    fails as that item's error and the others keep theirs."""
    if not outcomes:
        return
    try:
        vectors, failed = embed([o.payload for o in outcomes], progress=False), []
    except EmbeddingError as error:
        vectors, failed = error.vectors, error.indices
    for i, (outcome, vector) in enumerate(zip(outcomes, vectors, strict=True)):
        if i in failed:
            outcome.fail("the model gave a non-finite vector (NaN or inf): not stored")
        else:
            outcome.vector = vector


_IMAGE_STATE = ("file_size", "file_mtime_ns", "metadata")


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
        "metadata": _metadata(outcome),
        "file_size": item.file_size,
        "file_mtime_ns": item.file_mtime_ns,
    }


def _metadata(outcome: Outcome) -> dict:
    """A text's metadata is its record's; an image's merges what its file says with what was
    given and stored (photo_metadata.merged)."""
    if outcome.item.modality != "image":
        return outcome.item.metadata
    stored = outcome.row["metadata"] if outcome.row else None
    return merged(stored, outcome.photo or {}, outcome.item.metadata)


def _stack(vectors):
    import numpy as np

    return np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
