"""Engine: an index directory plus the encoder, behind every call a user (or a shell) makes.

    engine = Engine.open("indexes/photos", model="royokong/e5-v")
    report = engine.ingest(["~/photos", "captions.jsonl"])
    results = engine.search(text="a dog on a beach", k=10)

The CLI, the server and evaluation go through the engine only: it embeds queries, searches by
text, image, stored item or vector, returns items and counts, and collects what it learns on the
way (index repairs, checkpoint repairs, spec notes) for the shell to show once (`notices()`).
The model loads only when something must be embedded: a rerun over an unchanged corpus, `info`,
`delete` and "more like this" searches never load it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .closing import Closing
from .config import DUPLICATE_COSINE, HYBRID_WEIGHT, MAX_BATCH_TOKENS, MAX_ID, RRF_K
from .errors import InputError, ModelLoadError
from .filters import metadata_filter
from .images import IMAGE_EXTENSIONS
from .ingest.run import Ingestion
from .model.loading import ModelChoice
from .results import TARGET_OF, IngestReport, Result, Results, above, check_mode
from .spec import Spec
from .storage.catalog import MODALITIES
from .storage.store import Store


class Engine(Closing):
    def __init__(self, store: Store, choice: ModelChoice, encoder=None):
        self.store = store
        self.from_index = choice.model is None  # the model the index records, none given
        self.choice: ModelChoice = choice.for_index(store.catalog.spec())
        self._encoder = encoder
        self._spec: Spec | None = None
        self._accepted: dict[Spec, list[str]] = {}  # specs checked against the index: notes
        self._shown: set[str] = set()
        self._recorded_repairs = store.catalog.model_repairs()  # said once, when recorded

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
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
        quantize: str | None = None,
        choice: ModelChoice | None = None,
    ) -> Engine:
        """Open (or with `create`, make) the index at `path`. The model to load when something
        must be embedded: `choice` (a ModelChoice), or its options one by one (`model`,
        `revision`, ...; `quantize`: int8 or nf4, the language model quantized by bitsandbytes),
        not both. With no model given, the one the index records (its revision, dtype and
        quantization too, unless given), else DEFAULT_MODEL. `encoder` reuses a loaded one. A
        write waits up to `lock_timeout` seconds for another process's write to finish, calling
        `on_wait` once with a message naming it."""
        options = ModelChoice(
            model=None if model is None else str(model),
            revision=revision,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens or MAX_BATCH_TOKENS,
            quantize=quantize,
        )
        if choice is not None and options != ModelChoice():
            raise InputError("give the model as `choice` or as its options, not both")
        choice = choice or options
        store = Store.open(path, create=create, lock_timeout=lock_timeout, on_wait=on_wait)
        return cls(store, choice, encoder)

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def encoder(self):
        """The encoder, loaded on first use."""
        if self._encoder is None:
            self._check_model()
            self._encoder = self.choice.load()
        return self._encoder

    def _check_model(self) -> None:
        """A recorded model directory that is gone, named before anything tries to load it."""
        if self.from_index and (gone := self.choice.gone()):
            raise ModelLoadError(gone)

    def close(self) -> None:
        """Close the index (the model, if loaded, goes with the engine)."""
        self.store.close()

    def spec(self) -> Spec:
        """The encoder's spec, checked against the index's once: a mismatch raises."""
        if self._spec is None:
            self._spec = self._accept(self.encoder.spec())
        return self._spec

    def _accept(self, spec: Spec) -> Spec:
        """The one check of a spec against the index (SpecMismatchError, or notes to show)."""
        if spec not in self._accepted:
            self._accepted[spec] = self.store.catalog.check_spec(spec)
        return spec

    def notices(self) -> list[str]:
        """What the engine learnt that the user should hear, each line once: index files
        repaired, checkpoint traps repaired (only when the index has not recorded them yet: at
        the ingest that creates it; `info` shows them after), harmless spec differences."""
        from .storage.commits import describe

        store = self.store
        lines = [f"repaired: {line}" for line in store.repairs]
        lines += [f"lost: {describe(lost)}" for lost in [*store.catalog.lost(), store.lost] if lost]
        lines += [f"acknowledged: {describe(lost)}" for lost in store.acknowledged]
        lines += [f"damaged: {line}" for line in store.catalog.damaged_rows.values()]
        repairs = getattr(self._encoder, "repairs", None)
        if repairs and list(repairs) != self._recorded_repairs:
            lines.append(f"model: the checkpoint was repaired on loading: {'; '.join(repairs)}")
        lines += [f"note: {line}" for notes in self._accepted.values() for line in notes]
        new = [line for line in lines if line not in self._shown]
        self._shown.update(new)
        return new

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
        max_memory: int | str | None = None,
        refresh_metadata: bool = False,
        on_phase=None,
        exclude=(),
        stdin_format: str = "txt",
    ) -> IngestReport:
        """Embed and store what is new or changed in `sources`; skip what is stored already.
        Each bad input is recorded (see `errors()`), passed to `on_error`, and skipped.
        `ray` (a ray_backend.RayOptions, or a dict of its fields) runs the work on Ray Data
        instead of local threads.
        At the end each modality's index type follows the collection (storage/policy.py) within
        `max_memory` (bytes or "8GB"; default: the budget a `rebuild --max-memory` recorded,
        else $E5V_MAX_MEMORY, else half the RAM); `on_phase(line)` hears the phases of such a
        switch (sampling, training, adding, merging) as they start, progress and end.
        `refresh_metadata` reads the photo metadata of image files stored unchanged again (no
        model, no new vector; new and changed files always get theirs).
        Sources: folders, globs, files (`~` expanded) and `-`, standard input read as
        `stdin_format` (txt, jsonl, csv, tsv); one that does not exist, or a folder holding
        this index, raises InputError before anything is read. `exclude`: globs of paths or
        of folder and file names to leave out."""
        from .ingest.sources import check_sources

        sources = check_sources(sources, self.path)
        started = time.perf_counter()
        report = IngestReport()
        if ray is not None:
            from .ingest.ray_backend import SHARDS, RayBackend, RayOptions

            ray = RayOptions(**ray) if isinstance(ray, dict) else ray
            self._check_model()

            backend = RayBackend(self.path / SHARDS, self.choice, ray, max_pixels, progress)

            def spec() -> Spec:
                if self._spec is None:
                    self._spec = self._accept(backend.spec())
                return self._spec
        else:
            from .ingest.threads import ThreadBackend

            backend = ThreadBackend(lambda: self.encoder, workers, max_pixels)
            spec = self.spec
        run = Ingestion(
            self.store,
            spec,
            backend,
            report,
            workers=workers,
            on_error=on_error,
            progress=progress,
            refresh_metadata=refresh_metadata,
        )
        # One writer at a time: a second ingest waits, then plans against what this one stored.
        with self.store.writing("ingest"):
            run.run(
                sources,
                text_field=text_field,
                id_field=id_field,
                prune=prune,
                exclude=exclude,
                stdin_format=stdin_format,
            )
            report.index_changes = self.store.follow_policy(self._budget(max_memory), on_phase)
            repairs = getattr(self._encoder, "repairs", None)
            if repairs and self.store.catalog.count():
                self.store.catalog.record_model_repairs(repairs)
        report.seconds = time.perf_counter() - started
        return report

    def _budget(self, max_memory) -> int:
        from .config import index_memory, parse_bytes

        if max_memory is not None:
            return parse_bytes(max_memory) if isinstance(max_memory, str) else int(max_memory)
        return self.store.manifest.max_memory or index_memory()

    def add_embedded(self, records: list[dict], vectors, prompt_version: str) -> list[int]:
        """Store vectors this engine's encoder made with another prompt (evaluation's CIRR
        gallery): items as the catalog takes them, the spec saying which prompt."""
        spec = self._accept(self.encoder.spec().with_prompt(prompt_version))
        with self.store.writing("add"):
            return self.store.add(records, np.asarray(vectors, dtype=np.float32), spec)

    # -- embedding queries ---------------------------------------------------------------------

    def embed_texts(self, texts, progress=None) -> np.ndarray:
        self.spec()
        return self.encoder.embed_texts(list(texts), progress=progress)

    def embed_images(self, images, *, prompt=None, progress=None, workers=0) -> np.ndarray:
        """Images (paths or PIL images) with E5-V's image prompt, or another `prompt` of the
        same form (CIRR's gallery prompt); `workers` decoding threads (None: one per core)."""
        self.spec()
        options = {"prompt": prompt} if prompt else {}
        return self.encoder.embed_images(
            list(images), progress=progress, workers=workers, **options
        )

    def embed_composed(self, images, texts, progress=None) -> np.ndarray:
        """E5-V's image+text query: an image and how to change it."""
        self.spec()
        return self.encoder.embed_composed(list(images), list(texts), progress=progress)

    def embed_counted(self, texts=None, images=None, progress=None):
        """(vectors, tokens of each prompt): texts, images or, given both, composed queries as
        the three methods above embed them, with what the model read (the server's usage)."""
        self.spec()
        return self.encoder.embed_counted(texts, images, progress=progress)

    # -- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image=None,
        *,
        like: int | str | None = None,
        k: int = 10,
        modality: str | None = None,
        where: str | dict | None = None,
        params=(),
        add=(),
        subtract=(),
        mode: str = "vector",
        min_score: float | None = None,
        weight: float = HYBRID_WEIGHT,
        rrf_k: int = RRF_K,
    ) -> Results:
        """Top-k items for a text, an image, both (E5-V's composed query) or a stored item
        (`like`: its id or its record's key, see `like_id`), optionally moved towards `add` and
        away from `subtract` queries (texts, image paths, or (query, weight) pairs). `modality`
        defaults to the other one of the query's ("any" searches both; a keyword search, both);
        `where` is SQL on the items table or a {metadata key: value} dict. `mode`: "vector"
        (cosine), "keyword" (BM25 over the words of `text`: no model needed) or "hybrid" (both
        fused by reciprocal rank, `weight` the vector side's share, `rrf_k` the fusion's k).
        Results scoring below `min_score` (the score of the mode) are cut from the k best:
        `Results.cut` says how many."""
        like = None if like is None else self.like_id(like)
        query, target = self.query_vector(
            text, image, like=like, add=add, subtract=subtract, mode=mode
        )
        results = self.search_vector(
            query,
            target=modality or target,
            k=k + (like is not None),
            where=where,
            params=params,
            text=text,
            mode=mode,
            weight=weight,
            rrf_k=rrf_k,
        )
        return above(min_score, [r for r in results if r.id != like][:k])

    def search_vector(
        self,
        vector,
        *,
        target: str,
        k: int = 10,
        where=None,
        params=(),
        text: str | None = None,
        mode: str = "vector",
        min_score: float | None = None,
        weight: float = HYBRID_WEIGHT,
        rrf_k: int = RRF_K,
    ) -> Results:
        """Top-k items for a query already embedded (None in keyword mode), and in keyword and
        hybrid modes its `text`; `target` is the modality to return (image, text or any): see
        TARGET_OF for what a query of each kind usually wants. `mode`, `min_score`, `weight`
        and `rrf_k` as in `search`."""
        check_mode(mode, text)
        if isinstance(where, dict):
            where, params = metadata_filter(where)
        modality = None if target == "any" else target
        if mode == "keyword":
            hits = self.store.search_keywords(text, k, modality, where, params)
        else:
            query = np.asarray(vector, dtype=np.float32)
            norm = np.linalg.norm(query)
            if norm == 0:
                raise InputError(
                    "the query vector is zero (added and subtracted queries cancel out?)"
                )
            if mode == "hybrid":
                args = (query / norm, text, k, modality, where, params, weight, rrf_k)
                hits = self.store.search_hybrid(*args)
            else:
                hits = self.search_vectors(query / norm, k, target, where=where, params=params)[0]
        rows = {row["id"]: row for row in self.items([h.id for h in hits])}
        return above(min_score, [Result.of(h, rows[h.id]) for h in hits if h.id in rows])

    def collapse(
        self, results: list[Result], threshold: float = DUPLICATE_COSINE
    ) -> list[list[Result]]:
        """Near-identical results once: groups in the results' order, each a result and the
        later ones whose stored vectors are at least `threshold` cosine to it (a resized,
        re-encoded or rotated copy of one photo). A result joins the group of the most similar
        earlier leader, so a copy always sits under a better-ranked original."""
        if not results:
            return []
        vectors = self.vectors([r.id for r in results])
        leaders: list[int] = []
        groups: list[list[Result]] = []
        for n, result in enumerate(results):
            if leaders:
                similarity = vectors[leaders] @ vectors[n]
                best = int(np.argmax(similarity))
                if similarity[best] >= threshold:
                    groups[best].append(result)
                    continue
            leaders.append(n)
            groups.append([result])
        return groups

    def search_vectors(self, queries, k: int, target: str, *, where=None, params=(), among=None):
        """Hits (id, score, modality) per query row, best first: the batch form evaluation
        uses; `among` restricts the search to those item ids."""
        modality = None if target == "any" else target
        return self.store.search(queries, k, modality, where, params, among=among)

    def query_vector(
        self, text=None, image=None, *, like=None, add=(), subtract=(), embedder=None, mode=None
    ) -> tuple[np.ndarray | None, str]:
        """The unit vector of a query and the modality it finds unless told (TARGET_OF): a
        text, an image, both (E5-V's composed query), or a stored item (`like`: more of its
        own kind), moved towards `add` and away from `subtract` (texts, image paths, or
        (term, weight) pairs). `embedder` makes the model calls (the server's one model
        thread, which calls this engine's embed methods); this engine's own by default.
        In `mode` "keyword" nothing is embedded: (None, "any"), words matching words in
        items of either kind."""
        embedder = embedder or self
        given = sum(x is not None for x in (text, image)) + (like is not None)
        if not given or (like is not None and given > 1):
            raise InputError("give a text, an image, both, or the id of a stored item (like)")
        if text is not None and not str(text).strip():
            raise InputError("the query text is empty")
        if mode is not None:
            check_mode(mode, text)
        if mode == "keyword":
            if image is not None or add or subtract:
                raise InputError(
                    "a keyword search matches the words of the query text only: an image, "
                    "--add or --subtract need mode vector or hybrid"
                )
            return None, "any"
        if like is not None:
            like = self.like_id(like)
            rows = self.items([like])
            if not rows:
                raise InputError(f"no item with id {like} in this index")
            query, target = self.vectors([like])[0], rows[0]["modality"]
        elif text is not None and image is not None:
            query, target = embedder.embed_composed([image], [text])[0], TARGET_OF["composed"]
        elif text is not None:
            query, target = embedder.embed_texts([text])[0], TARGET_OF["text"]
        else:
            query, target = embedder.embed_images([image])[0], TARGET_OF["image"]
        for terms, sign in ((add, 1.0), (subtract, -1.0)):
            for term in terms:
                value, weight = term if isinstance(term, tuple) else (term, 1.0)
                query = query + sign * float(weight) * _term_vector(embedder, value)
        norm = np.linalg.norm(query)
        if norm == 0:
            raise InputError("the query vector is zero (added and subtracted queries cancel out?)")
        return np.asarray(query / norm, dtype=np.float32), target

    # -- items ---------------------------------------------------------------------------------

    def items(self, ids) -> list[dict]:
        """The stored items with these ids (unknown ids are left out), in id order."""
        return self.store.catalog.get(ids)

    def vectors(self, ids) -> np.ndarray:
        return self.store.catalog.vectors(ids)

    def like_id(self, value) -> int:
        """The item a `like` names: an item id (a whole number), or the key of a record, the
        value of the --id-field its id came from (`KEY` or `id=KEY`; `id=42` for a key that is
        a number). A key that no item, or more than one, has is an InputError."""
        text = str(value).strip()
        if isinstance(value, int) or text.lstrip("+-").isdigit():  # a number: an id (in range)
            return _item_id(value)
        key = text.removeprefix("id=")
        if not key:
            raise InputError("like: give an item id or a record's key")
        ids = self.store.catalog.ids(where="locator = ?", params=(f"id={key}",)).tolist()
        if not ids:
            raise InputError(
                f"no item has the key {key!r} (the --id-field value it was ingested with); "
                "give an item id (`search --json` shows ids)"
            )
        if len(ids) > 1:
            sources = sorted({Path(row["source"]).name for row in self.items(ids[:20])})
            raise InputError(
                f"{len(ids)} items have the key {key!r} (in {', '.join(sources)}): give one's "
                f"item id (ids {', '.join(map(str, ids[:5]))})"
            )
        return int(ids[0])

    def ids_of(self, keys: list[tuple[str, str]]) -> list[int | None]:
        """The id of the item stored for each (source, locator) key, None where there is none."""
        rows = self.store.catalog.lookup(keys)
        return [rows[key]["id"] if key in rows else None for key in keys]

    def newest(self, k: int, modality: str | None = None) -> list[dict]:
        """The k items (of `modality`) stored last, newest first: the page's first screen. One
        indexed read of k rows, whatever the size of the collection."""
        last = "SELECT id FROM items WHERE ? IS NULL OR modality = ? ORDER BY id DESC LIMIT ?"
        ids = self.store.catalog.ids(where=f"id IN ({last})", params=(modality, modality, k))
        return self.items(ids[::-1])

    def counts(self) -> dict[str, int]:
        return {m: self.store.catalog.count(m) for m in MODALITIES}

    def errors(self) -> list[dict]:
        """The inputs recorded as not ingested, and why, but for files that are gone since."""
        return [row for row in self.store.catalog.errors() if not _gone(row["source"])]

    def clear_errors(self) -> int:
        """Forget every recorded ingest error (the next ingest records what is still wrong);
        returns how many were forgotten."""
        with self.store.writing("clear errors"):
            rows = self.store.catalog.errors()
            self.store.catalog.clear_errors([(row["source"], row["locator"]) for row in rows])
        return len(rows)

    # -- maintenance ---------------------------------------------------------------------------

    def info(self) -> dict:
        info = self.store.info()
        info["repairs"] = list(self.store.repairs)
        info["errors"] = len(self.errors())
        return info

    def rebuild(
        self,
        factory=None,
        *,
        nprobe=None,
        ef_search=None,
        max_memory=None,
        rerank=None,
        on_phase=None,
    ):
        """Rebuild from the stored vectors (no model); see Store.rebuild. `max_memory`: bytes,
        or a size such as "8GB" or "512MiB". `on_phase(line)` hears each phase of the work
        (sampling, training, adding, merging) as it starts, progresses and ends."""
        from .config import parse_bytes

        if factory and max_memory:
            raise InputError("give a FAISS type or a memory budget, not both")
        budget = parse_bytes(max_memory) if isinstance(max_memory, str) else max_memory
        if budget is not None and budget < 1:
            raise InputError(f"max memory {max_memory}: give a size such as 8GB or 512MiB")
        try:
            return self.store.rebuild(
                factory,
                nprobe=nprobe,
                ef_search=ef_search,
                max_memory=budget,
                rerank=rerank,
                say=on_phase,
            )
        except InputError as error:
            if budget is None:
                raise
            raise InputError(f"--max-memory {max_memory}: {error}") from error

    def recall(self, k: int = 10, sample: int = 200) -> dict[str, float]:
        """Each index's recall@k against exact search (faiss_ops.neighbour_recall)."""
        return self.store.recall(k=k, sample=sample)

    def to_delete(
        self, ids=(), source_prefix: str | None = None, where=None, params=(), *, everything=False
    ) -> list[int]:
        """The ids `delete` would remove, nothing written: by ids, by source path prefix, or by
        filter (SQL or a metadata dict). What no one means is refused: an empty or blank
        prefix, ids past SQLite's range, and a prefix or filter that selects every item of the
        index unless `everything` says so (an unset $DIR must not empty an index)."""
        if not ids and source_prefix is None and where is None:
            raise InputError("say what to delete: ids, a source prefix or a filter")
        ids = [_item_id(i) for i in ids]
        if source_prefix is not None and not str(source_prefix).strip():
            raise InputError(
                "the source prefix is empty: it would match every item. Give the folder or "
                "file whose items to delete (an unset shell variable?)"
            )
        if isinstance(where, dict):
            where, params = metadata_filter(where)
        if where is not None and not str(where).strip():
            raise InputError("the filter is empty: give an SQL condition on items")
        catalog = self.store.catalog
        chosen = {row["id"] for row in catalog.get(ids)}  # those that exist
        selected = set()
        if source_prefix is not None:
            prefix = str(source_prefix)
            by_prefix = catalog.ids(where="substr(source, 1, ?) = ?", params=(len(prefix), prefix))
            selected |= set(by_prefix.tolist())
        if where is not None:
            selected |= set(catalog.ids(where=where, params=params).tolist())
        total = catalog.count() or 0
        if selected and len(selected) == total and not everything:
            what = "the source prefix" if where is None else "the filter"
            raise InputError(
                f"{what} selects every item of {self.path} ({total:,}): to delete them all, "
                "say so (`--all`, or everything=True); to start again, remove the index directory"
            )
        return sorted(chosen | selected)

    def delete(
        self, ids=(), source_prefix: str | None = None, where=None, params=(), *, everything=False
    ) -> int:
        """Delete by ids, by source prefix, or by filter (SQL or a metadata dict); see
        `to_delete` for what is refused. Returns how many items were deleted."""
        with self.store.writing("delete"):
            chosen = self.to_delete(ids, source_prefix, where, params, everything=everything)
            return self.store.delete(chosen) if chosen else 0

    def verify(self) -> dict:
        """Every byte of the index directory against what was recorded when it was written
        (storage/verify.py); writes nothing."""
        return self.store.verify()

    def repair(self) -> list[str]:
        """Mend what `verify` finds (storage/store.py `Store.repair`), one line per action."""
        return self.store.repair()

    def refresh(self) -> bool:
        """Follow what other processes committed (see Store.refresh); True if anything did."""
        return self.store.refresh()


def _term_vector(embedder, value) -> np.ndarray:
    """An --add/--subtract term: an image file, or a text. A term that looks like a path (an
    image's extension, or one word with a path separator) but is no file is refused: a typo
    must not become a text query."""
    text = str(value)
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() in IMAGE_EXTENSIONS or (
        ("/" in text or os.sep in text) and len(text.split()) == 1
    )
    if not looks_like_path:
        return embedder.embed_texts([text])[0]
    # exists(), not is_file(): a fifo or device named like an image is refused as one
    if not path.exists():
        raise InputError(
            f"{text!r} looks like an image path but there is no such file: give an image "
            "that exists, or a text (a phrase, with no file extension)"
        )
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise InputError(f"{text!r} is a file but not an image ({kinds}): give an image or a text")
    return embedder.embed_images([path])[0]


def _gone(source: str) -> bool:
    """Whether an error's input was a file that no longer exists (a pattern, standard input,
    or a name stored escaped because it is not UTF-8, records.printable, is never gone)."""
    import glob

    if not os.path.isabs(source) or glob.has_magic(source) or "\\x" in source or "\\u" in source:
        return False
    return not os.path.lexists(source)


def _item_id(value) -> int:
    """An item id as the catalog holds them (SQLite integers, from 1)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"item id {value!r} is not a whole number") from None
    if not 1 <= number <= MAX_ID:
        raise InputError(f"item id {value} is out of range: ids run from 1 to {MAX_ID}")
    return number


__all__ = ["Engine", "IngestReport", "Result", "Results", "TARGET_OF"]
