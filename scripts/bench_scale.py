"""Grow one index directory to millions of vectors as ingests do, and measure what each step costs.

    python scripts/bench_scale.py --steps 100000 250000 500000 1000000 2000000 --record
    python scripts/bench_scale.py --steps 5000 20000 --max-memory 50MB     # a quick look

Synthetic 4096-d unit vectors with the anisotropy of last-token LLM embeddings (a shared mean
direction) and the structure of photo collections: 64 topics, and in each, bursts of 20 items
(shots of one scene, pages of one document) whose true neighbours are each other, a little
noise apart. (With isotropic noise alone, every item of a topic is about as near as any
other: nothing is a neighbour, and no compressed index can tell them apart; real embeddings
are not like that.) Written through `Store.add` in chunks of 1,000 under the writer lock,
as ingest writes them (no model), with the index policy applied after every ingest of 50,000
(as `e5v-search ingest` does at its end) within `--max-memory`. The spec says float16, as E5-V
computes on a GPU, so the catalog keeps 8 KiB vectors. Per step:

- the writer's peak RSS during the step (VmHWM, reset at the step's start), and the time to add
  1,000 more, save and apply the policy (one small ingest);
- in a NEW process (page cache warm: this machine cannot drop it; Python's imports not counted):
  the time to open the index and answer one search, and that process's peak RSS;
- recall@10 of 100 new queries against exact search over the catalog, with the index alone and
  with its re-ranking; QPS one query at a time with re-ranking; and Flat's QPS, one query at a
  time on a Flat index of the first 100,000 vectors, scaled by 100,000 / n (Flat's cost is
  linear in n, and 2M Flat vectors, 30.5 GiB, do not fit in this machine's memory);
- the disk per vector (catalog + index files).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import machine, record

from e5v_search.config import parse_bytes
from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage.search import search_modality
from e5v_search.storage.store import Store

CHUNK = 1000
INGEST = 50_000  # vectors per simulated ingest: the policy runs at the end of each
FLAT_SAMPLE = 100_000
QUERIES = 100
SPEC = dict(model="synthetic", dim=0, dtype="float16", prompt_version="e5v-1")

OPEN_AND_SEARCH = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from e5v_search.storage.store import Store
imported = time.perf_counter()
store = Store.open(sys.argv[1])
opened = time.perf_counter()
query = np.random.default_rng(1).standard_normal((1, store.catalog.dim)).astype("float32")
store.search(query / np.linalg.norm(query), 10)
done = time.perf_counter()
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"open": opened - imported, "search": done - opened, "rss": hwm * 1024}))
"""


BURST, TOPICS = 20, 64


def _unit(rng, rows: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((rows, dim), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def vectors(first: int, n: int, dim: int, bursts=None, seed: int = 0) -> np.ndarray:
    """Items first..first+n-1 (item i is in burst i // BURST, unless `bursts` says): 0.6 of a
    mean direction shared by all, a topic, 0.35 of the burst's own direction, 0.25 of noise."""
    bursts = np.arange(first, first + n) // BURST if bursts is None else np.asarray(bursts)
    mean = _unit(np.random.default_rng(0), 1, dim)
    topics = _unit(np.random.default_rng(1), TOPICS, dim)
    own = {b: _unit(np.random.default_rng((2, int(b))), 1, dim)[0] for b in np.unique(bursts)}
    noise = _unit(np.random.default_rng((3, first, seed)), n, dim)
    out = 0.6 * mean + topics[bursts % TOPICS] + 0.35 * np.stack([own[b] for b in bursts])
    out += 0.25 * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def ingest(store: Store, start: int, n: int, spec: Spec, budget: int, made=None) -> list[str]:
    """What `e5v-search ingest` does with the vectors (`made`, or made here): add them in
    chunks under the writer lock, save, apply the policy."""
    with store.writing("bench"):
        for first in range(start, start + n, CHUNK):
            count = min(CHUNK, start + n - first)
            items = [
                {"modality": "image", "source": f"/photos/{i}.jpg"}
                for i in range(first, first + count)
            ]
            store.add(items, made if made is not None else vectors(first, count, spec.dim), spec)
    return store.follow_policy(budget)


def cold(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", OPEN_AND_SEARCH, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


def peak() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) * 1024


def quality(store: Store, queries: np.ndarray) -> dict:
    """Recall@10 alone and re-ranked against exact search over the catalog; QPS."""
    entry = store.manifest.indexes["image"]
    index = store.indexes["image"]
    chunks = store.catalog.iter_vectors("image")
    _, exact = fx.exact_search(queries, chunks, 10)
    _, alone = search_modality(index, "image", store.catalog, queries, 10, None, (), None, None)
    rerank = entry.rerank
    began = time.perf_counter()
    found = [
        search_modality(index, "image", store.catalog, q[None], 10, None, (), None, rerank)[1][0]
        for q in queries
    ]
    qps = len(queries) / (time.perf_counter() - began)
    flat = fx.make("Flat", store.catalog.dim)
    sample = next(store.catalog.iter_vectors("image", batch=FLAT_SAMPLE))
    fx.add(flat, *sample)
    began = time.perf_counter()
    for q in queries[:20]:
        flat.search(q[None], 10)
    flat_qps = 20 / (time.perf_counter() - began) * len(sample[0]) / store.catalog.count("image")
    del flat, sample
    return {
        "alone": fx.neighbour_recall(alone, exact),
        "reranked": fx.neighbour_recall(np.array(found), exact),
        "rerank": rerank,
        "qps": qps,
        "flat_qps": flat_qps,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100000, 250000, 500000])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--max-memory", default="1GB", help="the index policy's budget")
    parser.add_argument("--dir", help="index directory to grow (default: a temporary one)")
    parser.add_argument("--record", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    spec, budget = Spec(**{**SPEC, "dim": args.dim}), parse_bytes(args.max_memory)
    path = Path(args.dir or tempfile.mkdtemp(prefix="e5v-scale-")) / "ix"
    rows, held = [], 0
    store = Store.open(path, create=True)
    for target in args.steps:
        reset_peak()
        began = time.perf_counter()
        while held < target - CHUNK:
            n = min(INGEST, target - CHUNK - held)
            for change in ingest(store, held, n, spec, budget):
                print(f"  at {held + n:,}: {change}", flush=True)
            held += n
        grown = time.perf_counter() - began
        made = vectors(held, CHUNK, spec.dim)
        began = time.perf_counter()
        ingest(store, held, CHUNK, spec, budget, made)  # the measured 1,000 more: one ingest
        seconds = time.perf_counter() - began
        held = target
        writer = peak()
        opened = cold(path)
        # New items of stored bursts: their true neighbours are the burst's stored items.
        bursts = np.random.default_rng(target).integers(0, target // BURST, QUERIES)
        measured = quality(store, vectors(0, QUERIES, args.dim, bursts, seed=1))
        disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        info = store.info()["indexes"]["image"]
        kind = f"{info['factory']}{' on disk' if info['on_disk'] else ''}, {info['segments']} seg."
        rows.append(
            f"| {target:,} | {kind} | {_gib(writer)} | {seconds:.2f} s | "
            f"{opened['open']:.3f} s + {opened['search']:.3f} s, {_gib(opened['rss'])} | "
            f"{measured['alone']:.3f} / {measured['reranked']:.3f} ({measured['rerank']}) | "
            f"{measured['qps']:.1f} vs {measured['flat_qps']:.2f} | "
            f"**{measured['qps'] / measured['flat_qps']:.0f}x** | {disk / target / 1024:.1f} KiB |"
        )
        print(rows[-1], f"(step grown in {grown:.0f} s)", flush=True)
    store.close()
    table = (
        f"{args.dim}-d synthetic vectors (a shared mean direction, 64 topics, bursts of "
        f"{BURST} near neighbours), one modality, "
        f"added through `Store.add` in chunks of {CHUNK:,} as ingest writes them, the index "
        f"policy after every {INGEST:,} within --max-memory {args.max_memory}; float16 catalog.\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `python scripts/bench_scale.py {' '.join(sys.argv[1:])}`\n\n"
        "| vectors | index | writer peak RSS (step) | add 1,000 + save + policy | new process: "
        "open + 1 search, peak RSS | recall@10 alone / re-ranked (candidates) | QPS, one query "
        "at a time: index vs Flat | faster | disk per vector |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(table)
    if args.record:
        record("scale", table)


if __name__ == "__main__":
    main()
