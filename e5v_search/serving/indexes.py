"""The indexes a server serves: each an engine behind its own lock, with its thumbnails, under a
name (its directory's), one model for all.

FAISS and catalog reads take milliseconds, so one lock per index is enough; a refresh (what a
CLI ingest, delete or rebuild committed meanwhile) must not run beside a search of the same
index. The first index is the page's and /api's; clip-retrieval's `indice_name` picks any.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException

from ..config import HYBRID_WEIGHT, MAX_K
from ..errors import InputError
from ..results import Results, above
from .thumbnails import ThumbnailCache, thumbnail_folder


@dataclass
class Ranking:
    """How a request ranks: its mode, score threshold and hybrid weight."""

    mode: str = "vector"
    min_score: float | None = None
    weight: float = HYBRID_WEIGHT

    def options(self) -> dict:
        return {"mode": self.mode, "min_score": self.min_score, "weight": self.weight}


class ServedIndex:
    def __init__(self, engine, thumbnail_cache_bytes: int = 256 * 2**20):
        self.engine = engine
        self.name = engine.path.name
        self.thumbnails = ThumbnailCache(thumbnail_folder(engine.path), thumbnail_cache_bytes)
        self._lock = threading.Lock()

    def search(self, vector, target, k, filters=None, collapse=False, text=None, ranking=None):
        """The top k results, each a group of one, or collapsed into k groups of copies; in
        keyword and hybrid modes (`ranking`) by `text` too. A Results list of groups."""
        options = (ranking or Ranking()).options()
        min_score = options.pop("min_score")

        def top(n: int):
            where = filters or None
            return self.engine.search_vector(
                vector, target=target, k=n, where=where, text=text, **options
            )

        with self._lock:
            self.engine.refresh()
            return self._groups(top, k, collapse, min_score)

    def like(self, item_id, k, target, filters, collapse=False, ranking=None):
        options = (ranking or Ranking()).options()
        min_score = options.pop("min_score")

        def top(n: int):
            where = filters or None
            return self.engine.search(like=item_id, k=n, modality=target, where=where, **options)

        with self._lock:
            self.engine.refresh()
            if not self.engine.items([item_id]):
                raise HTTPException(404, f"no item with id {item_id}")
            return self._groups(top, k, collapse, min_score)

    def _groups(self, top: Callable[[int], list], k: int, collapse: bool, min_score) -> Results:
        """The top k results, each a group of one; collapsed, k groups of near-identical results
        (Engine.collapse), from candidates fetched deeper (4k, then 16k...) until k groups are
        found, the index has no more, or MAX_K candidates were looked at. Then the groups whose
        best result scores below `min_score` are cut (`cut` says how many)."""
        if not collapse:
            groups = [[result] for result in top(k)]
        else:
            depth = min(4 * k, MAX_K)
            while True:
                results = top(depth)
                groups = self.engine.collapse(results)
                if len(groups) >= k or len(results) < depth or depth == MAX_K:
                    break
                depth = min(4 * depth, MAX_K)
            groups = groups[:k]
        kept = above(min_score, [group[0] for group in groups])
        leaders = {result.id for result in kept}
        return Results([g for g in groups if g[0].id in leaders], cut=kept.cut)

    def collapse(self, results):
        with self._lock:
            return self.engine.collapse(results)

    def items(self, ids) -> list[dict]:
        with self._lock:
            return self.engine.items(ids)

    def item(self, item_id: int, image: bool = False) -> dict:
        rows = self.items([item_id])
        if image and rows and (rows[0]["modality"] != "image" or not rows[0]["source"]):
            rows = []
        if not rows:
            raise HTTPException(404, f"no {'image' if image else 'item'} with id {item_id}")
        return rows[0]

    def info(self) -> dict:
        with self._lock:
            self.engine.refresh()
            return self.engine.info()

    def counts(self) -> dict:
        with self._lock:
            return self.engine.counts()

    def newest(self, k: int, modality: str) -> list[dict]:
        with self._lock:
            self.engine.refresh()
            return self.engine.newest(k, modality)


class Served(dict):
    """name -> ServedIndex, in the order given; the first is the default."""

    def __init__(self, engines, thumbnail_cache_bytes: int = 256 * 2**20):
        super().__init__()
        for engine in engines:
            index = ServedIndex(engine, thumbnail_cache_bytes)
            if index.name in self:
                raise InputError(
                    f"two indexes are named {index.name!r} ({self[index.name].engine.path} and "
                    f"{engine.path}): clients pick an index by its folder's name, so serve "
                    "folders of different names"
                )
            self[index.name] = index
        self.default = next(iter(self.values()))

    def get_index(self, name: str | None) -> ServedIndex:
        """The index of that name (None: the first), or a 404 naming the ones served."""
        if name is None:
            return self.default
        if name not in self:
            raise HTTPException(
                404, f"no index named {str(name)[:100]!r}: this server serves {', '.join(self)}"
            )
        return self[name]
