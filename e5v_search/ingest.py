"""One ingest run: scan the sources, skip what the catalog holds already, embed the rest in
chunks (images decoded and preprocessed in worker threads one chunk ahead of the model), and
commit each chunk to the catalog before the next, so a run killed at any moment loses nothing
committed and a rerun continues where it stopped.

What counts as the same item: the same (source file, locator); it is unchanged when its content
hash is (for an image file, first by size and mtime, so an unchanged file is not even read).
Two inputs with the same content share one embedding: the second copies the first's vector.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .errors import InputError
from .images import DEFAULT_MAX_PIXELS
from .sources import SourceError, SourceItem, file_hash, scan, scope_of, text_hash

CHUNK = 64  # items committed together; bounds the decoded images held ahead of the model


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
        self._spec = None

    def run(self, sources, *, text_field=None, id_field=None, prune=False) -> None:
        from tqdm.auto import tqdm

        entries = list(scan(sources, text_field, id_field))
        seen: set[tuple[str, str]] = set()
        chunks = [entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK)]
        # progress None: a bar on a terminal only (tqdm's disable=None); True: always; False: never
        disable = {None: None, True: False, False: True}[self.progress]
        with (
            ThreadPoolExecutor(self.workers) as pool,
            tqdm(total=len(entries), unit="item", desc="ingest", disable=disable) as bar,
        ):
            ahead = self._start(chunks[0], seen, pool) if chunks else None
            for index in range(len(chunks)):
                current = ahead
                if index + 1 < len(chunks):  # decode the next chunk while this one embeds
                    ahead = self._start(chunks[index + 1], seen, pool)
                self._finish(*current)
                bar.update(len(chunks[index]))
        self.store.save()
        if prune:
            stale = [
                i for key, i in self.catalog.keys_in(scope_of(sources)).items() if key not in seen
            ]
            self.report.pruned = self.store.delete(stale) if stale else 0
            self.store.save()

    # -- one chunk ---------------------------------------------------------------------------

    def _start(self, chunk, seen, pool):
        """Sort a chunk into errors, unchanged items and work; start decoding its images."""
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
        texts, images = [], []
        for item in items:
            row = stored.get(item.key)
            if item.modality == "text":
                texts.append((item, row))
            elif row and (row["file_size"], row["file_mtime_ns"]) == (
                item.file_size,
                item.file_mtime_ns,
            ):
                self.report.unchanged += 1
            else:
                if self._spec is None:
                    self._spec = self.engine.spec()  # loads the model in this thread, once
                images.append((item, row, pool.submit(self._decode, item)))
        return texts, images

    def _decode(self, item: SourceItem):
        try:
            content_hash = file_hash(item.source)
            return content_hash, self.engine.encoder.prepare_image(item.source, self.max_pixels)
        except InputError as error:
            return SourceError(item.source, "", str(error).removeprefix(f"{item.source}: "))
        except OSError as error:
            return SourceError(item.source, "", f"cannot read ({error.strerror or error})")

    def _finish(self, texts, images) -> None:
        new, changed, done = [], [], []  # (record, vector or prepared or item id to copy)
        for item, row in texts:
            content_hash = text_hash(item.text)
            record = _record(item, content_hash)
            if row and row["content_hash"] == content_hash:
                self._unchanged(row, record, ("metadata",))
                continue
            (changed if row else new).append((row, record, item.text))
        for item, row, future in images:
            result = future.result()
            if isinstance(result, SourceError):
                self._fail(result)
                continue
            content_hash, prepared = result
            record = _record(item, content_hash, size=prepared.size)
            if row and row["content_hash"] == content_hash:  # touched, not changed
                self._unchanged(row, record, ("file_size", "file_mtime_ns"))
                continue
            (changed if row else new).append((row, record, prepared))
        vectors = self._embed([job for job in new + changed])
        if new:
            self.store.add([r for _, r, _ in new], vectors[: len(new)], self._spec)
        if changed:
            ids = [row["id"] for row, _, _ in changed]
            self.store.update(ids, [r for _, r, _ in changed], vectors[len(new) :], self._spec)
        done = [(r["source"], r["locator"]) for _, r, _ in new + changed]
        self.catalog.clear_errors(done)
        self.report.added += len(new)
        self.report.updated += len(changed)

    def _embed(self, jobs):
        """Vectors for (row, record, text or prepared image) jobs, in order; content already in
        the catalog is copied, not embedded again."""
        import numpy as np

        if not jobs:
            return np.empty((0, 0), dtype=np.float32)
        if self._spec is None:
            self._spec = self.engine.spec()
        encoder = self.engine.encoder
        out = np.empty((len(jobs), encoder.dim), dtype=np.float32)
        texts, images = [], []
        for position, (_, record, payload) in enumerate(jobs):
            copy = self.catalog.find_hash(record["modality"], record["content_hash"])
            if copy is not None:
                out[position] = self.catalog.vectors([copy])[0]
            elif isinstance(payload, str):
                texts.append((position, payload))
            else:
                images.append((position, payload))
        if texts:
            out[[p for p, _ in texts]] = encoder.embed_texts([t for _, t in texts], progress=False)
        if images:
            prepared = [image for _, image in images]
            out[[p for p, _ in images]] = encoder.embed_prepared(prepared, progress=False)
        return out

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


def _record(item: SourceItem, content_hash: str, size=None) -> dict:
    height, width = size if size else (None, None)
    return {
        "modality": item.modality,
        "source": item.source,
        "locator": item.locator,
        "text": item.text,
        "content_hash": content_hash,
        "width": width,
        "height": height,
        "metadata": item.metadata,
        "file_size": item.file_size,
        "file_mtime_ns": item.file_mtime_ns,
    }
