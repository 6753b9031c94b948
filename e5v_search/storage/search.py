"""How one modality's index is searched: plainly, with a filter (an id selector inside the
segments, or the stored vectors scored directly when the candidates are few), and re-ranked
(candidates rescored exactly from the stored vectors); and how well it keeps exact search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import IndexDamagedError, InputError
from . import faiss_ops as fx
from .catalog import MODALITIES
from .catalog_reads import READ_CHUNK

# Below this many candidates, a filtered search scores the stored vectors directly: exact, and
# cheaper than a FAISS pass with a selector.
EXACT_CANDIDATES = 4096


@dataclass
class Hit:
    id: int
    score: float
    modality: str


def merged(found: dict, k: int, rows: int) -> list[list[Hit]]:
    """The top k of each query row over the modalities searched ({modality: (scores, ids)}),
    by score (ties by id: faiss_ops.top_k)."""
    if not found:
        return [[] for _ in range(rows)]
    scores = np.hstack([scores for scores, _ in found.values()])
    ids = np.hstack([ids for _, ids in found.values()])
    modality_of = {int(i): m for m, (_, row) in found.items() for i in row.ravel() if i >= 0}
    scores, ids = fx.top_k(scores, ids, k)
    return [
        [Hit(int(i), float(s), modality_of[int(i)]) for s, i in zip(*row, strict=True) if i >= 0]
        for row in zip(scores, ids, strict=True)
    ]


def search(store, queries, k, modality, where, params, among) -> list[list[Hit]]:
    """A store's search (Store.search): each modality asked (a damaged one named with what
    mends it), the answers merged by score."""
    queries = check_queries(queries, k, modality, store.catalog.dim)
    found = {}  # modality -> (scores, ids)
    for mod in [modality] if modality else list(MODALITIES):
        if mod in store.damaged:
            raise IndexDamagedError(store.damaged[mod])
        if mod not in store.indexes:
            continue
        rerank = store.manifest.entry(mod).rerank
        args = (store.catalog, queries, k, where, params, among, rerank)
        try:
            found[mod] = search_modality(store.indexes[mod], mod, *args)
        except IndexDamagedError as error:
            store.damaged[mod] = (
                f"{error}. `e5v-search rebuild --index {store.path}` rebuilds the {mod} index "
                "from the catalog; `e5v-search verify` checks every file"
            )
            raise IndexDamagedError(store.damaged[mod]) from error
    return merged(found, k, len(queries))


def check_queries(queries, k: int, modality: str | None, dim: int | None) -> np.ndarray:
    """The queries as a float32 matrix, or InputError saying what is wrong with the request."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    check_request(k, modality)
    if dim is not None and queries.shape[1] != dim:
        raise InputError(f"queries have {queries.shape[1]} values, the index {dim}")
    return queries


def check_request(k: int, modality: str | None) -> None:
    """InputError unless k is at least 1 and the modality is one the index holds (or None)."""
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")


def search_modality(index, modality, catalog, queries, k, where, params, among, rerank):
    """(scores, ids) of the top k per query row of one modality's segments.Segments. `where`
    (SQL on items) and `among` (ids) restrict the search inside the index; `rerank` > k
    rescores that many candidates."""
    if rerank and rerank > k:
        _, candidates = _search(index, modality, catalog, queries, rerank, where, params, among)
        return _rescore(catalog, queries, candidates, k)
    return _search(index, modality, catalog, queries, k, where, params, among)


def _search(index, modality, catalog, queries, k, where, params, among):
    if where is None and among is None:
        return index.search(queries, k)
    candidates = catalog.ids(modality, where, params)
    if among is not None:
        candidates = np.intersect1d(candidates, np.asarray(among, dtype=np.int64))
    if len(candidates) > EXACT_CANDIDATES:
        try:
            return index.search(queries, k, among=candidates)
        except RuntimeError:
            pass  # this type has no id-selector search: score the candidates directly
    chunks = (
        catalog.readable_vectors(candidates[i : i + READ_CHUNK])  # damaged rows left out
        for i in range(0, len(candidates), READ_CHUNK)
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


def recall(store, k: int = 10, sample: int = 200, seed: int = 0) -> dict[str, float]:
    """recall@k of each modality's index against exact search, with a sample of stored
    vectors of each modality as queries (their own id excluded): 'text->image' etc."""
    catalog, out = store.catalog, {}
    for query_modality in MODALITIES:
        query_ids = catalog.sample_ids(query_modality, sample, seed)
        if not len(query_ids):
            continue
        query_ids, queries = catalog.readable_vectors(query_ids)
        for target, index in store.indexes.items():
            rerank = store.manifest.indexes[target].rerank
            args = (catalog, queries, k + 1, None, (), None, rerank)  # as users search
            _, found = search_modality(index, target, *args)
            found = np.array(
                [[i for i in row if i != q][:k] for row, q in zip(found, query_ids, strict=True)]
            )
            chunks = catalog.iter_vectors(target, batch=READ_CHUNK)
            _, exact = fx.exact_search((query_ids, queries), chunks, k, exclude_self=True)
            out[f"{query_modality}->{target}"] = fx.neighbour_recall(found, exact)
    return out
