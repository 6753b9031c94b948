"""The indexes a server serves: each an engine behind its own lock, with its thumbnails, under a
name (its directory's), one model for all.

FAISS and catalog reads take milliseconds, so one lock per index is enough; a refresh (what a
CLI ingest, delete or rebuild committed meanwhile) must not run beside a search of the same
index. The first index is the page's and /api's; clip-retrieval's `indice_name` picks any.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi import HTTPException

from ..config import MAX_K
from ..errors import InputError
from .thumbnails import ThumbnailCache, thumbnail_folder


class ServedIndex:
    def __init__(self, engine, thumbnail_cache_bytes: int = 256 * 2**20):
        self.engine = engine
        self.name = engine.path.name
        self.thumbnails = ThumbnailCache(thumbnail_folder(engine.path), thumbnail_cache_bytes)
        self._lock = threading.Lock()

    def search(self, vector, target: str, k: int, filters=None, collapse: bool = False):
        """The top k results, each a group of one; collapsed, k groups of copies (_groups)."""

        def top(n: int):
            return self.engine.search_vector(vector, target=target, k=n, where=filters or None)

        with self._lock:
            self.engine.refresh()
            return self._groups(top, k, collapse)

    def like(self, item_id: int, k: int, target: str | None, filters: dict, collapse=False):
        def top(n: int):
            where = filters or None
            return self.engine.search(like=item_id, k=n, modality=target, where=where)

        with self._lock:
            self.engine.refresh()
            if not self.engine.items([item_id]):
                raise HTTPException(404, f"no item with id {item_id}")
            return self._groups(top, k, collapse)

    def _groups(self, top: Callable[[int], list], k: int, collapse: bool) -> list[list]:
        """The top k results, each a group of one; collapsed, k groups of near-identical results
        (Engine.collapse), from candidates fetched deeper (4k, then 16k...) until k groups are
        found, the index has no more, or MAX_K candidates were looked at."""
        if not collapse:
            return [[result] for result in top(k)]
        depth = min(4 * k, MAX_K)
        while True:
            results = top(depth)
            groups = self.engine.collapse(results)
            if len(groups) >= k or len(results) < depth or depth == MAX_K:
                return groups[:k]
            depth = min(4 * depth, MAX_K)

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
