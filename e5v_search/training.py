"""A tiny E5-V-shaped model that really finds things: trained here, offline, on synthetic shapes.

The random-weight tiny checkpoint tests plumbing: an item finds itself, nothing else means
anything. This one starts from the same architecture (LLaVA-NeXT: a 2-layer Llama of hidden 64,
a 2-layer CLIP tower, anyres at 56-px crops) and is trained with a symmetric image-text
contrastive loss (InfoNCE) on drawn shapes (colour x shape x background, jittered in place and
size) and their captions, through the encoder's own code path: the same prompts, the same
pixels (`prepare_image`), the same right padding and last-token pooling (`E5VEncoder.pool`). So
after training a caption finds its picture and a picture its caption, and a bug that scrambles
prompts, pixels, token counts or ids shows up as worse retrieval.

Some colour-shape-background combinations are held out of training (HELD_OUT) to measure how
well the model generalises to combinations it never saw. The checkpoint is saved with the real
checkpoint's traps (legacy=True), so the repairs stay exercised, into the cache on first use
(`cached_trained_checkpoint`), never into the repository.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .testing import BACKGROUNDS, COLORS, SHAPES, draw_shape

TRAINER_VERSION = "1"
STEPS = 1000  # 693-2,564 s measured on 2 CPU cores shared with other work
BATCH = 24
TEMPERATURE = 0.01
LEARNING_RATE = 3e-3
# One held-out combination per colour: never seen in training, with every part of it seen.
HELD_OUT = {
    ("red", "triangle", "pale"),
    ("green", "square", "grey"),
    ("blue", "circle", "pale"),
    ("yellow", "stripe", "grey"),
    ("black", "square", "pale"),
    ("white", "triangle", "grey"),
}
TEMPLATES = (
    "A {color} {shape} on a {background} background.",
    "a {color} {shape}, {background} background",
    "{background} background with a {color} {shape}",
    "A picture of a {color} {shape} on {background}.",
)


def caption(color: str, shape: str, background: str, template: int = 0) -> str:
    return TEMPLATES[template].format(color=color, shape=shape, background=background)


def combinations(held_out: bool | None = None) -> list[tuple[str, str, str]]:
    """Every (colour, shape, background); only the held-out ones (True) or the others (False)."""
    every = [(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS]
    if held_out is None:
        return every
    return [combo for combo in every if (combo in HELD_OUT) == held_out]


def train(
    path: str | Path,
    steps: int = STEPS,
    seed: int = 0,
    log=None,
    lr=LEARNING_RATE,
    batch=BATCH,
    init=0.02,
) -> dict:
    """Build the tiny checkpoint, train it, save it (with the legacy traps) to `path`; returns
    what it measured: seconds, the final loss, and top-1 accuracy on seen and held-out combos."""
    import torch
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    from .model.encoder import E5VEncoder
    from .testing import _cut_vocabulary, _make_legacy_configs, _quiet_progress
    from .testing import build_tiny_checkpoint as build

    started = time.perf_counter()
    path = Path(path)
    build(path, seed=seed, initializer_range=init)  # clean, fp32: the starting point
    model = LlavaNextForConditionalGeneration.from_pretrained(str(path))
    processor = LlavaNextProcessor.from_pretrained(str(path), backend="pil")
    encoder = E5VEncoder(model, processor, model_id="tiny-trained")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    seen = combinations(held_out=False)
    model.train()
    loss_value = float("nan")
    looping = time.perf_counter()  # the pace of the steps, for the ETA
    for step in range(steps):
        combos = rng.sample(seen, batch)
        texts = [caption(*combo, rng.randrange(len(TEMPLATES))) for combo in combos]
        images = [draw_shape(*combo, rng=rng) for combo in combos]
        text_vectors = encoder.pool(encoder.text_inputs(texts))
        image_vectors = encoder.pool(encoder.image_inputs(images))
        logits = text_vectors @ image_vectors.T / TEMPERATURE
        target = torch.arange(batch)
        loss = (
            torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if log and (step % 50 == 0 or step == steps - 1):
            pace = progress(looping, step + 1, steps)
            log(f"step {step + 1}/{steps}: loss {loss_value:.3f}, {pace}")
    model.eval()
    report = {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
        "final_loss": round(loss_value, 4),
        **_top1(encoder),
    }
    legacy = _cut_vocabulary(model, rows=model.config.image_token_id).half()
    with _quiet_progress():
        legacy.save_pretrained(path)
    _make_legacy_configs(path)
    (path / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _top1(encoder) -> dict:
    """Top-1 accuracy over all 48 undisturbed images and their first-template captions, text ->
    image and image -> text, for the combinations seen in training and the held-out ones."""
    import numpy as np

    every = combinations()
    texts = encoder.embed_texts([caption(*c) for c in every])
    images = encoder.embed_images([draw_shape(*c) for c in every], workers=0)
    right = np.arange(len(every))
    t2i = np.argmax(texts @ images.T, axis=1) == right
    i2t = np.argmax(images @ texts.T, axis=1) == right
    held = np.array([c in HELD_OUT for c in every])
    return {
        f"{direction}_top1_{part}": round(float(hits[mask].mean()), 3)
        for direction, hits in (("text_to_image", t2i), ("image_to_text", i2t))
        for part, mask in (("seen", ~held), ("held_out", held))
    }


def progress(started: float, done: int, total: int) -> str:
    """'elapsed 1m05s, ETA 2m10s': time since `started` (perf_counter) and the rest at this pace."""
    elapsed = time.perf_counter() - started
    left = elapsed / done * (total - done) if done else float("nan")
    eta = _minutes(left) if done < total else "done"
    return f"elapsed {_minutes(elapsed)}, ETA {eta}"


def _minutes(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing done yet to measure a pace by
        return "unknown"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def cached_trained_checkpoint(cache_dir: str | Path | None = None, log=None) -> Path:
    """The trained checkpoint in the cache, trained on first use (about a minute on 2 cores)."""
    import transformers

    from .config import cache_home

    root = Path(cache_dir) if cache_dir else cache_home() / "tiny-models"
    target = root / f"trained-v{TRAINER_VERSION}-tf{transformers.__version__}"
    if not (target / "training.json").exists():
        tmp = root / f"{target.name}.tmp{random.randrange(1 << 30)}"
        train(tmp, log=log)
        try:
            tmp.replace(target)  # whole-directory rename: a half-trained model is never used
        except OSError:  # another process got there first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target
