"""float32 or float16 vectors in the catalog: size, write and read speed, and what search loses.

    python scripts/bench_catalog.py --n 50000 --record

The same synthetic 4096-d vectors as bench_scale.py (a shared mean direction, topics, bursts of
near neighbours) go into two catalogs through `Store.add`, one whose spec says float32 (a CPU
model) and one float16 (E5-V on a GPU). Side by side: bytes per vector on disk, the time to
write them and to read them all back (what a rebuild does), exact search over each catalog
against exact search over the float32 vectors, and an IVF-PQ index re-ranked from each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_scale import BURST, vectors
from benchlib import machine, record

from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage.search import search_modality
from e5v_search.storage.store import Store

CHUNK = 1000


def build(path: Path, n: int, dim: int, dtype: str) -> dict:
    spec = Spec(model="synthetic", dim=dim, dtype=dtype, prompt_version="e5v-1")
    store = Store.open(path, create=True)
    made = [vectors(first, min(CHUNK, n - first), dim) for first in range(0, n, CHUNK)]
    began = time.perf_counter()
    with store.writing("bench"):
        for first, chunk in zip(range(0, n, CHUNK), made, strict=True):
            items = [{"modality": "image", "source": str(i)} for i in range(first, first + CHUNK)]
            store.add(items[: len(chunk)], chunk, spec)
    written = time.perf_counter() - began
    began = time.perf_counter()
    for _ in store.catalog.iter_vectors("image"):
        pass
    read = time.perf_counter() - began
    size = sum(p.stat().st_size for p in path.glob("catalog.sqlite*"))
    return {"store": store, "write": written, "read": read, "bytes": size / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="e5v-catalog-"))
    runs = {d: build(folder / d, args.n, args.dim, d) for d in ("float32", "float16")}
    bursts = np.random.default_rng(7).integers(0, args.n // BURST, 200)
    queries = vectors(0, len(bursts), args.dim, bursts, seed=1)
    truth = runs["float32"]["store"].catalog.iter_vectors("image")
    _, exact = fx.exact_search(queries, truth, 10)
    trained = None
    rows = []
    for dtype, run in runs.items():
        store = run["store"]
        _, found = fx.exact_search(queries, store.catalog.iter_vectors("image"), 10)
        if trained is None:
            store.rebuild("IVF256,PQ64")
            trained = store.indexes["image"]
        index = trained
        _, reranked = search_modality(
            index, "image", store.catalog, queries, 10, None, (), None, 100
        )
        rows.append(
            f"| {dtype} | {run['bytes']:,.0f} B | {args.n / run['write']:,.0f} /s | "
            f"{args.n / run['read']:,.0f} /s | {fx.neighbour_recall(found, exact):.4f} | "
            f"{fx.neighbour_recall(reranked, exact):.4f} |"
        )
        print(rows[-1], flush=True)
    table = (
        f"{args.n:,} synthetic {args.dim}-d vectors (bench_scale.py's), 200 queries, k=10.\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `python scripts/bench_catalog.py {' '.join(sys.argv[1:])}`\n\n"
        "| catalog vectors | catalog per vector | write | read all (rebuild) | exact search: "
        "recall@10 vs float32 | IVF256,PQ64 re-ranked (100) from it: recall@10 |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(table)
    if args.record:
        record("catalog", table)


if __name__ == "__main__":
    main()
