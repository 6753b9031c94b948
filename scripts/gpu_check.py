"""`check` on the full-size E5-V architecture with random weights built on the device: the
model card's recipe and the engine side by side per dtype (non-finite vectors, batch
invariance, token counts, items/s, memory). Run by scripts/gpu_check.sh.

    python scripts/gpu_check.py --device cuda [--dtypes float16 bfloat16] [--out DIR]
    python scripts/gpu_check.py --device cpu --layers 1 --small-vocab   # a dry run

Each report is printed, flushed and appended to DIR/check.txt as soon as it is made; a CUDA
allocation failure (of any kind) ends that dtype with a line saying so, not the run.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from bench_encoder import full_size_model
from benchlib import is_allocation_failure

from e5v_search.model.check import check_encoder
from e5v_search.model.encoder import E5VEncoder
from e5v_search.testing import cached_tiny_checkpoint


def main() -> int:
    import torch
    from transformers import LlavaNextProcessor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--layers", type=int, help="fewer layers, for a dry run")
    parser.add_argument("--small-vocab", action="store_true", help="the tiny tokenizer (dry run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    def emit(line: str) -> None:
        print(line, flush=True)
        if args.out:
            with (args.out / "check.txt").open("a") as f:
                f.write(line + "\n")

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = cached_tiny_checkpoint(real_geometry=True, real_vocab=not args.small_vocab)
    failed = 0
    for dtype in args.dtypes:
        processor = LlavaNextProcessor.from_pretrained(str(tokenizer_dir), backend="pil")
        model = encoder = None
        try:
            torch.manual_seed(0)
            model = full_size_model(
                args.device, getattr(torch, dtype), args.layers, vocab=len(processor.tokenizer)
            )
            encoder = E5VEncoder(model, processor, model_id=f"random-8b-{dtype}")
            report = check_encoder(encoder, model, processor)
            for line in report.lines():
                emit(line)
            emit(f"{dtype}: {'ok' if not report.failures else 'FAILED'}\n")
            failed += bool(report.failures)
        except Exception as error:  # noqa: BLE001 - an allocation failure ends this dtype only
            if not is_allocation_failure(error):
                raise
            emit(f"{dtype}: CUDA allocation failure: {str(error).splitlines()[0]}\n")
            failed += 1
        finally:
            del model, encoder
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
