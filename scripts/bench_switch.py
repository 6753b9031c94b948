"""A policy switch's time by phase and the recall it keeps, its PQ codebooks trained three ways
side by side in one run on one catalog: as FAISS trains them (256 points a centroid, every
thread: faiss_ops.FAISS_TRAINING), on 64 points a centroid with one thread (ONE_THREAD, what a
switch did before) and on 64 with every thread (TRAINING, what a switch does now).

    python scripts/bench_switch.py --n 100000 --record
    python scripts/bench_switch.py --n 5000 --factory IVF64,PQ64     # a quick look
    python scripts/bench_switch.py --n 1000000 --variants bounded --record

bench_scale.py's synthetic 4096-d vectors (a shared mean direction, 64 topics, bursts of 20
near neighbours), stored in float16 as E5-V's GPU ingest stores them. Each variant builds the
index as `rebuild.switch` does (lists merged on disk), its phases said with their times; then
recall@10 of 100 new queries (each near one burst) against exact search over the catalog,
with the index alone and with the policy's re-ranking of 100 candidates.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import numpy as np
from bench_scale import BURST, SPEC, vectors
from benchlib import machine, record

from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage import ondisk, rebuild
from e5v_search.storage.search import search_modality
from e5v_search.storage.store import Store

QUERIES = 100
VARIANTS = {
    "faiss": ("FAISS's: 256 points a centroid, every thread", fx.FAISS_TRAINING),
    "one-thread": ("64 points a centroid, one thread (before)", fx.ONE_THREAD),
    "bounded": ("64 points a centroid, every thread (now)", fx.TRAINING),
}
CHUNK = 1000
BLOCK = 20_000


def fill(store: Store, n: int, dim: int) -> None:
    """n vectors into the catalog (and a Flat index), one writing block per BLOCK: each save
    seals the delta into a segment that is mapped, not read, so memory stays bounded (one
    block at 1M x 4096-d would hold 16 GB in the delta)."""
    spec = Spec(**{**SPEC, "dim": dim})
    for block in range(0, n, BLOCK):
        with store.writing("bench"):
            for first in range(block, min(n, block + BLOCK), CHUNK):
                count = min(CHUNK, n - first)
                items = [
                    {"modality": "image", "source": f"/p/{i}.jpg"}
                    for i in range(first, first + count)
                ]
                store.add(items, vectors(first, count, dim), spec)


def variant(store: Store, factory: str, training, queries, exact) -> dict:
    began = time.perf_counter()

    def say(line):
        print(f"  [{time.perf_counter() - began:7.1f} s] {line}", flush=True)

    with store.writing("bench"):
        built = rebuild.build(
            store.path,
            store.catalog,
            store.manifest,
            "image",
            factory,
            on_disk=True,
            rerank=ondisk.RERANK,
            release=lambda: store.drop_index("image"),
            say=say,
            training=training,
        )
        store.install(built)
    index = store.indexes["image"]
    args = ("image", store.catalog, queries, 10, None, (), None)
    _, alone = search_modality(index, *args, None)
    _, reranked = search_modality(index, *args, ondisk.RERANK)
    return {
        "points": built.stats["train_points"],
        "phases": built.stats["phases"],
        "seconds": built.stats["seconds"],
        "alone": fx.neighbour_recall(alone, exact),
        "reranked": fx.neighbour_recall(reranked, exact),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--factory", help="the type to switch to [what the policy picks at n]")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="which trainings to run [all three]",
    )
    parser.add_argument("--record", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    lists = ondisk._nlist(args.n)
    factory = args.factory or f"IVF{lists},PQ{min(512, args.dim // 8)}"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/ix", create=True)
        began = time.perf_counter()
        fill(store, args.n, args.dim)
        print(f"stored {args.n:,} vectors in {time.perf_counter() - began:.0f} s", flush=True)
        rng = np.random.default_rng(7)
        bursts = rng.integers(0, math.ceil(args.n / BURST), QUERIES)
        queries = vectors(args.n, QUERIES, args.dim, bursts=bursts, seed=1)
        _, exact = fx.exact_search(queries, store.catalog.iter_vectors("image"), 10)
        runs = {}
        for name, training in (VARIANTS[variant] for variant in args.variants):
            print(f"{name}: {factory}, {training}", flush=True)
            runs[name] = variant(store, factory, training, queries, exact)
            print(f"  {runs[name]}", flush=True)
        store.close()
    rows = [
        f"| {name} | {r['points']:,} | {r['phases'].get('sample', 0):.1f} | "
        f"{r['phases'].get('train', 0):.1f} | {r['phases'].get('add', 0):.1f} | "
        f"{r['phases'].get('merge', 0):.1f} | **{r['seconds']:.1f}** | {r['alone']:.3f} | "
        f"{r['reranked']:.3f} |"
        for name, r in runs.items()
    ]
    (base, first), *others = runs.items()
    ratio = " ".join(
        f"{name}: {first['seconds'] / r['seconds']:.2f}x the speed of {base.split(':')[0]}."
        for name, r in others
    )
    command = " ".join(sys.argv[1:])
    table = "\n".join(
        [
            f"A switch to {factory} (lists on disk) at {args.n:,} synthetic {args.dim}-d "
            f"vectors (bench_scale.py's), {len(runs)} training{'s' * (len(runs) > 1)} in one "
            "run on one catalog; "
            f"recall@10 of {QUERIES} queries against exact search. Machine: "
            f"{machine('cpu')}. `python scripts/bench_switch.py {command}`.",
            "",
            "| codebooks trained | trained on | reading (s) | training (s) | adding (s) "
            "| merging (s) | switch (s) | recall@10 alone | re-ranked (100) |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"{ratio} The IVF k-means is the same in all, on every thread, and so is the sample."
            if others
            else "The IVF k-means on every thread.",
        ]
    )
    print(table)
    if args.record:
        subset = "" if len(runs) == len(VARIANTS) else " " + "+".join(args.variants)
        record(f"switch {args.n}{subset}", table)


if __name__ == "__main__":
    sys.exit(main())
