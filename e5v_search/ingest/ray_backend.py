"""The Ray Data backend of an ingest run: the run (run.py) scans, hashes and decides on the
driver, as for the local backend, so both follow one dedupe rule; this backend only prepares and
embeds what the run hands it, spread over CPU and GPU actors on one machine or a cluster.

    driver: scan + plan + decide (run.py) -> Ray Data: CPU actors decode and preprocess images
    -> GPU actors (one per GPU, the encoder loaded once each) embed -> driver: each input chunk's
    results written to a shard file, then committed to the catalog and index in order.

A rerun after the driver dies finds the chunks already committed unchanged, and takes the
vectors of chunks whose shard file was written from the file instead of embedding them again.
Ray Data restarts dead actors and retries their tasks; an error on one item is recorded as that
item's error, never the job's.
Ray is an optional extra (`pip install e5v-search[ray]`): nothing else imports this module.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import MAX_PIXELS
from ..errors import E5VSearchError
from ..files import write_bytes
from ..model.preprocess import PreparedImage
from .run import Outcome
from .threads import prepare_image

SHARDS = "ray-shards"
log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    address: str | None = None  # None: a local Ray instance on this machine
    gpus: int | None = None  # GPU actors (default: every GPU Ray sees; none: CPU actors)
    cpu_actors: int = 1  # embedding actors when there is no GPU
    batch_size: int = 16  # items per batch handed to an embedding actor
    object_store_bytes: int = 512 * 2**20  # local instance only: Ray would take 30% of RAM


class RayBackend:
    def __init__(self, folder: Path, model, options: RayOptions, max_pixels=None, progress=None):
        """`model`: the ModelChoice each actor loads; shard files go in `folder`."""
        self.model = model
        self.options = options
        self.max_pixels = max_pixels or MAX_PIXELS
        self.progress = progress
        self.folder = Path(folder)
        self.folder.mkdir(exist_ok=True)

    def spec(self):
        """The actors' spec, from the checkpoint's config: the driver never loads the weights."""
        return self.model.spec_on("cuda" if self._gpus() else "cpu")

    def process(self, plans):
        plans = list(plans)  # planning is cheap and happens on the driver
        key = (self.model.model, self.model.revision)
        shards = [self.folder / f"{_digest(key, outcomes)}.npz" for outcomes, _ in plans]
        todo = [
            (number, outcomes)
            for number, ((outcomes, _), shard) in enumerate(zip(plans, shards, strict=True))
            if _work(outcomes) and not shard.exists()
        ]
        results = self._pipeline(todo) if todo else iter(())
        for number, (outcomes, size) in enumerate(plans):
            work = _work(outcomes)
            if work and shards[number].exists():
                _read_shard(shards[number], work)
            elif work:
                for row in _rows_of_chunk(results, number, len(work)):
                    _apply(work[row["pos"]], row)
                _write_shard(shards[number], work)
            yield outcomes, size
        for shard in shards:  # committed: the catalog holds them now
            shard.unlink(missing_ok=True)

    def _gpus(self) -> int:
        import ray

        _start_ray(self.options)
        if self.options.gpus is not None:
            return self.options.gpus
        return int(ray.cluster_resources().get("GPU", 0))

    def _pipeline(self, todo):
        import ray
        import ray.data

        gpus = self._gpus()
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-execution INFO lines
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # chunks commit in scan order
        context.enable_progress_bars = bool(self.progress)
        rows = [
            _to_row(number, pos, outcome)
            for number, outcomes in todo
            for pos, outcome in enumerate(_work(outcomes))
        ]
        model = replace(self.model, device="cuda" if gpus else "cpu")
        embed_resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        prep_actors = max(
            1, int(ray.cluster_resources().get("CPU", 2)) - (gpus or self.options.cpu_actors) - 1
        )
        dataset = (
            # One block per chunk: chunks stream through the stages and prepare in parallel.
            ray.data.from_items(rows, override_num_blocks=max(1, len(todo)))
            .map_batches(
                _Prepare,
                fn_constructor_kwargs={"model": model, "max_pixels": self.max_pixels},
                batch_size=8,
                compute=ray.data.ActorPoolStrategy(size=prep_actors),
                num_cpus=1,
            )
            .map_batches(
                _Embed,
                fn_constructor_kwargs={"model": model},
                batch_size=self.options.batch_size,
                compute=ray.data.ActorPoolStrategy(size=gpus or self.options.cpu_actors),
                **embed_resources,
            )
        )
        return iter(dataset.iter_rows())  # one execution, consumed chunk by chunk


def _start_ray(options: RayOptions) -> None:
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.ERROR)
    common = {"logging_level": logging.ERROR, "log_to_driver": False, "ignore_reinit_error": True}
    if options.address:
        ray.init(address=options.address, **common)
        return
    cores = os.cpu_count() or 2
    ray.init(
        # On a 2-core machine an actor pool that takes every CPU starves the tasks that move
        # blocks between stages: declare more logical CPUs than cores.
        num_cpus=max(4, cores),
        object_store_memory=options.object_store_bytes,
        include_dashboard=False,
        _temp_dir=os.path.join(tempfile.gettempdir(), "ray-e5v"),
        **common,
    )


class _Prepare:
    """CPU actor: decode and preprocess images (texts pass through)."""

    def __init__(self, model, max_pixels: int):
        from ..model.preprocess import Preprocessor

        self.preprocessor = Preprocessor.from_pretrained(model.model, model.revision)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict) -> dict:
        pixels, sizes, errors, tokens = [], [], [], []
        for i in range(len(batch["pos"])):
            outcome = _from_row(batch, i)
            if outcome.item.modality == "image":
                prepare_image(outcome, self.preprocessor, self.max_pixels)
            prepared = outcome.payload if isinstance(outcome.payload, PreparedImage) else None
            pixels.append(_pack(prepared.pixel_values) if prepared else b"")
            sizes.append(list(outcome.size or (0, 0)))
            tokens.append(prepared.n_tokens if prepared else 0)
            errors.append(outcome.error.reason if outcome.error else "")
        batch.update(
            pixels=np.array(pixels, dtype=object),  # bytes: one column type in every batch
            size=np.array(sizes, dtype=np.int64),
            n_tokens=np.array(tokens, dtype=np.int64),
            error=np.array(errors, dtype=object),
        )
        return batch


class _Embed:
    """GPU (or CPU) actor: the encoder, loaded once; one bad item fails only itself."""

    def __init__(self, model):
        self.encoder = model.load()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["pos"])
        vectors = np.zeros((n, self.encoder.dim), dtype=np.float32)
        errors = list(batch["error"])
        for kind in ("text", "image"):
            chosen = [i for i in range(n) if not errors[i] and batch["modality"][i] == kind]
            for i, vector, error in self._embed(batch, chosen, kind):
                vectors[i], errors[i] = vector, error
        batch["vector"] = vectors
        batch["error"] = np.array(errors, dtype=object)
        del batch["pixels"]
        return batch

    def _embed(self, batch, chosen, kind):
        def run(indices):
            if kind == "text":
                return self.encoder.embed_texts([batch["text"][i] for i in indices], progress=False)
            prepared = [
                PreparedImage(
                    _unpack(batch["pixels"][i]), tuple(batch["size"][i]), int(batch["n_tokens"][i])
                )
                for i in indices
            ]
            return self.encoder.embed_prepared(prepared, progress=False)

        if not chosen:
            return
        try:
            for i, vector in zip(chosen, run(chosen), strict=True):
                yield i, vector, ""
        except Exception:  # noqa: BLE001 - find the item that failed, alone
            for i in chosen:
                try:
                    yield i, run([i])[0], ""
                except Exception as error:  # noqa: BLE001
                    yield i, np.zeros(self.encoder.dim, np.float32), f"embedding failed: {error}"


# -- rows, shards ----------------------------------------------------------------------------


def _work(outcomes: list[Outcome]) -> list[Outcome]:
    """What the run handed this backend: the outcomes that need a vector."""
    return [o for o in outcomes if o.needs_vector]


def _to_row(number: int, pos: int, outcome: Outcome) -> dict:
    item = outcome.item
    return {
        "chunk": number,
        "pos": pos,
        "modality": item.modality,
        "source": item.source,
        "text": item.text or "",
    }


def _from_row(batch: dict, i: int) -> Outcome:
    from .sources import SourceItem

    item = SourceItem(batch["modality"][i], batch["source"][i], text=batch["text"][i] or None)
    return Outcome(item, None)


def _rows_of_chunk(results, number: int, count: int):
    rows = []
    for row in results:
        if row["chunk"] != number:
            raise E5VSearchError(f"ray rows out of order: chunk {row['chunk']}, expected {number}")
        rows.append(row)
        if len(rows) == count:
            return rows
    raise E5VSearchError(f"the ray pipeline ended early: chunk {number} has {len(rows)} of {count}")


def _apply(outcome: Outcome, row: dict) -> None:
    if row["error"]:
        outcome.fail(row["error"])
        return
    if outcome.item.modality == "image" and row["size"][0]:
        outcome.size = (int(row["size"][0]), int(row["size"][1]))
    outcome.vector = np.asarray(row["vector"], dtype=np.float32)


def _write_shard(path: Path, work: list[Outcome]) -> None:
    """The chunk's results, atomically: a shard file exists only when it is whole."""
    dim = next((len(o.vector) for o in work if o.vector is not None), 1)
    vectors = np.stack(
        [o.vector if o.vector is not None else np.zeros(dim, np.float32) for o in work]
    )
    arrays = {
        "vectors": vectors,
        "has_vector": np.array([o.vector is not None for o in work]),
        "sizes": np.array([o.size or (0, 0) for o in work], dtype=np.int64),
        "errors": np.array([o.error.reason if o.error else "" for o in work]),
    }
    write_bytes(path, lambda f: np.savez(f, **arrays))


def _read_shard(path: Path, work: list[Outcome]) -> None:
    with np.load(path) as data:
        for i, outcome in enumerate(work):
            row = {
                "error": str(data["errors"][i]),
                "size": data["sizes"][i],
                "vector": data["vectors"][i],
            }
            _apply(outcome, row)


def _digest(model, outcomes: list[Outcome]) -> str:
    """A chunk's identity: the model and each piece of work's key and state. A source changed
    since its shard was written gives another digest, so a stale shard is never used."""
    digest = hashlib.sha256(repr(model).encode())
    for o in _work(outcomes):
        item = o.item
        state = (item.source, item.locator, item.file_size, item.file_mtime_ns, o.content_hash)
        digest.update(repr(state).encode())
    return digest.hexdigest()[:24]


def _pack(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _unpack(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
