"""`e5v-search check`: does this machine, with these weights, give E5-V's vectors?

One model object, in the chosen device and dtype, runs both the model card's recipe and the
engine on the same inputs (samples.py), and each item's two vectors are compared:

- texts, the model card's two among them, short and long;
- images of odd and even sizes (odd anyres remainders, where transformers 5.x alone would give
  other pixels than E5-V's 4.41.2 pipeline), 3 to 5 crops;
- JPEGs whose EXIF says "rotated": the engine reads the file, the recipe is handed the upright
  image, so a missed rotation shows as a low cosine.

The recipe runs one item per call (no padding: the reference at its cleanest); the engine runs
batched, its normal path. The recipe runs on the repaired checkpoint: under transformers 5.x
royokong/e5-v needs the repairs even for the recipe (its `<image>` id lies past the embedding
table). A run passes when every vector is finite, token counts agree, and each item's max |diff|
is <= 1e-5 in float32 or its cosine >= 0.999 in float16 / bfloat16.

With `quantize` (int8, nf4) the engine runs the quantized model and the recipe the same weights
at full precision (the dtype asked, float32 on a CPU by default): the cosine is then the drift
quantization costs on the user's own weights. The two are loaded one after the other, never
together. Guide values: cosine >= 0.99 for int8, >= 0.95 for nf4.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import prompts
from .loading import ModelChoice, load_pretrained, resolve_device
from .samples import TEXTS, write_images

COSINE_MIN = 0.999
FP32_MAX_DIFF = 1e-5
QUANTIZED_COSINE_MIN = {"int8": 0.99, "nf4": 0.95}


@dataclass
class ItemCheck:
    kind: str  # text, image, rotated image
    name: str
    tokens: int  # the engine's count
    recipe_tokens: int
    cosine: float
    max_diff: float
    finite: bool


@dataclass
class PathTiming:
    name: str
    items_per_s: float
    peak_bytes: int


@dataclass
class CheckReport:
    model: str
    device: str
    dtype: str
    repairs: list[str]
    items: list[ItemCheck] = field(default_factory=list)
    timings: list[PathTiming] = field(default_factory=list)
    quantization: str | None = None  # the engine's; the recipe then runs at full precision

    @property
    def exact(self) -> bool:
        return self.dtype == "float32" and not self.quantization

    @property
    def cosine_min(self) -> float:
        return QUANTIZED_COSINE_MIN[self.quantization] if self.quantization else COSINE_MIN

    def item_ok(self, item: ItemCheck) -> bool:
        close = item.max_diff <= FP32_MAX_DIFF if self.exact else item.cosine >= self.cosine_min
        return item.finite and close and item.tokens == item.recipe_tokens

    @property
    def failures(self) -> list[ItemCheck]:
        return [item for item in self.items if not self.item_ok(item)]

    def lines(self) -> list[str]:
        """The report as the `check` command prints it."""
        from ..memory import gib

        precision = self.dtype + (f" + {self.quantization}" if self.quantization else "")
        out = [f"{self.model} on {self.device}, {precision}; pass: {self.rule}"]
        out += [f"  repaired: {repair}" for repair in self.repairs]
        out.append(
            f"{'kind':<14}{'item':<32}{'tokens':>7}{'recipe':>8}{'cosine':>11}"
            f"{'max|diff|':>11}  finite"
        )
        for item in self.items:
            mark = "" if self.item_ok(item) else "  <- FAIL"
            out.append(
                f"{item.kind:<14}{item.name:<32}{item.tokens:>7}{item.recipe_tokens:>8}"
                f"{item.cosine:>11.6f}{item.max_diff:>11.2e}  "
                f"{'yes' if item.finite else 'NO'}{mark}"
            )
        memory = "GPU peak" if self.device.startswith("cuda") else "peak RSS growth"
        out += [
            f"{t.name}: {t.items_per_s:.1f} items/s, {memory} {gib(t.peak_bytes)}"
            for t in self.timings
        ]
        return out

    @property
    def rule(self) -> str:
        if self.exact:
            return f"max |diff| <= {FP32_MAX_DIFF:g} (float32)"
        if self.quantization:
            return f"cosine >= {self.cosine_min} ({self.quantization} against full precision)"
        return f"cosine >= {COSINE_MIN} ({self.dtype})"


def run_check(choice: ModelChoice) -> CheckReport:
    """The check of `choice`: with a `quantize`, the quantized model against the same weights
    at full precision, else one model running both sides."""
    import gc

    from .encoder import E5VEncoder

    full, processor, revision = load_pretrained(
        choice.model, choice.revision, choice.device, choice.dtype, full=True
    )
    # Wrapping repairs a legacy checkpoint (processor and model) for the recipe too.
    encoder = E5VEncoder(
        full,
        processor,
        model_id=str(choice.model),
        revision=revision,
        batch_size=choice.batch_size,
        max_batch_tokens=choice.max_batch_tokens,
    )
    if not choice.quantize:
        return check_encoder(encoder, full, processor)
    with tempfile.TemporaryDirectory(prefix="e5v-check-") as folder:
        images = write_images(Path(folder))
        recipe = _recipe_side(full, processor, images, full.device)
        del full, encoder  # the full-precision model goes before the quantized one comes
        gc.collect()
        if resolve_device(choice.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        encoder = replace(choice, revision=revision).load()  # the weights the recipe ran
        return _compare(encoder, images, recipe)


def check_encoder(encoder, full, processor) -> CheckReport:
    """The check on objects already built: `encoder` wraps `full` (the whole
    LlavaNextForConditionalGeneration) and `processor`, which the recipe runs on."""
    with tempfile.TemporaryDirectory(prefix="e5v-check-") as folder:
        images = write_images(Path(folder))
        recipe = _recipe_side(full, processor, images, encoder.device)
        return _compare(encoder, images, recipe)


def _recipe_side(full, processor, images, device):
    """The recipe's vectors, (seconds, peak bytes) and token counts for TEXTS and `images`."""
    from ..images import load_image

    upright = [load_image(path) for _, path in images]
    _recipe(full, processor, TEXTS[:1], [], device)  # warm-up
    theirs, timing = _timed(device, lambda: _recipe(full, processor, TEXTS, upright, device))
    tokens = [_recipe_tokens(processor, prompts.text_prompt(t)) for t in TEXTS] + [
        _recipe_tokens(processor, prompts.IMAGE_PROMPT, image) for image in upright
    ]
    return theirs, timing, tokens


def _compare(encoder, images, recipe) -> CheckReport:
    theirs, theirs_time, recipe_tokens = recipe
    report = CheckReport(
        encoder.model_id,
        str(encoder.device),
        str(encoder.dtype).split(".")[-1],
        encoder.repairs,
        quantization=encoder.quantization,
    )
    encoder.embed_texts(TEXTS[:1])  # warm-up
    ours, ours_time = _timed(encoder.device, lambda: _engine(encoder, images))
    tokens = _engine_tokens(encoder, images)
    names = [("text", t if len(t) <= 30 else t[:27] + "...") for t in TEXTS] + [
        (kind, name) for (kind, name), _ in images
    ]
    for i, (kind, name) in enumerate(names):
        a, b = ours[i], theirs[i]
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        cosine = float(a @ b) if finite else float("nan")
        max_diff = float(np.abs(a - b).max()) if finite else float("nan")
        item = ItemCheck(kind, name, tokens[i], recipe_tokens[i], cosine, max_diff, finite)
        report.items.append(item)
    n = len(names)
    report.timings = [
        PathTiming("engine (batched)", n / ours_time[0], ours_time[1]),
        PathTiming("recipe (one per call)", n / theirs_time[0], theirs_time[1]),
    ]
    return report


def _engine(encoder, images) -> np.ndarray:
    return np.concatenate(
        [encoder.embed_texts(TEXTS), encoder.embed_images([path for _, path in images])]
    )


def _recipe(model, processor, texts, images, device) -> np.ndarray:
    from .recipe import recipe_embed_images, recipe_embed_texts

    rows = [recipe_embed_texts(model, processor, [t], device) for t in texts]
    rows += [recipe_embed_images(model, processor, [image], device) for image in images]
    out = np.concatenate([row.float().cpu().numpy() for row in rows])
    # The recipe normalises in the model's dtype; in float the cosine is a cosine.
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _engine_tokens(encoder, images) -> list[int]:
    from ..images import image_size

    texts = [len(encoder.tokenizer(prompts.text_prompt(t)).input_ids) for t in TEXTS]
    sizes = [image_size(path) for _, path in images]  # from the header, EXIF applied
    counts = encoder.count_image_tokens(sizes)
    return texts + [encoder.preprocessor.image_prompt_tokens + n for n in counts]


def _recipe_tokens(processor, prompt, image=None) -> int:
    images = [image] if image is not None else None
    return int(processor(text=[prompt], images=images, return_tensors="pt").input_ids.shape[1])


def _timed(device, work):
    import torch

    from ..memory import PeakMemory

    with PeakMemory(str(device)) as memory:
        start = time.perf_counter()
        result = work()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return result, (seconds, memory.bytes)
