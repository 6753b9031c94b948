"""Repairs for E5-V checkpoints written for older transformers (royokong/e5-v is one).

Each repair is applied only when its trap is present, and returns a line saying what it changed,
so a clean checkpoint is left untouched and a repaired one can say why it needed help.
"""

from __future__ import annotations


def repair_processor(processor, config) -> list[str]:
    """Make `processor` agree with the model: needs only the model's config, not its weights
    (the Preprocessor applies it; the encoder then applies `repair_model`)."""
    repairs = []
    if processor.patch_size is None:
        processor.patch_size = config.vision_config.patch_size
        repairs.append(f"processor patch_size set to {processor.patch_size}")
    if processor.vision_feature_select_strategy is None:
        strategy = config.vision_feature_select_strategy
        processor.vision_feature_select_strategy = strategy
        repairs.append(f"processor vision_feature_select_strategy set to {strategy}")
    # CLIP prepends a CLS token to every crop; without counting it the processor inserts one
    # placeholder fewer than the vision tower yields features (2,339 for 2,340).
    extra = 1 if config.vision_config.model_type == "clip_vision_model" else 0
    if processor.num_additional_image_tokens != extra:
        processor.num_additional_image_tokens = extra
        repairs.append(f"processor num_additional_image_tokens set to {extra}")

    tokenizer = processor.tokenizer
    # The recipe pools position -1: with right padding, shorter rows would pool a pad token
    # (the encoder pads right but pools each row's own last token; see encoder.py).
    if tokenizer.padding_side != "left":
        repairs.append(f"tokenizer padding_side {tokenizer.padding_side!r} -> 'left'")
        tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        repairs.append("tokenizer had no pad token: using its eos token")
    return repairs


def repair_model(model, tokenizer) -> list[str]:
    embeddings = model.get_input_embeddings()
    rows = embeddings.num_embeddings
    if len(tokenizer) <= rows:
        return []
    # `<image>` (and `<pad>`) ids lie past the table. Image positions are overwritten by image
    # features and pad positions are masked, so clamping the lookup changes no output and,
    # unlike resizing the table, copies nothing.
    embeddings.register_forward_pre_hook(_clamp_ids)
    return [
        f"token ids up to {len(tokenizer) - 1} exceed the {rows}-row embedding table: "
        "lookups clamped"
    ]


def _clamp_ids(module, args):
    return (args[0].clamp(max=module.num_embeddings - 1),) + tuple(args[1:])


FINGERPRINT_SAMPLES = 16  # slices read from each weight file
FINGERPRINT_SLICE = 64 * 1024


def fingerprint(model: str, commit: str | None = None) -> str:
    """What identifies a checkpoint's weights, not its name. A hub id: its resolved commit. A
    directory: a SHA-256 of config.json and, per weight file, its size and 16 slices of 64 KiB
    spread over it (headers and values: weights fine-tuned into the same shapes differ there),
    about 1 MiB read per file whatever its size. The same weights copied to another path get
    the same fingerprint; other weights under the same name do not."""
    import hashlib
    from pathlib import Path

    path = Path(str(model)).expanduser()
    if not path.is_dir():
        return f"hub:{commit}" if commit else f"name:{model}"
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    for file in weights:
        size = file.stat().st_size
        digest.update(str(size).encode())
        with open(file, "rb") as f:
            for k in range(FINGERPRINT_SAMPLES):
                f.seek(size * k // FINGERPRINT_SAMPLES)
                digest.update(f.read(FINGERPRINT_SLICE))
    return "sha256:" + digest.hexdigest()[:32]
