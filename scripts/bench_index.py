"""Catalog + FAISS index benchmark on synthetic clustered 4096-d unit vectors (no model).

    python scripts/bench_index.py [--n 100000] [--record]

Measures: the catalog + index write rate (vectors/s, as ingest writes them: batches of 256 in one
transaction each), then for Flat, HNSW32, IVF-Flat, IVF-PQ, and the type `rebuild --max-memory`
chooses for a tenth of Flat's size (lists merged on disk, with and without exact re-ranking):
build time, peak memory, file size, search QPS (1,000 queries in one call, and one query at a
time) and recall@10 against exact search; the modality restriction by separate indexes against
FAISS id selectors; and a 1M estimate from the per-vector costs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import PeakMemory, gib, machine, record

from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 4096
SPEC = Spec(
    **{
        "model": "synthetic",
        "revision": None,
        "dim": DIM,
        "dtype": "float32",
        "prompt_version": "e5v-1",
        "transformers": "-",
    }
)


def write_rate(path: Path, vectors: np.ndarray, text_share: float) -> tuple[float, Store]:
    store = Store.open(path, create=True)
    n_text = int(len(vectors) * text_share)
    started = time.perf_counter()
    for start in range(0, len(vectors), 256):
        chunk = vectors[start : start + 256]
        items = [
            {
                "modality": "text" if start + i < n_text else "image",
                "source": f"s{start + i}",
                "metadata": {"group": (start + i) % 10},
            }
            for i in range(len(chunk))
        ]
        store.add(items, chunk, SPEC)
    store.save()
    return len(vectors) / (time.perf_counter() - started), store


def measure(store: Store, factory: str | None, queries, exact_ids, **options) -> dict:
    with PeakMemory("cpu") as memory:
        stats = {s["modality"]: s for s in store.rebuild(factory, **options)}["image"]
    stats["memory"] = memory.bytes
    if options.get("max_memory"):
        stats["factory"] += f" (auto for {gib(options['max_memory'])}, lists on disk)"
    return search_stats(store, stats, queries, exact_ids)


def search_stats(store: Store, stats: dict, queries, exact_ids) -> dict:
    """QPS, single-query latency and recall@10 of the image index as users search it."""

    def search(q):
        hits = store.search(q, 10, "image")  # as users search: re-ranked when set
        return None, np.array([[h.id for h in row] + [-1] * (10 - len(row)) for row in hits])

    started = time.perf_counter()
    _, found = search(queries)
    stats["batch_qps"] = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for q in queries[:100]:
        search(q[None])
    stats["single_ms"] = (time.perf_counter() - started) / 100 * 1000
    stats["recall"] = fx.neighbour_recall(found, exact_ids)
    stats["settings"] = fx.search_settings(store.indexes["image"]) or ""
    return stats


def row(s: dict) -> str:
    return (
        f"| {s['factory']} | {s['vectors']:,} | {s['train_seconds']:.1f} | {s['seconds']:.1f} | "
        f"{gib(s['memory'])} | {gib(s['bytes'])} ({s['bytes'] / s['vectors']:,.0f} B/vector) | "
        f"{s['batch_qps']:,.0f} | {s['single_ms']:.2f} | {s['recall']:.3f} | {s['settings']} |"
    )


def estimate_1m(s: dict) -> str:
    """Scale the measured costs to 1M vectors: sizes and add times linearly; exhaustive scans
    (Flat, IVF at a fixed nprobe/nlist share) slow down linearly, HNSW about logarithmically."""
    scale = 1_000_000 / s["vectors"]
    hnsw = s["factory"].startswith("HNSW")
    log_ratio = np.log(1_000_000) / np.log(s["vectors"])
    build = s["train_seconds"] + (s["seconds"] - s["train_seconds"]) * scale * (
        log_ratio if hnsw else 1
    )
    qps = s["batch_qps"] / (log_ratio if hnsw else scale)
    return f"| {s['factory']} | {gib(s['bytes'] * scale)} | {build / 60:,.0f} min | ~{qps:,.0f} |"


def selector_vs_separate(vectors, queries, share=0.01) -> list[str]:
    """Restricting a search to a 1% modality: its own index vs an id selector on one index."""
    n_small = int(len(vectors) * share)
    ids = np.arange(len(vectors), dtype=np.int64)
    rows = []
    for factory in ("Flat", "HNSW32"):
        whole = fx.make(factory, DIM)
        fx.add(whole, ids, vectors)
        own = fx.make(factory, DIM)
        fx.add(own, ids[:n_small], vectors[:n_small])
        _, exact = fx.exact_search(queries, [(ids[:n_small], vectors[:n_small])], 10)
        for label, run in [
            ("separate index", lambda q, own=own: fx.search(own, q, 10)),
            ("id selector", lambda q, whole=whole: fx.search(whole, q, 10, among=ids[:n_small])),
        ]:
            started = time.perf_counter()
            _, found = run(queries)
            qps = len(queries) / (time.perf_counter() - started)
            full = float(np.mean((found >= 0).sum(axis=1) == 10))
            recall = fx.neighbour_recall(found, exact)
            rows.append(f"| {factory} | {label} | {qps:,.0f} | {full:.0%} | {recall:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ivf", type=int, default=512, help="IVF lists")
    parser.add_argument(
        "--budget-share",
        type=float,
        default=0.1,
        help="budget of the auto rows, as a share of Flat's size",
    )
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    data = clustered_vectors(args.n + args.queries, DIM, clusters=1000, seed=0)
    vectors, queries = data[: args.n], data[args.n :]
    _, exact = fx.exact_search(queries, [(np.arange(args.n) + 1, vectors)], 10)
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "indexes") as tmp:
        rate, store = write_rate(Path(tmp) / "bench", vectors, text_share=0.0)
        catalog_mb = store.info()["catalog_bytes"]
        stats = [
            measure(store, factory, queries, exact)
            for factory in ("Flat", "HNSW32", f"IVF{args.ivf},Flat", f"IVF{args.ivf},PQ64")
        ]
        budget = int(args.n * DIM * 4 * args.budget_share)
        auto = measure(store, None, queries, exact, max_memory=budget)
        stats.append(auto)
        store.manifest.indexes["image"].rerank = 100  # the same index, rescored exactly
        reranked = dict(auto, factory=auto["factory"] + ", rerank 100")
        stats.append(search_stats(store, reranked, queries, exact))
        store.close()
    selector_rows = selector_vs_separate(vectors[: min(args.n, 100_000)], queries[:200])
    text = "\n".join(
        [
            f"{args.n:,} synthetic clustered 4096-d unit vectors (1,000 clusters), "
            f"{args.queries:,} held-out queries, k=10, one modality.\n"
            f"Machine: {machine('cpu')}.\nCommand: `python scripts/bench_index.py "
            f"{' '.join(sys.argv[1:])}`\n",
            f"Catalog + index write rate (batches of 256, one transaction each, then an atomic "
            f"save): **{rate:,.0f} vectors/s**; catalog {gib(catalog_mb)} "
            f"({catalog_mb / args.n:,.0f} B/vector: the 16 KiB float32 vector plus the row).\n",
            "| type | vectors | train s | build s | peak memory added | file | QPS (1,000 at once) "
            "| ms per single query | recall@10 | search settings |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *map(row, stats),
            "",
            "Estimated at 1M vectors from the per-vector costs above (not run: a 1M Flat index "
            "is 16.4 GB, most of this machine's 24 GB):\n",
            "| type | file | build | QPS (batch) |",
            "|---|---|---|---|",
            *map(estimate_1m, stats),
            "",
            f"Restricting a search to a 1% modality ({int(min(args.n, 100_000) * 0.01):,} of "
            f"{min(args.n, 100_000):,} vectors, 200 queries): its own index, as the store does, "
            "or one index searched through a FAISS id selector.\n",
            "| type | restriction | QPS | queries with all 10 results | recall@10 |",
            "|---|---|---|---|---|",
            *selector_rows,
        ]
    )
    print(text)
    if args.record:
        record("index", text)


if __name__ == "__main__":
    main()
