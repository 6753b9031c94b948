"""Ingest throughput, plain (threads ahead of the local model) against Ray Data, side by side.

    python scripts/bench_ingest.py [--copies 4] [--record]

The sample corpus (48 drawn images, 48 captions) copied `--copies` times with each copy rotated,
so every image is distinct, ingested into fresh indexes with the tiny checkpoint on the CPU (or
`--model`, `--device`). With a tiny model the numbers measure the pipelines' own overhead: Ray's
start, its actors and moving data between stages, against the plain path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, record
from PIL import Image

from e5v_search.engine import Engine
from e5v_search.ingest.ray_backend import RayOptions
from e5v_search.testing import cached_tiny_checkpoint, make_sample_corpus


def corpus(root: Path, copies: int) -> list[str]:
    sample = make_sample_corpus(root / "sample")
    for i in range(copies):
        for src in sorted(sample["images"].rglob("*.png")):
            target = root / "images" / str(i) / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(src).rotate(7 * (i + 1)).save(target)
    return [str(root / "images"), str(sample["captions"])]


def timed(path: Path, model: str, device: str, sources, ray=None) -> tuple[float, int]:
    with Engine.open(path, model=model, device=device, create=True) as engine:
        started = time.perf_counter()
        report = engine.ingest(sources, progress=False, ray=ray)
        return time.perf_counter() - started, report.added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--model", help="default: the tiny checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    model = args.model or str(cached_tiny_checkpoint())
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        sources = corpus(work, args.copies)
        plain_s, n = timed(work / "plain", model, args.device, sources)
        ray_s, ray_n = timed(work / "ray", model, args.device, sources, RayOptions())
        warm_s, _ = timed(work / "ray-warm", model, args.device, sources, RayOptions())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert n == ray_n
    text = "\n".join(
        [
            f"{n} items ({n - 48} images, 48 captions), model "
            f"{'tiny checkpoint' if not args.model else args.model} on {args.device}.\n"
            f"Machine: {machine(args.device)}.\n"
            f"Command: `python scripts/bench_ingest.py {' '.join(sys.argv[1:])}`\n",
            "| path | seconds | items/s | vs plain |",
            "|---|---|---|---|",
            f"| plain (threads + local model) | {plain_s:.1f} | {n / plain_s:.1f} | 1.0x |",
            f"| Ray Data, local, first run (starts Ray) | {ray_s:.1f} | {n / ray_s:.1f} | "
            f"{plain_s / ray_s:.2f}x |",
            f"| Ray Data, local, Ray already up | {warm_s:.1f} | {n / warm_s:.1f} | "
            f"{plain_s / warm_s:.2f}x |",
        ]
    )
    print(text)
    if args.record:
        record("ingest-ray", text)


if __name__ == "__main__":
    main()
