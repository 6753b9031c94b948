"""The local backend of an ingest run: images decoded in threads one chunk ahead of the model,
so the model is never waiting for pixels; it embeds exactly the outcomes the run says need a
vector."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..config import MAX_PIXELS, default_workers
from ..errors import InputError
from .run import Outcome, embed_each


class ThreadBackend:
    def __init__(self, encoder, workers: int | None = None, max_pixels: int | None = None):
        """`encoder()` gives the loaded encoder (loading it on first call)."""
        self.encoder = encoder
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels or MAX_PIXELS

    def process(self, plans):
        with ThreadPoolExecutor(self.workers) as pool:
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
        images = [o for o in outcomes if o.needs_vector and o.item.modality == "image"]
        preprocessor = self.encoder().preprocessor if images else None
        futures = [pool.submit(prepare_image, o, preprocessor, self.max_pixels) for o in images]
        return outcomes, size, futures

    def _finish(self, outcomes, size, futures):
        for future in futures:
            future.result()
        work = [o for o in outcomes if o.needs_vector]
        if work:
            encoder = self.encoder()
            embed_each(encoder.embed_texts, [o for o in work if o.item.modality == "text"])
            embed_each(encoder.embed_prepared, [o for o in work if o.item.modality == "image"])
        return outcomes, size


def prepare_image(outcome: Outcome, preprocessor, max_pixels: int) -> Outcome:
    """Decode and preprocess an image outcome into its payload; an error is recorded in the
    outcome, never raised, so one bad file cannot stop a run."""
    source = outcome.item.source
    try:
        outcome.payload = preprocessor.prepare_image(source, max_pixels)
        outcome.size = outcome.payload.size
    except InputError as error:
        outcome.fail(str(error).removeprefix(f"{source}: "))
    except OSError as error:
        outcome.fail(f"cannot read ({error.strerror or error})")
    return outcome
