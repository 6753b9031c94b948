"""The FAISS side as plain numpy-in, numpy-out functions over FAISS indexes (inner product on
unit vectors); segments.py builds one modality's index from them.

FAISS ids are catalog item ids, never positions: IVF types store them natively, every other type
is wrapped in `IndexIDMap2`. Files are written atomically (temp file, fsync, `os.replace`).
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist, get_invlist_sizes

from ..errors import IndexBuildError
from ..files import replacing

TRAIN_SAMPLE_PER_LIST = 64
TRAIN_SAMPLE_MAX = 100_000
TRAIN_BYTES = 2 * 2**30


def make(factory: str, dim: int) -> faiss.Index:
    """An empty index of this FAISS factory type, searching by inner product, keyed by ids."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexBuildError(
            f"cannot make FAISS index {factory!r} for {dim}-d vectors: {_faiss_message(error)}. "
            "Use a FAISS factory string such as Flat, HNSW32, IVF4096,Flat, IVF4096,PQ64, SQfp16"
        ) from error
    _skip_polysemous_training(index)
    if ivf_of(index) is None:
        index = faiss.IndexIDMap2(index)
    set_search_defaults(index)
    return index


def _skip_polysemous_training(index) -> None:
    """PQ types train a code permutation for polysemous (Hamming) filtering by default. Searches
    here never use it, and it takes 100x the rest of training (6 s vs 0.08 s for IVF64,PQ8 on
    2,000 vectors here): the same as writing PQ8np."""
    part = index
    while part is not None:
        part = faiss.downcast_index(part)
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
        part = getattr(part, "index", None)  # IndexPreTransform wraps the index it feeds


def ivf_of(index):
    """The IVF index inside `index` (under an id map or a rotation), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index):
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return inner if hasattr(inner, "hnsw") else None


def set_search_defaults(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """FAISS's defaults (nprobe 1, efSearch 16) trade too much recall; these keep recall@10 of
    a well-trained index near 0.95 on clustered data (see docs/benchmarks.md)."""
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = nprobe or min(ivf.nlist, max(16, 2 * round(math.sqrt(ivf.nlist))))
    hnsw = hnsw_of(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = ef_search or 128


def search_settings(index) -> dict:
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    out = {}
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
    if hnsw is not None:
        out["ef_search"] = int(hnsw.hnsw.efSearch)
    return out


@dataclass(frozen=True)
class Training:
    """How PQ codebooks are trained. FAISS's own way (FAISS_TRAINING) trains each of the M
    sub-quantizers (256 centroids) on 256 points a centroid, 65,536 residuals: for PQ512 that
    is 512 small k-means, most of a switch's training at 100k vectors (docs/benchmarks.md).
    Here 64 points a centroid (FAISS warns below 39), on every thread: one thread for the
    codebooks (ONE_THREAD, what switches did before) won on a 2-core machine at load 10 but
    took twice as long on a quiet one (bench_switch.py)."""

    codebook_points: int = 64  # per centroid; OPQ's rotation is trained on as many
    codebook_threads: int | None = None  # None: one index.train with FAISS's threads


TRAINING = Training()
FAISS_TRAINING = Training(codebook_points=256)
ONE_THREAD = Training(codebook_threads=1)


def train(index, vectors: np.ndarray, factory: str, training: Training = TRAINING) -> None:
    """Train `index` on `vectors`; a clear error when they are too few for this type."""
    if index.is_trained:
        return
    ivf = ivf_of(index)
    if ivf is not None and faiss.get_num_gpus() > 0:
        # k-means on the GPU: the slow part of training IVF types with many lists.
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    _bound_codebooks(index, training.codebook_points)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with _native_stderr() as native:
        try:
            if training.codebook_threads is None:
                index.train(vectors)
            else:
                _train_in_steps(index, vectors, training.codebook_threads)
        except RuntimeError as error:
            raise IndexBuildError(
                f"cannot train {factory!r} on {len(vectors)} vectors: {_faiss_message(error)}. "
                "Use Flat or HNSW32 (no training) until there are more, or fewer IVF lists."
            ) from error
    advice = sorted(set(re.findall(r"please provide at least (\d+) training points", native())))
    if advice:
        warnings.warn(
            f"{factory}: trained on {len(vectors)} vectors; FAISS advises at least {advice[-1]}",
            stacklevel=2,
        )


def _train_in_steps(index, vectors: np.ndarray, threads: int) -> None:
    """What index.train does, the codebooks with `threads` OpenMP threads: a rotation (OPQ)
    first, on every thread, then the IVF lists' k-means on every thread (train_q1; the
    index's own training then skips it), then the rest (the codebooks)."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        for i in range(outer.chain.size()):
            transform = outer.chain.at(i)
            if not transform.is_trained:
                transform.train(vectors)
            vectors = np.ascontiguousarray(transform.apply(vectors), dtype=np.float32)
        _train_in_steps(outer.index, vectors, threads)
        outer.is_trained = True
        return
    ivf = ivf_of(index)
    if ivf is not None and not ivf.quantizer.is_trained:
        ivf.train_q1(len(vectors), faiss.swig_ptr(vectors), False, ivf.metric_type)
    with _omp_threads(threads):  # OpenMP's thread count is per calling thread
        index.train(vectors)


@contextmanager
def _omp_threads(n: int):
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _bound_codebooks(index, per_centroid: int) -> None:
    """Train PQ codebooks (and an OPQ rotation) on `per_centroid` points per centroid."""
    part = index
    while part is not None:
        part = faiss.downcast_index(part)
        if isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):
                transform = faiss.downcast_VectorTransform(part.chain.at(i))
                if isinstance(transform, faiss.OPQMatrix):
                    transform.max_train_points = per_centroid * 256
        pq = getattr(part, "pq", None)
        if pq is not None:
            pq.cp.max_points_per_centroid = per_centroid
        part = getattr(part, "index", None)


def train_sample_size(factory: str, available: int, dim: int = 4096) -> int:
    """How many vectors to train on: enough per IVF list or PQ centroid, and at most
    TRAIN_BYTES of float32 (65536 lists would otherwise ask for 4M x 16 KiB = 68 GB)."""
    lists = [int(n) for n in re.findall(r"IVF(\d+)", factory)] or [256]
    wanted = max(TRAIN_SAMPLE_MAX, TRAIN_SAMPLE_PER_LIST * lists[0])
    return min(available, wanted, TRAIN_BYTES // (4 * dim))


def add(index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))


def remove(index, ids: np.ndarray) -> bool:
    """Remove ids (absent ones are ignored); False when the type cannot remove (HNSW)."""
    if not len(ids):
        return True
    try:
        index.remove_ids(faiss.IDSelectorBatch(ids.astype(np.int64)))
    except RuntimeError:
        return False
    return True


def ids_of(index) -> np.ndarray:
    """Every id an index holds."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = ivf_of(index).invlists
    parts = [get_invlist(invlists, int(i))[0] for i in np.flatnonzero(get_invlist_sizes(invlists))]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def search(index, queries: np.ndarray, k: int, among: np.ndarray | None = None, selector=None):
    """(scores, ids), each (n_queries, k); ids -1 where fewer than k exist. `among` restricts
    the search to those ids inside FAISS (an id selector), so k results come back when k exist;
    or pass a FAISS `selector`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if among is None and selector is None:
        return index.search(queries, k)
    if selector is None:
        selector = faiss.IDSelectorBatch(among.astype(np.int64))
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    elif hnsw is not None:
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.hnsw.efSearch)
    else:
        params = faiss.SearchParameters(sel=selector)
    return index.search(queries, k, params=params)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, ids) of each row, best first, equal scores by smaller id; an id < 0
    (no result) counts as -inf and comes back as -1. The one merge every search path uses
    (chunks of an exact search, an on-disk base and its delta, re-ranked candidates, two
    modalities, evaluation's brute force). `ids` is per row or one row shared by all."""
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.broadcast_to(np.asarray(ids, dtype=np.int64), scores.shape)
    valid = ids >= 0
    scores = np.where(valid, scores, -np.inf)
    order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), -scores))[:, :k]
    best_scores = np.take_along_axis(scores, order, axis=1)
    best_ids = np.take_along_axis(ids, order, axis=1).copy()
    best_ids[~np.isfinite(best_scores)] = -1
    return best_scores, best_ids


def exact_search(queries: np.ndarray, chunks, k: int, exclude_self: bool = False):
    """Brute-force top-k over (ids, vectors) chunks, memory bounded by one chunk: the ground
    truth that approximate indexes are measured against. With `exclude_self`, a chunk id equal
    to the query's own id (passed as `queries` = (ids, vectors)) is skipped."""
    query_ids, queries = queries if exclude_self else (None, queries)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, vectors in chunks:
        scores = queries @ vectors.T
        if exclude_self:
            scores[query_ids[:, None] == ids[None, :]] = -np.inf
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        best_scores, best_ids = top_k(all_scores, all_ids, k)
    return best_scores, best_ids


def neighbour_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """How much of exact search an approximate index keeps: the mean share of each query's
    exact top-k ids found in its approximate top-k (a fraction, 0..1). Not evaluation's
    Recall@K, which asks whether a relevant item was found at all."""
    hits = [
        len(set(f[f >= 0]) & set(e[e >= 0])) / max((e >= 0).sum(), 1)
        for f, e in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def save(index, path: Path) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    with replacing(path) as tmp:
        faiss.write_index(index, str(tmp))


def load(path: Path, mmap: bool = False):
    """Read an index file. With `mmap` its vectors stay in the file and are paged in as
    searches touch them: opening is O(1) in the collection's size. A mapped index must never be
    changed (FAISS aborts the process): take `owned(index)` first."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def owned(index):
    """A copy of `index` that holds its own data, so it can be changed."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def _faiss_message(error: Exception) -> str:
    text = str(error)
    match = re.search(r"Error: '.*?' failed: (.*)", text) or re.search(r"Error: (.*)", text)
    return (match.group(1) if match else text).strip().splitlines()[0]


@contextmanager
def _native_stderr():
    """Capture what FAISS's C++ code prints on stderr (k-means warnings, one per sub-quantizer)
    so it becomes one Python warning instead of hundreds of lines."""
    captured = tempfile.TemporaryFile(mode="w+b")
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    text = []
    try:
        yield lambda: "".join(text)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        text.append(captured.read().decode(errors="replace"))
        captured.close()


@contextmanager
def native_output():
    """FAISS's C++ lines on stdout and stderr ("updating ondisk filename", "resizing ...")
    kept off the user's terminal."""
    with _native_stderr(), _native_stdout():
        yield


class _native_stdout:
    """Like _native_stderr, for the lines FAISS's C++ code prints on stdout."""

    def __enter__(self):
        sys.stdout.flush()  # what Python buffered goes out before fd 1 is swapped
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)

    def __exit__(self, *exc):
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._file.close()
        return False
