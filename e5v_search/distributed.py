"""Ingest on Ray Data: the same sources, dedupe and bad-input rules as the plain ingest, with the
work spread over CPU and GPU actors on one machine or a cluster.

    driver: scan + plan (ingest.py) -> Ray Data: CPU actors hash, decode and preprocess images
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import E5VSearchError
from .ingest import Outcome, prepare_outcome
from .preprocess import PreparedImage
from .sources import SourceError

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
    def __init__(self, ingestion, options: RayOptions):
        self.run = ingestion
        self.options = options
        self.folder = ingestion.store.path / SHARDS
        self.folder.mkdir(exist_ok=True)

    def process(self, plans):
        plans = list(plans)  # planning is cheap and happens on the driver
        engine = self.run.engine
        model = (engine.model, engine.encoder_options.get("revision"))
        shards = [self.folder / f"{_digest(model, outcomes)}.npz" for outcomes, _ in plans]
        todo = [
            (number, outcomes)
            for number, ((outcomes, _), shard) in enumerate(zip(plans, shards, strict=True))
            if _work(outcomes) and not shard.exists()
        ]
        results = self._pipeline(todo) if todo else iter(())
        if any(_work(outcomes) for outcomes, _ in plans):
            self._check_spec()
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

    def _check_spec(self) -> None:
        """The actors' spec, from the checkpoint's config: the driver never loads the weights."""
        from .encoder import spec_from_config

        options = self.run.engine.encoder_options
        device = "cuda" if self._gpus() else "cpu"
        spec = spec_from_config(
            self.run.engine.model, options.get("revision"), device, options.get("dtype")
        )
        self.run.catalog.check_spec(spec, purpose="ingest")
        self.run.spec = spec

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
        context.enable_progress_bars = bool(self.run.progress)
        engine = self.run.engine
        model_args = dict(model=engine.model, **engine.encoder_options)
        rows = [
            _to_row(number, pos, outcome)
            for number, outcomes in todo
            for pos, outcome in enumerate(_work(outcomes))
        ]
        if gpus:
            embed_resources = {"num_gpus": 1}
            model_args["device"] = "cuda"
        else:
            embed_resources = {"num_cpus": 1}
            model_args["device"] = "cpu"
        prep_actors = max(
            1, int(ray.cluster_resources().get("CPU", 2)) - (gpus or self.options.cpu_actors) - 1
        )
        dataset = (
            # One block per chunk: chunks stream through the stages and prepare in parallel.
            ray.data.from_items(rows, override_num_blocks=max(1, len(todo)))
            .map_batches(
                _Prepare,
                fn_constructor_kwargs={"model_args": model_args, "max_pixels": self.run.max_pixels},
                batch_size=8,
                compute=ray.data.ActorPoolStrategy(size=prep_actors),
                num_cpus=1,
            )
            .map_batches(
                _Embed,
                fn_constructor_kwargs={"model_args": model_args},
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
    """CPU actor: hash, decode and preprocess images (texts pass through)."""

    def __init__(self, model_args: dict, max_pixels: int):
        from .preprocess import Preprocessor

        self.preprocessor = Preprocessor.from_pretrained(
            model_args["model"], model_args.get("revision")
        )
        self.max_pixels = max_pixels

    def __call__(self, batch: dict) -> dict:
        pixels, sizes, hashes, errors, tokens = [], [], [], [], []
        for i in range(len(batch["pos"])):
            outcome = _from_row(batch, i)
            prepare_outcome(outcome, self.preprocessor, self.max_pixels)
            prepared = outcome.payload if isinstance(outcome.payload, PreparedImage) else None
            pixels.append(_pack(prepared.pixel_values) if prepared else b"")
            sizes.append(list(outcome.size or (0, 0)))
            tokens.append(prepared.n_tokens if prepared else 0)
            hashes.append(outcome.content_hash or "")
            errors.append(outcome.error.reason if outcome.error else "")
        batch.update(
            pixels=np.array(pixels, dtype=object),  # bytes: one column type in every batch
            size=np.array(sizes, dtype=np.int64),
            n_tokens=np.array(tokens, dtype=np.int64),
            content_hash=np.array(hashes, dtype=object),
            error=np.array(errors, dtype=object),
        )
        return batch


class _Embed:
    """GPU (or CPU) actor: the encoder, loaded once; one bad item fails only itself."""

    def __init__(self, model_args: dict):
        from .encoder import E5VEncoder

        args = dict(model_args)
        self.encoder = E5VEncoder.from_pretrained(args.pop("model"), **args)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["pos"])
        vectors = np.zeros((n, self.encoder.dim), dtype=np.float32)
        errors = list(batch["error"])
        wanted = [
            i for i in range(n)
            if not errors[i] and batch["content_hash"][i] != batch["stored_hash"][i]
        ]  # fmt: skip
        for kind in ("text", "image"):
            chosen = [i for i in wanted if batch["modality"][i] == kind]
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
    """The outcomes a backend must work on: images (to hash) and texts that need a vector."""
    return [o for o in outcomes if o.item.modality == "image" or o.needs_vector]


def _to_row(number: int, pos: int, outcome: Outcome) -> dict:
    item = outcome.item
    return {
        "chunk": number,
        "pos": pos,
        "modality": item.modality,
        "source": item.source,
        "text": item.text or "",
        "content_hash_in": outcome.content_hash or "",
        "stored_hash": (outcome.row or {}).get("content_hash") or "",
    }


def _from_row(batch: dict, i: int) -> Outcome:
    from .sources import SourceItem

    stored = batch["stored_hash"][i]
    item = SourceItem(batch["modality"][i], batch["source"][i], text=batch["text"][i] or None)
    outcome = Outcome(item, {"content_hash": stored} if stored else None)
    outcome.content_hash = batch["content_hash_in"][i] or None
    return outcome


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
        outcome.error = SourceError(outcome.item.source, outcome.item.locator, row["error"])
        return
    outcome.content_hash = row["content_hash"] or outcome.content_hash
    if outcome.item.modality == "image" and row["size"][0]:
        outcome.size = (int(row["size"][0]), int(row["size"][1]))
    if outcome.needs_vector:
        outcome.vector = np.asarray(row["vector"], dtype=np.float32)


def _write_shard(path: Path, work: list[Outcome]) -> None:
    """The chunk's results, atomically: a shard file exists only when it is whole."""
    dim = next((len(o.vector) for o in work if o.vector is not None), 1)
    vectors = np.stack(
        [o.vector if o.vector is not None else np.zeros(dim, np.float32) for o in work]
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(
            f,
            vectors=vectors,
            has_vector=np.array([o.vector is not None for o in work]),
            hashes=np.array([o.content_hash or "" for o in work]),
            sizes=np.array([o.size or (0, 0) for o in work], dtype=np.int64),
            errors=np.array([o.error.reason if o.error else "" for o in work]),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_shard(path: Path, work: list[Outcome]) -> None:
    with np.load(path) as data:
        for i, outcome in enumerate(work):
            row = {
                "error": str(data["errors"][i]),
                "content_hash": str(data["hashes"][i]),
                "size": data["sizes"][i],
                "vector": data["vectors"][i] if data["has_vector"][i] else None,
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
