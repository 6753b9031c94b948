"""Engine: an index directory plus the encoder, behind the calls a user makes.

    engine = Engine.open("indexes/photos", model="royokong/e5-v")
    report = engine.ingest(["~/photos", "captions.jsonl"])
    results = engine.search(text="a dog on a beach", k=10)

The model loads only when something must be embedded: a rerun over an unchanged corpus, `info`,
`delete` and "more like this" searches never load it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .catalog import MODALITIES, metadata_filter
from .config import DEFAULT_MODEL
from .errors import E5VSearchError, InputError
from .images import IMAGE_EXTENSIONS
from .ingest import Ingestion
from .store import Store


@dataclass
class Result:
    id: int
    score: float
    modality: str
    source: str | None
    locator: str
    text: str | None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        done = self.added + self.updated + self.unchanged
        return done / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "items_per_second": round(self.items_per_second, 2)}


class Engine:
    def __init__(self, store: Store, model: str, encoder_options: dict):
        self.store = store
        self.model = model
        self.encoder_options = encoder_options
        self._encoder = None
        self._spec = None
        self.notes: list[str] = []

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str = DEFAULT_MODEL,
        *,
        create: bool = False,
        revision: str | None = None,
        device: str | None = "auto",
        dtype=None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        encoder=None,
        lock_timeout: float | None = None,
        on_wait=None,
    ) -> Engine:
        """Open (or with `create`, make) the index at `path`. `encoder` reuses a loaded one.
        A write waits up to `lock_timeout` seconds for another process's write to finish,
        calling `on_wait` once with a message naming it."""
        options = {"revision": revision, "device": device, "dtype": dtype, "batch_size": batch_size}
        if max_batch_tokens:
            options["max_batch_tokens"] = max_batch_tokens
        store = Store.open(path, create=create, lock_timeout=lock_timeout, on_wait=on_wait)
        engine = cls(store, model, options)
        engine._encoder = encoder
        return engine

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import E5VEncoder

            self._encoder = E5VEncoder.from_pretrained(self.model, **self.encoder_options)
        return self._encoder

    def spec(self) -> dict:
        """The encoder's spec, checked against the index's (once): a mismatch raises."""
        if self._spec is None:
            spec = self.encoder.spec()
            self.notes = self.store.catalog.check_spec(spec)
            self._spec = spec
        return self._spec

    # -- ingest --------------------------------------------------------------------------------

    def ingest(
        self,
        sources,
        *,
        text_field: str | None = None,
        id_field: str | None = None,
        prune: bool = False,
        workers: int | None = None,
        max_pixels: int | None = None,
        on_error=None,
        progress: bool | None = None,
        ray=None,
    ) -> IngestReport:
        """Embed and store what is new or changed in `sources`; skip what is stored already.
        Each bad input is recorded (see `errors()`), passed to `on_error`, and skipped.
        `ray` (a distributed.RayOptions) runs the work on Ray Data instead of local threads."""
        started = time.perf_counter()
        report = IngestReport()
        run = Ingestion(
            self,
            report,
            workers=workers,
            on_error=on_error,
            progress=progress,
            max_pixels=max_pixels,
        )
        backend = None
        if ray is not None:
            from .distributed import RayBackend

            backend = RayBackend(run, ray)
        # One writer at a time: a second ingest waits, then plans against what this one stored.
        with self.store.writing("ingest"):
            run.run(sources, text_field=text_field, id_field=id_field, prune=prune,
                    backend=backend)  # fmt: skip
        report.seconds = time.perf_counter() - started
        return report

    # -- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image=None,
        *,
        like: int | None = None,
        vector=None,
        vector_of: str = "text",
        k: int = 10,
        modality: str | None = None,
        where: str | dict | None = None,
        params=(),
        add=(),
        subtract=(),
    ) -> list[Result]:
        """Top-k items for a text, an image, both (E5-V's composed query) or a stored item
        (`like`), optionally moved towards `add` and away from `subtract` queries (texts, image
        paths, or (query, weight) pairs). `modality` defaults to the other one of the query's
        ("any" searches both); `where` is SQL on the items table or a {metadata key: value} dict.
        `vector` is a query already embedded (from a `vector_of` query: text, image, composed)."""
        if vector is not None:
            query = np.asarray(vector, dtype=np.float32)
            own = "text" if vector_of == "image" else "image"
        else:
            query, own = self._query_vector(text, image, like)
        for terms, sign in ((add, 1.0), (subtract, -1.0)):
            for term in terms:
                value, weight = term if isinstance(term, tuple) else (term, 1.0)
                query = query + sign * float(weight) * self._term_vector(value)
        norm = np.linalg.norm(query)
        if norm == 0:
            raise InputError("the added and subtracted queries cancel out")
        modality = own if modality is None else (None if modality == "any" else modality)
        if isinstance(where, dict):
            where, params = metadata_filter(where)
        k_search = k + 1 if like is not None else k
        hits = self.store.search(query / norm, k_search, modality, where, params)[0]
        hits = [h for h in hits if h.id != like][:k]
        rows = {row["id"]: row for row in self.store.catalog.get([h.id for h in hits])}
        return [_result(h, rows[h.id]) for h in hits if h.id in rows]

    def _query_vector(self, text, image, like) -> tuple[np.ndarray, str | None]:
        given = sum(x is not None for x in (text, image)) + (like is not None)
        if not given or (like is not None and given > 1):
            raise InputError("give a text, an image, both, or the id of a stored item (like)")
        if like is not None:
            rows = self.store.catalog.get([like])
            if not rows:
                raise InputError(f"no item with id {like} in this index")
            return self.store.catalog.vectors([like])[0], rows[0]["modality"]
        if text is not None and not str(text).strip():
            raise InputError("the query text is empty")
        self.spec()
        if text is not None and image is not None:
            return self.encoder.embed_composed([image], [text])[0], "image"
        if text is not None:
            return self.encoder.embed_texts([text])[0], "image"
        return self.encoder.embed_images([image], workers=0)[0], "text"

    def _term_vector(self, value) -> np.ndarray:
        self.spec()
        path = Path(str(value)).expanduser()
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            return self.encoder.embed_images([path], workers=0)[0]
        return self.encoder.embed_texts([str(value)])[0]

    # -- maintenance ---------------------------------------------------------------------------

    def info(self) -> dict:
        info = self.store.info()
        info["repairs"] = list(self.store.repairs)
        return info

    def rebuild(self, factory=None, *, nprobe=None, ef_search=None, max_memory=None, rerank=None):
        """Rebuild from the stored vectors; see Store.rebuild."""
        return self.store.rebuild(
            factory, nprobe=nprobe, ef_search=ef_search, max_memory=max_memory, rerank=rerank
        )

    def recall(self, k: int = 10, sample: int = 200) -> dict[str, float]:
        return self.store.recall(k=k, sample=sample)

    def delete(self, ids=(), source_prefix: str | None = None, where=None, params=()) -> int:
        """Delete by ids, by source path prefix, or by filter (SQL or a metadata dict)."""
        if not ids and source_prefix is None and where is None:
            raise InputError("say what to delete: ids, a source prefix or a filter")
        with self.store.writing("delete"):
            removed = self.store.delete(ids) if ids else 0
            if source_prefix is not None:
                removed += self.store.delete_source_prefix(source_prefix)
            if where is not None:
                if isinstance(where, dict):
                    where, params = metadata_filter(where)
                removed += self.store.delete_where(where, params)
        return removed

    def refresh(self) -> bool:
        """Follow what other processes committed (see Store.refresh); True if anything did."""
        return self.store.refresh()

    def errors(self) -> list[dict]:
        return self.store.catalog.errors()


def _result(hit, row) -> Result:
    return Result(
        id=hit.id,
        score=hit.score,
        modality=hit.modality,
        source=row["source"],
        locator=row["locator"],
        text=row["text"],
        metadata=row["metadata"],
    )


__all__ = ["Engine", "E5VSearchError", "IngestReport", "MODALITIES", "Result"]
