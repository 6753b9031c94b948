"""One thread that owns the model, for the server.

`ModelWorker` runs every model call on a single thread, so a GPU never gets two forward passes
at once however many requests arrive; text queries waiting together are embedded in one batch
(micro-batching), and repeated texts come from a bounded LRU cache without touching the model.
It is given the engine and calls its embed methods (so every vector passes the engine's spec
check), and offers the same three methods itself: `Engine.query_vector(..., embedder=worker)`
turns a request into a query with the engine's one set of rules.
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
        with self._cache_lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        vector = self._submit("text", text)
        with self._cache_lock:
            self._cache[text] = vector
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vector

    def embed_image(self, image: Image.Image, text: str | None = None) -> np.ndarray:
        """An uploaded image, alone or with a modification text (E5-V's composed query)."""
        return self._submit("composed" if text else "image", (image, text))

    # The engine's embed methods, as Engine.query_vector calls them (one item at a time here).

    def embed_texts(self, texts, progress=None) -> np.ndarray:
        return np.stack([self.embed_text(text) for text in texts])

    def embed_images(self, images, progress=None, workers=0) -> np.ndarray:
        return np.stack([self.embed_image(image) for image in images])

    def embed_composed(self, images, texts, progress=None) -> np.ndarray:
        pairs = zip(images, texts, strict=True)
        return np.stack([self._submit("composed", pair) for pair in pairs])

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=10)

    def _submit(self, kind, payload) -> np.ndarray:
        future: Future = Future()
        self._jobs.put((kind, payload, future))
        return future.result()

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
        try:
            if kind == "text":
                self.batches.append(len(batch))
                del self.batches[:-KEPT_BATCHES]
                vectors = self.engine.embed_texts([p for _, p, _ in batch], progress=False)
            elif kind == "image":
                vectors = self.engine.embed_images([batch[0][1][0]], progress=False, workers=0)
            else:
                image, text = batch[0][1]
                vectors = self.engine.embed_composed([image], [text], progress=False)
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
            for _, _, future in batch:
                future.set_exception(error)
            return
        for (_, _, future), vector in zip(batch, vectors, strict=True):
            future.set_result(vector)
