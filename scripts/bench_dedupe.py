"""The near-duplicate threshold (config.DUPLICATE_COSINE, Engine.collapse) measured: how similar
copies of one picture are, against how similar different pictures are.

    python scripts/bench_dedupe.py [--model DIR] [--record]

Each of the sample corpus's 48 images gets testing.photo_copies (half size, JPEG 90 and 60,
WebP 80, stored turned a quarter either way with the EXIF tag that shows it upright); all are
embedded through the engine as ingest embeds them. Reported: per kind of copy, the lowest and
median cosine to its original; over the 1,128 pairs of different originals, the highest and the
99th percentile; and per threshold the share of copies caught and of different pairs merged.
The model is the tiny one trained on shapes (the default): E5-V's own numbers need its weights
from the hub, which this script does not fetch (`--model royokong/e5-v` where they are cached).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from benchlib import machine, record

from e5v_search.config import DUPLICATE_COSINE
from e5v_search.engine import Engine
from e5v_search.testing import COPY_KINDS, make_sample_corpus, photo_copies
from e5v_search.training import cached_trained_checkpoint

THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.98, 0.99, 0.995, 0.998)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint [the tiny model trained on shapes]")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    model = args.model or str(cached_trained_checkpoint())
    with tempfile.TemporaryDirectory() as folder:
        corpus = make_sample_corpus(Path(folder) / "corpus")
        originals = sorted(corpus["images"].rglob("*.png"))
        copies = [photo_copies(path, Path(folder) / "copies") for path in originals]
        with Engine.open(Path(folder) / "ix", model=model, device="cpu", create=True) as engine:
            base = engine.embed_images(originals, workers=2)
            kinds = {
                kind: engine.embed_images([c[kind] for c in copies], workers=2)
                for kind in COPY_KINDS
            }
            device = str(engine.encoder.device)
    same = {kind: np.sum(base * vectors, axis=1) for kind, vectors in kinds.items()}
    rows, cols = np.triu_indices(len(base), k=1)
    pairs = (base @ base.T)[rows, cols]
    closest = [
        f"{originals[rows[i]].stem} / {originals[cols[i]].stem} {pairs[i]:.4f}"
        for i in np.argsort(-pairs)[:8]
    ]
    text = report(model if args.model else "the tiny model trained on shapes", same, pairs)
    text += "\nThe closest different pictures: " + "; ".join(closest) + ".\n"
    text += f"\nMachine: {machine(device)}.\n"
    print(text)
    if args.record:
        record("dedupe", text)


def report(model: str, same: dict, pairs: np.ndarray) -> str:
    all_copies = np.concatenate(list(same.values()))
    lines = [
        "## Near-duplicate threshold (collapse)",
        "",
        f"`python scripts/bench_dedupe.py --record`, {model}: the sample corpus's "
        f"{len(next(iter(same.values())))} images, {len(all_copies)} copies, "
        f"{len(pairs)} pairs of different images. DUPLICATE_COSINE is {DUPLICATE_COSINE}.",
        "",
        "| copy | lowest cosine to its original | median |",
        "|---|---|---|",
    ]
    for kind, values in same.items():
        lines.append(f"| {kind} | {values.min():.4f} | {np.median(values):.4f} |")
    lines += [
        f"| **different images** (highest, 99th percentile) | {pairs.max():.4f} | "
        f"{np.quantile(pairs, 0.99):.4f} |",
        "",
        "| threshold | copies caught | different pairs merged |",
        "|---|---|---|",
    ]
    for threshold in THRESHOLDS:
        caught = np.mean(all_copies >= threshold)
        merged = int(np.sum(pairs >= threshold))
        lines.append(f"| {threshold:g} | {caught:.1%} | {merged} ({merged / len(pairs):.1%}) |")
    lines += [
        "",
        "E5-V's own numbers cannot be measured here: its weights come from the hub, which these",
        "machines do not reach. Where they are cached: `--model royokong/e5-v` on a GPU.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
