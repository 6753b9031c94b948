"""Keyword and hybrid search against vector search: quality on rare terms and on the shapes set,
and the cost of the keyword index at scale.

    python scripts/bench_hybrid.py --sizes 100000 1000000 --record

Quality, through the engine with the trained tiny model (training.py; trained on first use):
- a text corpus made here of invoices, each with a code (`XK-2291-B`), a person's name and an
  order number of its own, searched by that code, name or number alone: R@1 of vector, keyword
  and hybrid search (the item found first is the one holding the term);
- the shapes set (testing.make_sample_corpus): each caption searches the 48 images, R@1 of
  vector and hybrid (hybrid must not lose what the vectors find).
Cost, through the Store on synthetic data: N texts of words drawn from a Zipf vocabulary, each
with a code, and clustered synthetic vectors of `--dim` values (inserted with `Store.add`, not
encoded: 1M texts through a model would take days here), a Flat index; p50 / p99 latency of
k=10 queries by vector, keyword and hybrid, for a code and for three vocabulary words; the
keyword index's bytes per item (SQLite's dbstat over the FTS5 tables), and the time the
migration takes to index a catalog made before it.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import machine, record

from e5v_search.engine import Engine
from e5v_search.spec import Spec
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors, make_sample_corpus, rare_term_notes

WRITE_CHUNK = 10_000


def quality(model: Path, folder: Path, notes: int, shapes: bool) -> list[str]:
    texts, queries = rare_term_notes(notes)
    (folder / "notes.txt").write_text("\n".join(texts) + "\n")
    lines = ["| set | queries | vector R@1 | keyword R@1 | hybrid R@1 |", "|---|---|---|---|---|"]
    with Engine.open(folder / "notes-ix", model=str(model), device="cpu", create=True) as e:
        e.ingest([folder / "notes.txt"], progress=False)
        for kind in ("code", "name", "number"):
            asked = [(text, i) for k, text, i in queries if k == kind]
            row = [_top1(e, asked, texts, mode) for mode in ("vector", "keyword", "hybrid")]
            lines.append(f"| rare terms: {kind} | {len(asked)} | " + " | ".join(row) + " |")
    if shapes:
        corpus = make_sample_corpus(folder / "shapes")
        import json

        records = [json.loads(line) for line in corpus["captions"].read_text().splitlines()]
        with Engine.open(folder / "shapes-ix", model=str(model), device="cpu", create=True) as e:
            e.ingest([corpus["images"], corpus["captions"]], progress=False)
            want = {r["text"]: str(folder / "shapes" / r["image"]) for r in records}
            row = []
            for mode in ("vector", "hybrid"):
                hits = [
                    e.search(text, k=1, modality="image", mode=mode)[0].source == source
                    for text, source in want.items()
                ]
                row.append(f"{np.mean(hits):.3f}")
            lines.append(f"| shapes: caption -> image | 48 | {row[0]} | - | {row[1]} |")
    return lines


def _top1(engine, asked, texts, mode) -> str:
    hits = 0
    for text, i in asked:
        found = engine.search(text, k=1, modality="text", mode=mode)
        hits += bool(found) and found[0].text == texts[i]
    return f"{hits / len(asked):.3f}"


def synthetic_store(path: Path, n: int, dim: int, seed: int = 0):
    """A store of n texts (Zipf words and a code each) with synthetic vectors; the codes."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(20_000)])
    spec = Spec(model="synthetic", dim=dim, dtype="float32", prompt_version="e5v-1")
    store, codes = Store.open(path, create=True), []
    began = time.perf_counter()
    with store.writing("bench"):
        for first in range(0, n, WRITE_CHUNK):
            size = min(WRITE_CHUNK, n - first)
            ranks = np.minimum(rng.zipf(1.2, size=(size, 12)), len(vocabulary)) - 1
            chunk = [f"C{first + i:07d}X" for i in range(size)]
            codes += chunk
            items = [
                {
                    "modality": "text",
                    "source": "synthetic",
                    "locator": str(first + i),
                    "text": " ".join(vocabulary[ranks[i]]) + f" code {chunk[i]}",
                }  # fmt: skip
                for i in range(size)
            ]
            store.add(items, clustered_vectors(size, dim, seed=seed + first), spec)
    return store, codes, vocabulary, time.perf_counter() - began


def percentiles(function, queries) -> str:
    times = []
    for query in queries:
        began = time.perf_counter()
        function(*query)
        times.append((time.perf_counter() - began) * 1000)
    return f"{np.percentile(times, 50):.1f} / {np.percentile(times, 99):.1f}"


def keyword_bytes(path: Path) -> int:
    with sqlite3.connect(path / "catalog.sqlite") as conn:
        sql = "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'items_fts%'"
        return conn.execute(sql).fetchone()[0]


def migration_seconds(path: Path) -> float:
    """Drop the keyword index and its record (a catalog of the release before), reopen."""
    with sqlite3.connect(path / "catalog.sqlite") as conn:
        for trigger in ("items_fts_added", "items_fts_removed", "items_fts_changed"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE items_fts")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_keywords'")
    began = time.perf_counter()
    Store.open(path).close()
    return time.perf_counter() - began


def _modes(store) -> dict:
    return {
        "vector": lambda v, t: store.search(v, k=10, modality="text"),
        "keyword": lambda v, t: store.search_keywords(t, k=10, modality="text"),
        "hybrid": lambda v, t: store.search_hybrid(v, t, k=10, modality="text"),
    }


def cost(folder: Path, sizes, dim: int, queries: int) -> list[str]:
    lines = [
        "| texts | mode | code query p50 / p99 ms | 3-word query p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    extra = []
    for n in sizes:
        store, codes, vocabulary, wrote = synthetic_store(folder / f"n{n}", n, dim)
        rng = np.random.default_rng(1)
        vectors = clustered_vectors(queries, dim, seed=99)
        picked = rng.choice(len(codes), size=queries)
        words = [" ".join(rng.choice(vocabulary[:2000], size=3)) for _ in range(queries)]
        sets = [
            [(vectors[i], codes[picked[i]]) for i in range(queries)],
            [(vectors[i], words[i]) for i in range(queries)],
        ]
        runs = _modes(store)
        for mode, function in runs.items():
            cells = [percentiles(function, s) for s in sets]
            lines.append(f"| {n:,} | {mode} | {cells[0]} | {cells[1]} |")
        per_item = keyword_bytes(store.path) / n
        store.close()
        migrated = migration_seconds(folder / f"n{n}")
        extra.append(
            f"- {n:,} texts: keyword index {per_item:.0f} bytes per item; written with the "
            f"vectors in {wrote:.0f} s ({n / wrote:,.0f} items/s); the migration indexes a "
            f"catalog made before it in {migrated:.1f} s"
        )
        print("\n".join(lines + extra), flush=True)
    return lines + [""] + extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128, help="synthetic vectors' size")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--notes", type=int, default=300, help="rare-term corpus size")
    parser.add_argument("--model", help="checkpoint for the quality runs [the trained one]")
    parser.add_argument("--no-shapes", action="store_true", help="skip the shapes set")
    parser.add_argument("--parts", nargs="*", default=["quality", "cost"], help="what to run")
    parser.add_argument(
        "--threads", type=int, default=1, help="FAISS threads for the latency runs [1]"
    )
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="e5v-hybrid-"))
    began = time.perf_counter()
    report = [f"Machine: {machine('cpu')}.", ""]
    if "quality" in args.parts:
        if args.model:
            model = Path(args.model)
        else:
            from e5v_search.training import cached_trained_checkpoint

            model = cached_trained_checkpoint()
        report += [f"Quality, model {model.name}:", ""]
        report += quality(model, folder, args.notes, not args.no_shapes) + [""]
        print("\n".join(report), flush=True)
    if "cost" in args.parts:
        import faiss

        # One query at a time needs no OpenMP team: on a busy 2-core machine its spin-waits
        # cost ~28 ms a query (measured), which would hide what is being compared.
        faiss.omp_set_num_threads(args.threads)
        report += [f"Cost: synthetic {args.dim}-d vectors, Flat, {args.threads} FAISS thread(s):"]
        report += [""] + cost(folder, args.sizes, args.dim, args.queries)
    report += ["", f"(`{' '.join(sys.argv[1:])}`, {time.perf_counter() - began:.0f} s in all)"]
    print("\n".join(report))
    shutil.rmtree(folder, ignore_errors=True)
    if args.record:
        record("hybrid", "\n".join(report))


if __name__ == "__main__":
    main()
