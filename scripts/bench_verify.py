"""What the integrity checks cost: `verify`'s full read, and the checks on the hot paths, measured
with and without them side by side in one run, at each size of one growing index.

    python scripts/bench_verify.py --steps 100000 1000000 --record
    python scripts/bench_verify.py --steps 5000 20000 --dim 256        # a quick look

bench_scale.py's synthetic 4096-d vectors go into one index through `Store.add` (spec float16,
as E5-V computes on a GPU: 8 KiB a vector in the catalog), then `rebuild --max-memory` gives
the type the policy chooses for the budget (Flat at 100k, SQ8 re-ranked at 1M with 8 GB). At
each step:

- `verify`: seconds, and bytes read per second (the catalog and every index file, each byte);
- open (in this process, page cache warm): the manifest's probes checked, and not checked;
- search: 200 queries one at a time through `Store.search`, every answer checked (scores within
  the bound, ids held by their segment) and per-row CRCs of re-ranked vectors, against the same
  with both checks switched off;
- rebuild: the same rebuild from the catalog with each row's CRC checked, and without.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench_scale import CHUNK, vectors
from benchlib import machine, record

from e5v_search.config import parse_bytes
from e5v_search.spec import Spec
from e5v_search.storage import catalog_reads, segments
from e5v_search.storage import store as store_module
from e5v_search.storage.store import Store
from e5v_search.storage.verify import verify

QUERIES = 200


@contextmanager
def unchecked():
    """The checks switched off: what the same work cost before them."""
    saved = (segments.Segments._check, catalog_reads.vector_damage, store_module.damage_of)
    segments.Segments._check = lambda *args: None
    catalog_reads.vector_damage = lambda *args: None
    store_module.damage_of = lambda *args: None
    try:
        yield
    finally:
        segments.Segments._check, catalog_reads.vector_damage, store_module.damage_of = saved


def grow(store: Store, start: int, n: int, spec: Spec) -> None:
    with store.writing("bench"):
        for first in range(start, start + n, CHUNK):
            count = min(CHUNK, start + n - first)
            items = [
                {"modality": "image", "source": f"/photos/{i}.jpg"}
                for i in range(first, first + count)
            ]
            store.add(items, vectors(first, count, spec.dim), spec)


def timed(action) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def paired(action, rounds: int) -> tuple[float, float]:
    """Median seconds of `action` with the checks and without, the two alternating round by
    round, so a busy moment of the machine falls on both alike."""
    checked, bare = [], []
    for _ in range(rounds):
        checked.append(timed(action))
        with unchecked():
            bare.append(timed(action))
    return statistics.median(checked), statistics.median(bare)


def step(store: Store, path: Path, n: int, budget: int, rounds: int) -> dict:
    store.rebuild(max_memory=budget)  # the type at this size, saved with its digests
    entry = store.manifest.indexes["image"]
    queries = vectors(0, QUERIES, store.catalog.dim, seed=5)

    def search():
        for query in queries:
            store.search(query[None], 10, "image")

    search()  # pages in what the searches touch
    row = {"n": n, "type": entry.factory, "rerank": entry.rerank}
    report = {}
    row["verify"] = timed(lambda: report.update(verify(store)))
    assert report["ok"], report
    row["bytes"] = report["bytes"]
    row["open"], row["open_unchecked"] = paired(lambda: Store.open(path).close(), 2 * rounds)
    row["search"], row["search_unchecked"] = (t / QUERIES for t in paired(search, rounds))
    row["rebuild"], row["rebuild_unchecked"] = paired(lambda: store.rebuild(), 1)
    print(row, flush=True)
    return row


def table(rows: list[dict], dim: int, budget: str) -> str:
    lines = [
        f"bench_verify.py's index of {dim}-d float16 vectors, the type `rebuild --max-memory "
        f"{budget}` chooses. Machine: {machine('cpu')}. Checked vs unchecked in one run.",
        "",
        "| vectors | type | verify (all bytes) | open | search (1 query) | rebuild |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["bytes"] / r["verify"] / 2**20
        lines.append(
            f"| {r['n']:,} | {r['type']}{' +rerank' if r['rerank'] else ''} | "
            f"{r['verify']:.1f} s for {r['bytes'] / 2**30:.2f} GiB ({rate:,.0f} MiB/s) | "
            f"{r['open'] * 1000:.1f} ms vs {r['open_unchecked'] * 1000:.1f} ms | "
            f"{r['search'] * 1000:.2f} ms vs {r['search_unchecked'] * 1000:.2f} ms "
            f"({r['search'] / r['search_unchecked']:.2f}x) | "
            f"{r['rebuild']:.1f} s vs {r['rebuild_unchecked']:.1f} s "
            f"({r['rebuild'] / r['rebuild_unchecked']:.2f}x) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--max-memory", default="8GB")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds per timing.")
    parser.add_argument("--dir", type=Path, help="Where to build (default: a temp folder).")
    parser.add_argument("--record", action="store_true", help="Write docs/benchmarks.md.")
    args = parser.parse_args()
    path = (args.dir or Path(tempfile.mkdtemp(prefix="e5v-verify-"))) / "ix"
    spec = Spec(model="synthetic", dim=args.dim, dtype="float16", prompt_version="e5v-1")
    store = Store.open(path, create=True)
    rows, done = [], 0
    for n in sorted(args.steps):
        grow(store, done, n - done, spec)
        done = n
        rows.append(step(store, path, n, parse_bytes(args.max_memory), args.rounds))
    markdown = table(rows, args.dim, args.max_memory)
    print(markdown)
    if args.record:
        record("verify", "## Integrity checks: what they cost\n\n" + markdown)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
