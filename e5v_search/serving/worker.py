"""One thread that owns the model, for the server.

`ModelWorker` runs every model call on a single thread, so a GPU never gets two forward passes
at once however many requests arrive; text queries waiting together are embedded in one batch
(micro-batching), and repeated texts come from a bounded LRU cache without touching the model.
It is given the engine and calls its embed methods (so every vector passes the engine's spec
check), and offers the same three methods itself: `Engine.query_vector(..., embedder=worker)`
turns a request into a query with the engine's one set of rules. `texts_counted` and
`image_counted` also give the tokens of each prompt (the OpenAI-compatible routes' usage).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
from PIL import Image

_STOP = object()
KEPT_BATCHES = 1024  # sizes of the latest text batches kept (for tests and stats)


class ModelWorker:
    def __init__(self, engine, max_batch: int = 32, cache_size: int = 1024):
        self.engine = engine
        self.max_batch = max_batch
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes of the latest text batches run, at most KEPT_BATCHES
        self._thread = threading.Thread(target=self._loop, name="e5v-model", daemon=True)
        self._thread.start()

    def embed_text(self, text: str) -> np.ndarray:
        return self.texts_counted([text])[0][0]

    def texts_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors of one or more texts and the tokens of each prompt. The texts not in the
        cache are queued at once, one job each, so the loop embeds them in batches (beside
        other requests' texts waiting with them); this returns when all are done."""
        found: dict[str, tuple[np.ndarray, int]] = {}
        with self._cache_lock:
            for text in texts:
                if text in self._cache:
                    self._cache.move_to_end(text)
                    found[text] = self._cache[text]
        new = [text for text in dict.fromkeys(texts) if text not in found]
        queued = {text: self._queue("text", text) for text in new}
        for text, future in queued.items():
            found[text] = future.result()
        with self._cache_lock:
            for text in queued:
                self._cache[text] = found[text]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack([found[t][0] for t in texts]), [found[t][1] for t in texts]

    def image_counted(self, image: Image.Image, text: str | None = None) -> tuple[np.ndarray, int]:
        """An uploaded image, alone or with a modification text (E5-V's composed query), and
        the tokens of its prompt (the image's included)."""
        return self._queue("composed" if text else "image", (image, text)).result()

    def embed_image(self, image: Image.Image, text: str | None = None) -> np.ndarray:
        return self.image_counted(image, text)[0]

    # The engine's embed methods, as Engine.query_vector calls them (one item at a time here).

    def embed_texts(self, texts, progress=None) -> np.ndarray:
        return self.texts_counted(list(texts))[0]

    def embed_images(self, images, progress=None, workers=0) -> np.ndarray:
        return np.stack([self.embed_image(image) for image in images])

    def embed_composed(self, images, texts, progress=None) -> np.ndarray:
        pairs = zip(images, texts, strict=True)
        return np.stack([self.embed_image(image, text) for image, text in pairs])

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=10)

    def _queue(self, kind, payload) -> Future:
        """A job for the model thread; its future gives (vector, prompt tokens)."""
        future: Future = Future()
        self._jobs.put((kind, payload, future))
        return future

    def _loop(self) -> None:
        held = None  # a job taken while gathering texts, to run next
        while True:
            job, held = (held, None) if held is not None else (self._jobs.get(), None)
            if job is _STOP:
                return
            batch = [job]
            while job[0] == "text" and len(batch) < self.max_batch:
                try:
                    extra = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if extra is _STOP or extra[0] != "text":
                    held = extra
                    break
                batch.append(extra)
            self._run(batch)

    def _run(self, batch) -> None:
        kind = batch[0][0]
        embed = self.engine.embed_counted
        try:
            if kind == "text":
                self.batches.append(len(batch))
                del self.batches[:-KEPT_BATCHES]
                vectors, tokens = embed(texts=[p for _, p, _ in batch], progress=False)
            elif kind == "image":
                vectors, tokens = embed(images=[batch[0][1][0]], progress=False)
            else:
                image, text = batch[0][1]
                vectors, tokens = embed(texts=[text], images=[image], progress=False)
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
            for _, _, future in batch:
                future.set_exception(error)
            return
        for (_, _, future), vector, count in zip(batch, vectors, tokens, strict=True):
            future.set_result((vector, count))
