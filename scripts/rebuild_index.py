"""Rebuild an index directory's FAISS files from the vectors stored in its catalog (no model).

    python scripts/rebuild_index.py indexes/photos --type HNSW32
    python scripts/rebuild_index.py indexes/photos --type IVF4096,PQ64 --nprobe 64

Any FAISS factory string works, or `--max-memory 8GB` chooses one for the budget (Flat when it
fits, else OPQ+IVF+PQ with its lists merged on disk); types that need training are trained on a
sample of the stored vectors. Reports, per modality: build and training time, peak memory, file
size, and recall@k of the new index against exact search, with a sample of stored vectors as
queries, per query modality (text->image is text queries searching the image index).
"""

import argparse
import sys
import time

from benchlib import PeakMemory, gib

from e5v_search.config import index_path
from e5v_search.engine import Engine
from e5v_search.errors import E5VSearchError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", help="index directory, or a name for indexes/NAME")
    parser.add_argument("--type", dest="factory", help="FAISS factory string (default: current)")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    parser.add_argument("--ef-search", type=int, help="HNSW candidate list size")
    parser.add_argument("--max-memory", help="choose the type for this budget: 8GB, 512MiB")
    parser.add_argument("--rerank", type=int, help="rescore this many candidates exactly")
    parser.add_argument("--sample", type=int, default=200, help="query vectors per modality")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    try:
        # The same Engine.rebuild as `e5v-search rebuild`; this script adds memory and a table.
        with Engine.open(index_path(args.index)) as engine:
            for line in engine.notices():
                print(line)
            started = time.perf_counter()
            with PeakMemory("cpu") as memory:
                stats = engine.rebuild(
                    args.factory,
                    nprobe=args.nprobe,
                    ef_search=args.ef_search,
                    max_memory=args.max_memory,
                    rerank=args.rerank,
                )
            seconds = time.perf_counter() - started
            recall = engine.recall(k=args.k, sample=args.sample)
    except E5VSearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"rebuilt {args.index} in {seconds:.1f} s, peak memory added {gib(memory.bytes)}")
    print("| modality | type | vectors | train s | build s | file |")
    print("|---|---|---|---|---|---|")
    for s in stats:
        print(
            f"| {s['modality']} | {s['factory']} | {s['vectors']} | {s['train_seconds']:.1f} | "
            f"{s['seconds']:.1f} | {gib(s['bytes'])} |" + (f" {s['note']}" if "note" in s else "")
        )
    print(f"\n| queries -> index | recall@{args.k} vs exact ({args.sample} stored vectors) |")
    print("|---|---|")
    for pair, value in recall.items():
        print(f"| {pair} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
