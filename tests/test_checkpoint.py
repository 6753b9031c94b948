"""The tiny checkpoint builder and the repairs of legacy (2024-era) checkpoints."""

import hashlib
import json

import numpy as np
import pytest
import torch

from e5v_search import E5VEncoder, ModelLoadError
from e5v_search.testing import build_tiny_checkpoint


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_builder_is_deterministic(tmp_path, legacy_dir):
    again = build_tiny_checkpoint(tmp_path / "again", legacy=True)
    assert _digest(again) == _digest(legacy_dir)


def test_legacy_checkpoint_has_the_real_traps(legacy_dir):
    config = json.loads((legacy_dir / "config.json").read_text())
    assert config["image_token_index"] == config["text_config"]["vocab_size"]  # one past
    assert config["torch_dtype"] == "float16"
    assert not (legacy_dir / "processor_config.json").exists()
    image_config = json.loads((legacy_dir / "preprocessor_config.json").read_text())
    assert not {
        "patch_size",
        "vision_feature_select_strategy",
        "num_additional_image_tokens",
    } & set(image_config)
    assert json.loads((legacy_dir / "tokenizer_config.json").read_text())["padding_side"] == "right"
    tokens = json.loads((legacy_dir / "tokenizer.json").read_text())["added_tokens"]
    names = {t["content"]: t["id"] for t in tokens}
    assert {"<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<image>", "<pad>"} <= set(
        names
    )


def test_the_recipe_fails_on_the_legacy_checkpoint(legacy_dir, texts):
    """Shows the trap is real: transformers 5.x looks up the out-of-table <image> id."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    from e5v_search.model.recipe import recipe_embed_images
    from e5v_search.testing import make_sample_images

    model = LlavaNextForConditionalGeneration.from_pretrained(str(legacy_dir))
    assert model.dtype == torch.float16  # dtype="auto": fp16 even on a CPU
    processor = LlavaNextProcessor.from_pretrained(str(legacy_dir), backend="pil")
    from PIL import Image

    images = [Image.open(p) for p in make_sample_images(legacy_dir.parent / "legacy-samples")]
    with pytest.raises((IndexError, TypeError, ValueError, RuntimeError)):
        recipe_embed_images(model.float(), processor, images[:1])


def test_legacy_checkpoint_is_repaired_and_embeds_like_the_clean_one(
    legacy_dir, encoder, texts, shaped_images
):
    legacy = E5VEncoder.from_pretrained(str(legacy_dir), device="cpu")
    assert legacy.dtype == torch.float32  # fp32 on a CPU although stored in fp16
    repaired = " | ".join(legacy.repairs)
    for trap in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
        assert trap in repaired
    assert "padding_side" in repaired and "embedding table" in repaired
    assert np.abs(legacy.embed_texts(texts) - encoder.embed_texts(texts)).max() <= 1e-5
    assert (
        np.abs(legacy.embed_images(shaped_images) - encoder.embed_images(shaped_images)).max()
        <= 1e-5
    )


def test_a_clean_checkpoint_is_left_untouched(encoder):
    assert encoder.repairs == []
    assert not encoder.model.get_input_embeddings()._forward_pre_hooks


@pytest.mark.parametrize(
    ("width", "height", "tokens"), [(640, 480, 2340), (480, 640, 2352), (336, 336, 1176)]
)
def test_image_token_counts_at_real_geometry(real_geometry_dir, width, height, tokens):
    encoder = E5VEncoder.from_pretrained(str(real_geometry_dir), device="cpu")
    assert encoder.count_image_tokens([(height, width)]) == [tokens]


def test_a_real_geometry_image_runs_through_the_model(real_geometry_dir, tmp_path):
    from PIL import Image

    encoder = E5VEncoder.from_pretrained(str(real_geometry_dir), device="cpu")
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (10, 120, 40)).save(path)
    inputs = encoder.processor(
        text=["<image>"], images=[Image.open(path)], return_tensors="pt", padding=True
    )
    assert int((inputs["input_ids"] == encoder.model.config.image_token_id).sum()) == 2340
    assert encoder.embed_images([path]).shape == (1, 64)


def test_a_folder_without_a_model_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ModelLoadError, match="local directory"):
        E5VEncoder.from_pretrained(str(tmp_path), device="cpu")


def test_an_unreachable_hub_id_is_refused_with_a_hint():
    with pytest.raises(ModelLoadError, match="royokong/e5-v"):
        E5VEncoder.from_pretrained("nobody/no-such-model", device="cpu")
