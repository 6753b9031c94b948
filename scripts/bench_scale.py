"""Grow one index directory step by step, as ingests do, and measure what each step costs.

    python scripts/bench_scale.py --steps 20000 50000 100000
    python scripts/bench_scale.py --steps 20000 50000 100000 --record

Synthetic 4096-d unit vectors with the anisotropy of last-token LLM embeddings (a shared mean
direction plus clusters), written through `Store.add` in chunks of 1,000 under the writer lock,
as ingest writes them (no model). Per step: the writer's peak RSS, the time to add 1,000 more and
save, then in a NEW process (page cache warm: this machine cannot drop it; Python's imports not
counted) the time to open the index and answer one search and that process's peak RSS, side by
side: the files mapped and probed (now) and read whole and hashed whole (before); and the disk
per vector (catalog + index files). The index type is whatever the store has (Flat by default):
the baseline the segment work of issue 13 is measured against.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import machine, record

from e5v_search.spec import Spec
from e5v_search.storage.store import Store

CHUNK = 1000
SPEC = dict(model="synthetic", dim=0, dtype="float32", prompt_version="e5v-1")

OPEN_AND_SEARCH = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from e5v_search.storage import store as store_module
imported = time.perf_counter()
if sys.argv[2] == "whole":  # as before mapping: files read whole, each hashed whole
    from e5v_search.files import sha256_of
    load = store_module.fx.load
    def read_whole(path, mmap=False):
        sha256_of(path)
        return load(path)
    store_module.fx.load = read_whole
store = store_module.Store.open(sys.argv[1])
opened = time.perf_counter()
query = np.random.default_rng(1).standard_normal((1, store.catalog.dim)).astype("float32")
store.search(query / np.linalg.norm(query), 10)
done = time.perf_counter()
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"import": imported - started, "open": opened - imported,
                  "search": done - opened, "rss": hwm * 1024}))
"""


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors: 0.6 of a mean direction shared by all, a cluster centre, and noise."""
    rng = np.random.default_rng(seed)
    mean = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    centres = np.random.default_rng(1).standard_normal((64, dim)).astype(np.float32)
    mean /= np.linalg.norm(mean)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    out = 0.6 * mean + centres[rng.integers(0, len(centres), n)] + 0.5 * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def add(store: Store, start: int, n: int, spec: Spec) -> None:
    with store.writing("bench"):
        for first in range(start, start + n, CHUNK):
            count = min(CHUNK, start + n - first)
            items = [{"modality": "image", "source": f"/photos/{i}.jpg"}
                     for i in range(first, first + count)]  # fmt: skip
            store.add(items, vectors(count, spec.dim, seed=first), spec)


def cold(path: Path, how: str) -> dict:
    result = subprocess.run([sys.executable, "-c", OPEN_AND_SEARCH, str(path), how],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(result.stdout)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dir", help="index directory to grow (default: a temporary one)")
    parser.add_argument("--record", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    spec = Spec(**{**SPEC, "dim": args.dim})
    path = Path(args.dir or tempfile.mkdtemp(prefix="e5v-scale-")) / "ix"
    rows, held = [], 0
    store = Store.open(path, create=True)
    for target in args.steps:
        add(store, held, target - held - CHUNK, spec)
        began = time.perf_counter()
        add(store, target - CHUNK, CHUNK, spec)  # the measured 1,000 more, saved at the end
        seconds = time.perf_counter() - began
        held = target
        writer_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mapped, whole = cold(path, "mapped"), cold(path, "whole")
        disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        rows.append(
            f"| {target:,} | {writer_rss / 2**30:.2f} GiB | {seconds:.2f} s | "
            f"{mapped['open']:.3f} s + {mapped['search']:.2f} s, {_gib(mapped['rss'])} | "
            f"{whole['open']:.2f} s + {whole['search']:.2f} s, {_gib(whole['rss'])} | "
            f"**{whole['open'] / mapped['open']:.0f}x** | {disk / target / 1024:.1f} KiB |"
        )
        print(rows[-1], flush=True)
    store.close()
    table = (
        f"{args.dim}-d synthetic vectors (shared mean direction + 64 clusters), one modality, "
        f"added through `Store.add` in chunks of {CHUNK:,} as ingest writes them, Flat index.\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `python scripts/bench_scale.py {' '.join(sys.argv[1:])}`\n\n"
        "| vectors | writer peak RSS | add 1,000 + save | new process, files mapped: open + 1 "
        "search, peak RSS | read whole + SHA-256 (before) | open faster | disk per vector |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    print(table)
    if args.record:
        record("scale", table)


if __name__ == "__main__":
    main()
