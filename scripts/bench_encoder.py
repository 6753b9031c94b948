"""The model card's recipe against E5VEncoder, side by side in one run, on the same model object.

    python scripts/bench_encoder.py                  # CPU: tiny hidden size, REAL 128k vocab and
                                                     # real image geometry (crop 336, pinpoints)
    python scripts/bench_encoder.py --full-size --device cuda
                                                     # the real 8B architecture, random weights,
                                                     # bf16 and fp16, several batch sizes
    python scripts/bench_encoder.py --precisions     # fp32, bf16, int8, nf4 side by side (CPU:
                                                     # the tiny models; E5-V's weights computed)
    python scripts/bench_encoder.py --cpu-full-width # CPU: E5-V's full width, random weights,
                                                     # 2 LLM + 2 vision layers, per-layer cost
                                                     # in fp32, bf16, int8; 32 + 24 extrapolated

Reports items/s for texts and images, peak memory, max |diff| between the two paths' vectors,
and the ratios; `--record` writes the table into docs/benchmarks.md with the machine. Full size:
each row is printed (and appended to `--out FILE`) as soon as it is measured, and any CUDA
allocation failure ends that path's batch sizes with a row saying so.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import numpy as np
from benchlib import PeakMemory, gib, is_allocation_failure, machine, record
from PIL import Image, ImageDraw

from e5v_search.model.encoder import E5VEncoder
from e5v_search.model.recipe import recipe_embed_images, recipe_embed_texts
from e5v_search.testing import cached_tiny_checkpoint

WORDS = "a dog cat man woman runs sits on the grass snow beach near red blue car tree".split()
IMAGE_SIZES = [(640, 480), (480, 640), (336, 336), (1024, 768), (800, 600), (300, 1000)]


OUT_FILE = None  # --out: full-size rows are appended here as they are measured


def emit(line: str) -> str:
    """Print a full-size row at once (a long GPU run shows its progress), and keep it."""
    print(line, flush=True)
    if OUT_FILE:
        with open(OUT_FILE, "a") as f:
            f.write(line + "\n")
    return line


def _command() -> str:
    return " ".join(["python scripts/bench_encoder.py"] + sys.argv[1:])


def make_texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 60)))) for _ in range(n)]


def make_images(n: int, sizes=IMAGE_SIZES) -> list[Image.Image]:
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        image = Image.new("RGB", (w, h), (20 * i % 255, 120, 200))
        ImageDraw.Draw(image).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(240, 30, i))
        images.append(image)
    return images


def timed(device, function, *args):
    """(seconds, peak bytes, result as numpy) of one call, after a warm-up on one item."""
    import torch

    function(*(a[:1] for a in args))
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = function(*args)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = result.float().cpu().numpy() if hasattr(result, "cpu") else result
    return seconds, memory.bytes, result


def in_chunks(embed, size):
    """The recipe as a user runs it on many items: the model card's call on `size` at a time."""
    import torch

    def run(model, processor, items, device):
        parts = [
            embed(model, processor, items[i : i + size], device) for i in range(0, len(items), size)
        ]
        return torch.cat(parts)

    return run


def compare_cpu(args) -> str:
    import torch

    torch.manual_seed(0)
    path = cached_tiny_checkpoint(real_geometry=True, real_vocab=True)
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    model = LlavaNextForConditionalGeneration.from_pretrained(str(path)).eval()
    processor = LlavaNextProcessor.from_pretrained(str(path), backend="pil")
    processor.tokenizer.padding_side = "left"  # the recipe needs it to be right at all
    encoder = E5VEncoder(model, processor, model_id=str(path))
    texts, images = make_texts(args.texts), make_images(args.images)
    rows = []
    for kind, items, recipe in [
        ("texts", texts, recipe_embed_texts),
        ("images", images, recipe_embed_images),
    ]:
        ours = encoder.embed_texts if kind == "texts" else encoder.embed_images
        run_recipe = in_chunks(recipe, args.batch_size)
        r_s, r_mem, r_vec = timed("cpu", partial(run_recipe, model, processor, device="cpu"), items)
        rows.append(
            f"| {kind} ({len(items)}) | recipe, {args.batch_size} a call | "
            f"{len(items) / r_s:.1f} | 1.0x | {gib(r_mem)} | 1.0x | |"
        )
        for label, cap in [
            (f"encoder, {args.batch_size} a batch", args.batch_size),
            ("encoder, token budget", None),
        ]:
            encoder.batch_size = cap
            e_s, e_mem, e_vec = timed("cpu", partial(ours, progress=False), items)
            rows.append(
                f"| {kind} ({len(items)}) | {label} | {len(items) / e_s:.1f} | "
                f"**{r_s / e_s:.1f}x** | "
                f"{gib(e_mem)} | **{r_mem / max(e_mem, 1):.0f}x less** | "
                f"{np.abs(r_vec - e_vec).max():.1e} |"
            )
    header = (
        f"Tiny LLaVA-NeXT (hidden 64, 2+2 layers) with the real 128,256-token vocabulary and real "
        f"image geometry (crop 336, 1,176-2,928 image tokens), fp32, on the same model object. "
        f"Recipe: the model card's call on {args.batch_size} items at a time. Encoder: the same "
        f"batches, then its own token budget ({encoder.max_batch_tokens} padded tokens).\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `{_command()}`\n\n"
        "| inputs | path | items/s | speed | peak memory added | memory | max abs diff vs recipe |"
        "\n|---|---|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(rows)


# ---- precisions: float32, bfloat16, int8, nf4 side by side ----------------------------------

PRECISIONS = [("float32", None), ("bfloat16", None), (None, "int8"), (None, "nf4")]


def compare_precisions(args) -> str:
    """Each precision loaded from the same checkpoint in turn: the memory its weights take,
    items/s and peak memory while embedding, and the cosine of its vectors to float32's."""
    from e5v_search.training import cached_trained_checkpoint

    models = [
        (
            "tiny, real vocab + geometry",
            cached_tiny_checkpoint(real_geometry=True, real_vocab=True),
        ),
        ("trained tiny", cached_trained_checkpoint()),
    ]
    texts, images = make_texts(args.texts), make_images(args.images)
    rows = []
    for name, path in models:
        reference = None
        # The first precision runs twice, the first time unrecorded: one-off start-up costs
        # (allocator, thread pools) would otherwise all land on float32.
        for n, (dtype, quantize) in enumerate(PRECISIONS[:1] + PRECISIONS):
            with PeakMemory(args.device) as loading:
                encoder = E5VEncoder.from_pretrained(
                    str(path), device=args.device, dtype=dtype, quantize=quantize
                )
            weights = encoder.model.get_memory_footprint()
            speeds, vectors, peak = [], [], 0
            for kind, items in (("texts", texts), ("images", images)):
                embed = encoder.embed_texts if kind == "texts" else encoder.embed_images
                seconds, memory, got = timed(args.device, partial(embed, progress=False), items)
                speeds.append(len(items) / seconds)
                vectors.append(got)
                peak = max(peak, memory)
            got = np.concatenate(vectors)
            if n == 0:
                continue
            reference = got if reference is None else reference
            cosine = (got * reference).sum(axis=1)
            label = str(encoder.dtype).removeprefix("torch.") + (
                f" + {quantize}" if quantize else ""
            )
            rows.append(
                f"| {name} | {label} | {_mib(weights)} | {_mib(loading.bytes)} | {speeds[0]:.1f} | "
                f"{speeds[1]:.1f} | {_mib(peak)} | {cosine.min():.5f} | {cosine.mean():.5f} |"
            )
            del encoder
    header = (
        f"Each precision loaded in turn from the same checkpoint on {args.device}; bitsandbytes "
        "quantizes the language model's linear layers (int8: LLM.int8; nf4: 4-bit NormalFloat, "
        f"bfloat16 compute), the vision tower, projector and embeddings stay in bfloat16. "
        f"{len(texts)} texts and {len(images)} images; cosine against float32's vectors.\n"
        f"Machine: {machine(args.device)}.\n"
        f"Command: `{_command()}`\n\n"
        "| model | precision | weights | load peak | texts/s | images/s | embed peak | "
        "min cosine | mean cosine |\n|---|---|---|---|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(rows) + "\n\n" + e5v_weights_table()


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def e5v_weights_table() -> str:
    """E5-V's weights per precision, computed from its parameter count (not measured): the
    linear layers of the language model take 1 byte (int8) or ~0.56 (nf4: 4 bits plus a scale
    per 64), the rest 2 bytes."""
    from transformers import LlamaConfig, LlavaNextConfig

    config = LlavaNextConfig(
        text_config=LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128320,
        )
    )
    from e5v_search.model.loading import estimated_parameters

    total = estimated_parameters(config)
    t = config.text_config
    layer = (
        t.hidden_size
        * (t.hidden_size // t.num_attention_heads)
        * 2
        * (t.num_attention_heads + t.num_key_value_heads)
        + 3 * t.hidden_size * t.intermediate_size
    )
    linear = t.num_hidden_layers * layer
    rest = total - linear
    sizes = {
        "float32": 4 * total,
        "bfloat16 / float16": 2 * total,
        "bfloat16 + int8": linear + 2 * rest,
        "bfloat16 + nf4": linear * 0.5625 + 2 * rest,
    }
    rows = [f"| {name} | {gib(size)} |" for name, size in sizes.items()]
    return (
        f"E5-V ({total / 1e9:.2f} B parameters, {linear / 1e9:.2f} B in the language model's "
        "linear layers), weights only, computed:\n\n| precision | weights |\n|---|---|\n"
        + "\n".join(rows)
    )


# ---- full size: the real 8B architecture with random weights, built on the GPU --------------


def full_size_model(device, dtype, layers=None, vocab=128256):
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers or 32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=layers or 24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=vocab - 2)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()


def item_flops(model, tokens: int, crops: int) -> float:
    """Forward FLOPs of one item, counting only what an embedding needs (no lm_head)."""
    cfg = model.config
    llm = model.model.language_model
    dense = sum(p.numel() for n, p in llm.named_parameters() if "embed_tokens" not in n)
    t = cfg.text_config
    attention = 2 * t.num_hidden_layers * tokens**2 * t.hidden_size  # causal QK^T and AV
    flops = 2 * dense * tokens + attention
    if crops:
        v = cfg.vision_config
        patches = (v.image_size // v.patch_size) ** 2 + 1
        vision = sum(p.numel() for p in model.model.vision_tower.parameters())
        flops += crops * (
            2 * vision * patches + 4 * v.num_hidden_layers * patches**2 * v.hidden_size
        )
    return float(flops)


def compare_full_size(args) -> str:
    import torch
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor.from_pretrained(
        str(cached_tiny_checkpoint(real_geometry=True, real_vocab=True)), backend="pil"
    )
    processor.tokenizer.padding_side = "left"
    lines = [
        f"Full-size E5-V architecture (LLaVA-NeXT, Llama-3-8B + CLIP ViT-L/14-336), random "
        f"weights{f', {args.layers} layers' if args.layers else ''}. Images 640x480 (2,340 image "
        f"tokens, 5 crops); texts of 4-60 words, 8 texts per image batch slot. Share of peak = "
        f"useful FLOPs (no lm_head) per second / {args.peak_tflops:.0f} TFLOP/s. Each path "
        f"runs whole batches of the size shown.\nMachine: {machine(args.device)}.\n"
        f"Command: `{_command()}`\n",
        "| dtype | inputs | path | batch | items/s | share of peak | peak memory added | "
        "max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        emit(line)
    for dtype_name in args.dtypes:
        torch.manual_seed(0)
        model = full_size_model(
            args.device, getattr(torch, dtype_name), args.layers, vocab=len(processor.tokenizer)
        )
        encoder = E5VEncoder(model, processor, model_id="random-8b")
        for kind in ("images", "texts"):
            lines += _full_size_rows(args, model, processor, encoder, kind, dtype_name)
        del model, encoder
        torch.cuda.empty_cache()
    return "\n".join(lines)


def _full_size_rows(args, model, processor, encoder, kind, dtype_name) -> list[str]:
    """Rows for one input kind: each path at growing batch sizes until it runs out of memory."""
    import torch

    device, rows, out_of_memory = args.device, [], set()
    recipe = recipe_embed_images if kind == "images" else recipe_embed_texts
    ours = encoder.embed_images if kind == "images" else encoder.embed_texts
    paths = {
        "recipe": partial(recipe, model, processor, device=device),
        "encoder": partial(ours, progress=False),
    }
    for batch in args.batch_sizes:
        if kind == "images":
            items = make_images(batch, [(640, 480)])
            flops = item_flops(model, encoder.count_image_tokens([(480, 640)])[0] + 25, 5)
        else:
            items = make_texts(batch * 8)
            lengths = [len(ids) for ids in processor.tokenizer(items).input_ids]
            flops = item_flops(model, int(np.mean(lengths)) + 25, 0)
        encoder.batch_size, encoder.max_batch_tokens = len(items), 10**9
        vectors = {}
        for name, run in paths.items():
            if name in out_of_memory:
                continue
            try:
                seconds, memory, vectors[name] = timed(device, run, items)
            except Exception as error:  # noqa: BLE001 - cuBLAS/cuDNN report allocation failures
                if not is_allocation_failure(error):  # as RuntimeErrors, not OutOfMemoryError
                    raise
                out_of_memory.add(name)
                torch.cuda.empty_cache()
                rows.append(
                    emit(f"| {dtype_name} | {kind} | {name} | {len(items)} | out of memory ||||")
                )
                continue
            share = len(items) / seconds * flops / (args.peak_tflops * 1e12)
            diff = ""
            if name == "encoder" and "recipe" in vectors:
                diff = f"{np.abs(vectors['recipe'] - vectors['encoder']).max():.1e}"
            rows.append(
                emit(
                    f"| {dtype_name} | {kind} | {name} | {len(items)} | "
                    f"{len(items) / seconds:.1f} | {share:.0%} | {gib(memory)} | {diff} |"
                )
            )
            torch.cuda.empty_cache()
        if out_of_memory == set(paths):
            break
    return rows


# ---- CPU at full width: per-layer cost, extrapolated to 32 + 24 layers -----------------------

CPU_PRECISIONS = ("float32", "bfloat16", "int8")


class LayerClock:
    """Seconds spent inside each group of layers, summed over calls, from forward hooks."""

    def __init__(self, groups: dict):
        self.seconds = dict.fromkeys(groups, 0.0)
        self._handles = []
        for name, layers in groups.items():
            for layer in layers:
                self._handles.append(layer.register_forward_pre_hook(self._start))
                self._handles.append(layer.register_forward_hook(partial(self._stop, name)))
        self._began = 0.0

    def _start(self, module, args):
        self._began = time.perf_counter()

    def _stop(self, name, module, args, output):
        self.seconds[name] += time.perf_counter() - self._began

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def _cpu_model(precision: str, vocab: int):
    """Full-width E5-V with random weights and 2 + 2 layers; int8 is torch's dynamic int8 of the
    layers' Linear modules (fp32 activations), built from the fp32 model."""
    import torch

    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    model = full_size_model("cpu", dtype, layers=2, vocab=vocab)
    if precision == "int8":
        for layers in _layer_groups(model).values():
            torch.ao.quantization.quantize_dynamic(
                layers, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
    return model


def _layer_groups(model) -> dict:
    return {
        "llm": model.model.language_model.layers,
        "vision": model.model.vision_tower.encoder.layers,
    }


def compare_cpu_full_width(args) -> str:
    import torch

    from e5v_search.model.prompts import text_prompt

    processor = _real_geometry_processor()
    text, image = "a red circle on a white table", make_images(1, [(1024, 1024)])[0]
    text_tokens = len(processor.tokenizer(text_prompt(text)).input_ids)
    image_tokens = None
    rows = []
    for precision in CPU_PRECISIONS:
        torch.manual_seed(0)
        model = _cpu_model(precision, len(processor.tokenizer))
        encoder = E5VEncoder(model, processor, model_id="random-8b-2-layers")
        image_tokens = encoder.count_image_tokens([image.size])[0]
        clock = LayerClock(_layer_groups(model))
        encoder.embed_texts([text], progress=False)  # warm-up: allocator, thread pools
        for kind, embed, items, repeats in (
            ("text query", encoder.embed_texts, [text], args.text_repeats),
            ("1024x1024 image", encoder.embed_images, [image], 1),
        ):
            clock.reset()
            start = time.perf_counter()
            for _ in range(repeats):
                embed(items, progress=False)
            total = (time.perf_counter() - start) / repeats
            llm, vision = (clock.seconds[g] / repeats / 2 for g in ("llm", "vision"))
            rest = total - 2 * llm - 2 * vision
            full = rest + 32 * llm + 24 * vision
            rows.append(
                f"| {precision} | {kind} | {llm:.2f} s | "
                f"{f'{vision:.2f} s' if vision else '-'} | {rest:.2f} s | {total:.2f} s | "
                f"**{_duration(full)}** |"
            )
            print(rows[-1], flush=True)
        del encoder, clock, model
    header = (
        "E5-V's full width on the CPU (Llama-3-8B: hidden 4096, FFN 14336, 32 heads, 8 KV heads, "
        "vocab 128,256; CLIP ViT-L/14-336: width 1024, FFN 4096, 16 heads) with random weights "
        "and only 2 language-model layers and 2 vision layers, through `E5VEncoder`. Per-layer "
        "seconds are timed inside the layers (forward hooks); 'rest' is everything else "
        "(tokenizing, preprocessing, embeddings, projector, final norm). **The last column "
        "EXTRAPOLATES**: rest + 32 x LLM layer + 24 x vision layer; it was not run at 32 + 24 "
        f"layers. Text query: {text_tokens} tokens with E5-V's prompt (the tiny checkpoint's "
        "byte-level tokenizer: Llama-3's own is not available offline here), mean of "
        f"{args.text_repeats}. Image: 1024x1024, {image_tokens} "
        "tokens in the language model, 5 crops x 577 in the vision tower, one run. int8 is "
        "torch's dynamic int8 of the layers' Linear modules (`torch.ao.quantization."
        "quantize_dynamic`, fp32 activations); the engine's `--quantize int8` (bitsandbytes "
        "LLM.int8, applied while loading a checkpoint) was not measured at this width.\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `{_command()}`\n\n"
        "| precision | input | per LLM layer | per vision layer | rest | total (2 + 2 layers) | "
        "32 + 24 layers (extrapolated) |\n|---|---|---|---|---|---|---|"
    )
    return header + "\n" + "\n".join(rows)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _real_geometry_processor():
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor.from_pretrained(
        str(cached_tiny_checkpoint(real_geometry=True, real_vocab=True)), backend="pil"
    )
    processor.tokenizer.padding_side = "left"
    return processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8, help="recipe items per call (CPU)")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--precisions", action="store_true", help="fp32, bf16, int8, nf4")
    parser.add_argument(
        "--cpu-full-width",
        action="store_true",
        help="CPU: full width, 2 + 2 layers, per-layer cost, extrapolated to 32 + 24",
    )
    parser.add_argument("--text-repeats", type=int, default=5, help="--cpu-full-width")
    parser.add_argument("--layers", type=int, help="full size: fewer layers, for a smoke test")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="H100 dense bf16 measured")
    parser.add_argument("--record", action="store_true", help="write into docs/benchmarks.md")
    parser.add_argument("--out", help="full size: append each row to this file as it is measured")
    args = parser.parse_args()
    global OUT_FILE
    OUT_FILE = args.out
    if args.precisions:
        table, section = compare_precisions(args), f"encoder-precisions-{args.device}"
    elif args.cpu_full_width:
        table, section = compare_cpu_full_width(args), "encoder-cpu-full-width"
    elif args.full_size:
        table, section = compare_full_size(args), f"encoder-full-size-{args.device}"
    else:
        table, section = compare_cpu(args), "encoder-cpu"
    print(table)
    if args.record:
        record(section, table)


if __name__ == "__main__":
    main()
