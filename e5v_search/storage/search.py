"""How one modality's index is searched: plainly, with a filter (a FAISS id selector, or the
stored vectors scored directly when the candidates are few), and re-ranked (candidates rescored
exactly from the stored vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import faiss_ops as fx

# Below this many candidates, a filtered search scores the stored vectors directly: exact, and
# cheaper than a FAISS pass with a selector.
EXACT_CANDIDATES = 4096
_READ_CHUNK = 20000


@dataclass
class Searchable:
    index: object  # the index as stored (what an id selector needs)
    fast: object  # the same index, or its GPU copy, for plain searches
    modality: str


def search_modality(index: Searchable, catalog, queries, k, where, params, among, rerank):
    """(scores, ids) of the top k per query row. `where` (SQL on items) and `among` (ids)
    restrict the search inside the index; `rerank` > k rescores that many candidates."""
    if rerank and rerank > k:
        _, candidates = _search(index, catalog, queries, rerank, where, params, among)
        return _rescore(catalog, queries, candidates, k)
    return _search(index, catalog, queries, k, where, params, among)


def _search(index: Searchable, catalog, queries, k, where, params, among):
    if where is None and among is None:
        return fx.search(index.fast, queries, k)
    candidates = catalog.ids(index.modality, where, params)
    if among is not None:
        candidates = np.intersect1d(candidates, np.asarray(among, dtype=np.int64))
    if len(candidates) > EXACT_CANDIDATES:
        try:
            return fx.search(index.index, queries, k, among=candidates)
        except RuntimeError:
            pass  # this type has no id-selector search: score the candidates directly
    chunks = (
        catalog.readable_vectors(candidates[i : i + _READ_CHUNK])  # damaged rows left out
        for i in range(0, len(candidates), _READ_CHUNK)
    )
    return fx.exact_search(queries, chunks, k)


def _rescore(catalog, queries, candidates: np.ndarray, k: int):
    """Exact scores of each query's candidates from the stored vectors: the top-k order of
    exact search among them, whatever the index compressed away."""
    unique, vectors = catalog.readable_vectors(np.unique(candidates[candidates >= 0]))
    position = {int(i): n for n, i in enumerate(unique)}  # a damaged row is not among them
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for row, ids in enumerate(candidates):
        keep = np.array([int(i) in position for i in ids], dtype=bool)
        rows = [position[int(i)] for i in ids[keep]]
        scores[row, keep] = vectors[rows] @ queries[row] if rows else []
    return fx.top_k(scores, candidates, k)
